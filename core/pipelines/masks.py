"""Mask operations for inpainting: binarise, grow/shrink, feather, rings, crop regions, hole fill,
and the MaskPlan that says how a mask is used (inpainting, soft inpainting, outpainting).

Masks are float arrays (H, W) in [0, 1] with 1 = repaint (the product's "white = repaint").
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]   # (1, 1, H, W)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a [0, 1] mask by `radius` pixels (square structuring element)."""
    if radius <= 0:
        return mask.copy()
    return F.max_pool2d(_t(mask), 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy()


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Shrink a [0, 1] mask by `radius` pixels."""
    return 1.0 - dilate(1.0 - mask, radius)


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) or (H, W, C) Gaussian blur, replicate-padded, separable, radius 3 sigma."""
    if sigma <= 0:
        return a.copy()
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[:, None]          # (C, 1, H, W)
    t = F.pad(t, (radius, radius, radius, radius), mode="replicate")
    t = F.conv2d(t, k.view(1, 1, 1, -1))
    t = F.conv2d(t, k.view(1, 1, -1, 1))
    return t[0, 0].numpy() if a.ndim == 2 else t[:, 0].permute(1, 2, 0).numpy()


def feather(mask: np.ndarray, blur: int) -> np.ndarray:
    """The paste-back weight: 1 deep inside the mask, falling smoothly to 0 AT its border, and exactly
    0 outside (so pixels outside the mask are never touched). Shrink by `blur` px, then blur with
    sigma = blur / 2 (support ~ blur px), then clip to the mask: min(weight, mask), so a fractional
    (soft-inpainting) mask keeps its grey values where it is smooth, and a binary one is cut at 0."""
    if blur <= 0:
        return mask.astype(np.float32)
    soft = gaussian_blur(erode(mask, blur), blur / 2.0)
    return np.minimum(np.clip(soft, 0.0, 1.0), mask).astype(np.float32)


def outer_ring(hard: np.ndarray, width: int) -> np.ndarray:
    """Boolean (H, W): pixels within `width` px OUTSIDE the mask border (the original is known there)."""
    return (dilate(hard, width) > 0.5) & (hard < 0.5)


def bounding_box(hard: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end-exclusive, of the pixels with mask > 0.5; None for an empty mask."""
    ys, xs = np.nonzero(hard > 0.5)
    if len(ys) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def crop_region(hard: np.ndarray, padding: int, aspect: float) -> tuple[int, int, int, int]:
    """The "only masked" crop: the mask's box grown by `padding` px, then widened (or heightened) to
    `aspect` = width / height of the processing size, shifted to stay inside the image."""
    H, W = hard.shape
    x0, y0, x1, y1 = bounding_box(hard)
    x0, y0, x1, y1 = max(0, x0 - padding), max(0, y0 - padding), min(W, x1 + padding), min(H, y1 + padding)
    w, h = x1 - x0, y1 - y0
    if w / h < aspect:
        w = min(W, int(round(h * aspect)))
    else:
        h = min(H, int(round(w / aspect)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    nx0 = int(round(min(max(cx - w / 2, 0), W - w)))
    ny0 = int(round(min(max(cy - h / 2, 0), H - h)))
    return nx0, ny0, nx0 + w, ny0 + h


def fill_holes(image: np.ndarray, hard: np.ndarray) -> np.ndarray:
    """"fill" masked content: replace masked pixels by the colours around them, smoothed.

    Normalised convolution at growing scales: blur(image * known) / blur(known), first from fine to
    coarse so near pixels dominate; any pixel still unreached takes the mean known colour.
    image (H, W, 3) in [0, 1]; returns the same shape.
    """
    known = (hard < 0.5).astype(np.float32)
    out = image.astype(np.float32).copy()
    if known.sum() == 0:
        return np.full_like(out, 0.5)
    filled = np.zeros_like(out)
    done = np.zeros(hard.shape, dtype=bool)
    for sigma in (2, 4, 8, 16, 32, 64, 128, 256):
        num = gaussian_blur(out * known[..., None], sigma)
        den = gaussian_blur(known, sigma)
        ok = (den > 1e-3) & ~done & (known < 0.5)
        filled[ok] = num[ok] / den[ok, None]
        done |= ok
        if done[known < 0.5].all():
            break
    rest = (known < 0.5) & ~done
    filled[rest] = (out * known[..., None]).sum((0, 1)) / known.sum()
    return np.where(known[..., None] > 0.5, out, filled)


@dataclass(frozen=True)
class MaskPlan:
    """A mask in its three uses, at the picture's size (H, W), 1 = repaint.

    hard: {0, 1}, where new content may appear: the "only masked" crop, the colour-match ring just
        outside it, the mask a dedicated inpainting model sees, and (without soft inpainting) the
        latent blend (a latent cell is repainted when any of its pixels is).
    paste: [0, 1], the paste-back weight, 0 wherever hard is 0 (those pixels stay bit-exact).
    blend: [0, 1] or None: soft inpainting's per-pixel latent-blend weight (a cell takes the largest
        value of its pixels); None blends with `hard`.
    record: parameters the mask's maker writes on the images (outpainting's sides, soft inpainting).
    """
    hard: np.ndarray
    paste: np.ndarray
    blend: np.ndarray | None = None
    record: dict = field(default_factory=dict)


def mask_plan(mask: np.ndarray, blur: int, soft: bool = False) -> MaskPlan:
    """The plan of a painted mask (H, W) in [0, 1].

    Plain inpainting binarises it at 0.5 and feathers the paste-back `blur` px inside it. Soft
    inpainting (A1111's, PR 14208: grey = a partial change) keeps it fractional: the feathered mask
    is both the paste-back weight and the latent blend's weight at every step, so `blur` becomes a
    real transition and a grey value v changes the picture part way: about v^2 of the full change, as
    both the latent blend and the paste-back weigh it by v (measured on a tiny model: v = 0.3, 0.6 ->
    9 %, 41 %). A binary mask with blur 0 gives the same plan either way.
    """
    if not soft:
        hard = (mask >= 0.5).astype(np.float32)
        return MaskPlan(hard, feather(hard, blur))
    weight = feather(mask, blur)
    return MaskPlan((weight > 0).astype(np.float32), weight, weight, {"soft_inpainting": True})
