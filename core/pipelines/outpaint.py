"""Outpainting: grow the canvas on any side and paint the new area so it continues the picture.

    pipelines.outpaint(m, image, right=64, prompt="...")  ->  images 64 px wider

It is inpainting (inpaint.py) on a larger canvas, in four steps:
1. the sides: whole numbers of the model's grid (f x UNet down-sampling, so the new area is whole
   latent cells and the canvas stays on the grid); the result within `max_side`;
2. the canvas: the picture with the new area filled, by default "edge" (each border pixel repeated
   outwards, then blurred across the stripes so the sampler starts from the border's colours), or
   "fill" / "latent noise" / "latent nothing" as inpainting's masked content;
3. the mask (a masks.MaskPlan): 1 over the new area, and an overlap band `overlap` px deep into the
   original whose weight falls linearly to 0. The band is repainted with the new area and pasted back
   with that weight, so the seam is a blend, not a cut; outside the band the original is bit-exact.
   With soft inpainting the band's weight also drives the latent blend at every step;
4. inpaint it ("whole" canvas, or "only masked" around the new area for a large picture) and keep
   the colour match and border ΔE report on the ring just inside the band.
Repeated calls grow a picture step by step (each result is the next call's image).
"""

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.capabilities import capabilities
from core.pipelines.defaults import MAX_UPSCALE_SIDE
from core.pipelines.images import load_image
from core.pipelines.inpaint import MASKED_CONTENT, _choice, inpaint
from core.pipelines.masks import MaskPlan, gaussian_blur
from core.samplers.settings import whole_number

OUTPAINT_FILLS = {"edge": "edge", **{k: v for k, v in MASKED_CONTENT.items() if k != "original"}}
SIDES = ("left", "right", "top", "bottom")
OVERLAP_CELLS = 4                     # default overlap band: this many latent cells into the original


def outpaint(m, image, prompt="", negative_prompt="", *, left=0, right=0, top=0, bottom=0, fill="edge",
             overlap=None, max_side=None, soft_inpainting=False, **options) -> list:
    """The picture grown by left/right/top/bottom pixels (multiples of capabilities(m).grid), the new
    area painted to continue it; one PIL image per seed, each (W + left + right) x (H + top + bottom).

    fill: what the new area starts from: "edge" (border colours extended), "fill", "latent_noise",
        "latent_nothing" (as inpaint's masked_content).
    overlap: depth in px of the blended band inside the original (default 4 latent cells; at most
        half the picture's shorter side).
    max_side: the largest side of the result (the app's --max-size; default 16384).
    soft_inpainting: the band's weight also drives the latent blend (inpaint's soft inpainting).
    options: inpaint's other arguments (steps, seed, n, strength, inpaint_area, padding, ...).
    """
    # 1. Resolve: the sides, the fill, the band, and the result's size.
    caps = capabilities(m).require("inpaint")
    fill = _choice("fill", "edge" if fill is None else fill, OUTPAINT_FILLS)
    if "mask_blur" in options or "masked_content" in options:
        raise ValueError("outpainting blends its overlap band instead of a mask blur, and starts the new "
                         "area from `fill`; leave mask_blur and masked_content out.")
    picture = load_image(image)
    sides = check_sides(caps, picture.size, left=left, right=right, top=top, bottom=bottom, max_side=max_side)
    overlap = OVERLAP_CELLS * caps.factor if overlap is None else whole_number("overlap", overlap)
    overlap = min(overlap, min(picture.size) // 2)              # a band at most half the picture deep

    # 2. The canvas with the new area filled; 3. the mask with its band.
    canvas = _edge_canvas(picture, sides, blur=caps.grid / 2)
    plan = outpaint_plan(picture.size, sides, overlap, bool(soft_inpainting))
    plan = replace(plan, record={**plan.record, "task": "outpaint", "outpaint": _sides_text(sides),
                                 "outpaint_fill": OUTPAINT_FILLS[fill], "outpaint_overlap": overlap,
                                 "mask_blur": None, "masked_content": None})

    # 4. Inpaint the canvas.
    return inpaint(m, canvas, plan, prompt, negative_prompt, masked_content="original" if fill == "edge" else fill,
                   **options)


def check_sides(caps, size: tuple[int, int], *, left=0, right=0, top=0, bottom=0, max_side=None) -> dict:
    """{"left", "right", "top", "bottom"} px for growing a picture of `size` = (w, h) on a model of
    capabilities `caps`: whole multiples of caps.grid, not all 0, the result within `max_side` (the
    app's --max-size; default 16384). A ValueError says what to give instead. (The app checks
    with this before loading anything.)"""
    grid = caps.grid
    sides = dict(left=left, right=right, top=top, bottom=bottom)
    for name, value in sides.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be a whole number of pixels; got {value!r}.")
        if value < 0:
            raise ValueError(f"{name} must be 0 or more pixels; got {value} (outpainting only grows the canvas).")
        if value % grid:
            lower, upper = value // grid * grid, (value // grid + 1) * grid
            nearest = f"{lower} or {upper}" if lower > 0 else f"{upper}"
            raise ValueError(f"{name} {value} is not a multiple of {grid} px (this model's grid: whole latent "
                             f"cells through every UNet level); nearest: {nearest}.")
    if not any(sides.values()):
        raise ValueError("nothing to outpaint: give left, right, top or bottom a number of pixels.")
    sides = {name: int(sides[name]) for name in SIDES}
    width, height = size[0] + sides["left"] + sides["right"], size[1] + sides["top"] + sides["bottom"]
    limit = MAX_UPSCALE_SIDE if max_side is None else whole_number("max_side", max_side, 1)
    if max(width, height) > limit:
        raise ValueError(f"outpainting {size[0]}x{size[1]} by {_sides_text(sides)} px gives {width}x{height} px; "
                         f"at most {limit} px per side (--max-size). Grow it by less.")
    return sides


def _sides_text(sides: dict) -> str:
    """"right 64" / "left 32 top 64": the sides grown, for messages and the PNG parameters."""
    return " ".join(f"{name} {value}" for name, value in sides.items() if value)


def _edge_canvas(picture: Image.Image, sides: dict, blur: float) -> Image.Image:
    """The larger canvas: the picture, and in the new area its border pixels repeated outwards
    (replicate padding), blurred with sigma `blur` so the stripes become the border's colours."""
    a = torch.from_numpy(np.asarray(picture, dtype=np.float32))        # (H, W, 3)
    padded = F.pad(a.permute(2, 0, 1)[None], (sides["left"], sides["right"], sides["top"], sides["bottom"]),
                   mode="replicate")[0].permute(1, 2, 0).numpy()       # (H', W', 3)
    new = np.ones(padded.shape[:2], dtype=bool)
    new[sides["top"]:sides["top"] + picture.height, sides["left"]:sides["left"] + picture.width] = False
    out = np.where(new[..., None], gaussian_blur(padded, blur), padded)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


def outpaint_plan(size: tuple[int, int], sides: dict, overlap: int, soft: bool = False) -> MaskPlan:
    """The MaskPlan of a picture of `size` = (w, h) grown by `sides`: weight 1 over the new area, and
    in the original 1 - d / (overlap + 1) at distance d = 1 .. overlap px from a grown side, else 0."""
    w, h = size
    left, right, top, bottom = (sides[name] for name in SIDES)
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)

    def ramp(distance):                        # distance (px, from 1 at the seam) -> weight in the band
        return np.clip(1 - distance / (overlap + 1), 0, 1)

    inner = np.zeros((h, w), np.float32)
    for grown, distance in ((left, xs + 1), (right, w - xs)):
        if grown:
            inner = np.maximum(inner, ramp(distance)[None, :])
    for grown, distance in ((top, ys + 1), (bottom, h - ys)):
        if grown:
            inner = np.maximum(inner, ramp(distance)[:, None])
    weight = np.ones((h + top + bottom, w + left + right), np.float32)
    weight[top:top + h, left:left + w] = inner
    hard = (weight > 0).astype(np.float32)
    return MaskPlan(hard, weight, weight if soft else None, {"soft_inpainting": True} if soft else {})
