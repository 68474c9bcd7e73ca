"""Images in and out: any PIL image / path / array -> RGB; RGB <-> tensors in [-1, 1]; masks.

Inputs people actually have: photos rotated by their EXIF orientation tag, grayscale, palette,
RGBA with transparency, 16-bit PNGs (PIL modes "I;16" / "I"), float arrays. Everything becomes 8-bit
RGB here, once, so the pipelines see one kind of image.
Output follows the reference exactly (FACTS.md section 7): x = clamp((x + 1) / 2, 0, 1) * 255,
then TRUNCATION to uint8 (numpy's astype), not rounding.
"""

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

# Background that transparent pixels are composited onto (the app's canvas colour).
ALPHA_BACKGROUND = (255, 255, 255)


def _array_to_pil(a: np.ndarray) -> Image.Image:
    """(H, W) / (H, W, 1|3|4) uint8, uint16 or float array -> 8-bit PIL image."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}.")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = (a.astype(np.float64) / 257.0).round().astype(np.uint8)             # 65535 -> 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("the image array contains NaN or infinite values.")
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0                       # [0, 1] or [0, 255]
        a = (a * scale).clip(0, 255).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        a = a.astype(np.int64)
        a = (a * 255 if a.max(initial=0) <= 1 else a).clip(0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image array dtype {a.dtype}.")
    return Image.fromarray(a)


def _open(image) -> Image.Image:
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                return ImageOps.exif_transpose(im)                 # a rotated copy, or a plain copy
        except OSError as e:                                    # PIL.UnidentifiedImageError included
            raise ValueError(f"cannot read {path} as an image: {e}") from None
    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4):
            image = image.transpose(1, 2, 0)                    # (C, H, W) -> (H, W, C)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    raise ValueError(f"expected a PIL image, a path or an array; got {type(image).__name__}.")


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """Single-channel 16/32-bit and float modes -> 8-bit "L" (16-bit: divide by 257)."""
    a = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        top = 1.0 if a.max(initial=0.0) <= 1.0 else 255.0
    else:
        top = 65535.0 if a.max(initial=0.0) > 255 or im.mode.startswith("I;16") else 255.0
    return Image.fromarray((a / top * 255.0).clip(0, 255).round().astype(np.uint8), mode="L")


def load_image(image) -> Image.Image:
    """Any supported image (PIL, path, numpy/torch array) -> 8-bit RGB PIL, EXIF orientation applied.

    Transparent pixels are composited onto ALPHA_BACKGROUND; grayscale is repeated into RGB;
    16-bit images are scaled to 8 bits.
    """
    im = _open(image)
    if im.width == 0 or im.height == 0:
        raise ValueError("the image is empty (0 pixels).")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = _high_bit_depth_to_l(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, ALPHA_BACKGROUND)
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB") if im.mode != "RGB" else im


def load_mask(mask, size: tuple[int, int]) -> np.ndarray:
    """A mask (white = repaint) -> float32 (H, W) in [0, 1] at `size` = (width, height).

    An RGBA / LA mask whose alpha varies is read from its alpha (a layer painted in a browser);
    otherwise from its luminance. A mask of another size is resized to the image with a warning.
    """
    im = _open(mask)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = _high_bit_depth_to_l(im)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        alpha = im.getchannel("A")
        lo, hi = alpha.getextrema()
        im = alpha if lo != hi else im.convert("L")
    else:
        im = im.convert("L")
    if im.size != tuple(size):
        warnings.warn(f"the mask is {im.width}x{im.height} but the image is {size[0]}x{size[1]}; "
                      "resizing the mask to the image", stacklevel=3)
        im = im.resize(tuple(size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0                          # (H, W)


def image_to_tensor(image: Image.Image, device=None, dtype=torch.float32) -> torch.Tensor:
    """RGB PIL -> (1, 3, H, W) in [-1, 1]."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0      # (H, W, 3)
    return torch.from_numpy(a).permute(2, 0, 1)[None].to(device=device, dtype=dtype)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Decoder output in about [-1, 1] -> float32 [0, 1] (the reference's clamp((x + 1) / 2))."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def unit_to_uint8(x01: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 by x * 255 TRUNCATED, as the reference's astype(np.uint8)."""
    return (np.asarray(x01, dtype=np.float32) * 255.0).astype(np.uint8)


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B RGB PIL images (clamp, * 255, truncation)."""
    a = to_unit(x).permute(0, 2, 3, 1).cpu().numpy()                         # (B, H, W, 3)
    return [Image.fromarray(unit_to_uint8(img), mode="RGB") for img in a]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the right/bottom up to multiples of `multiple` by reflection (replication
    when the image is too small to reflect); returns the padded tensor and the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


RESIZE_MODES = ("just_resize", "crop_and_resize", "resize_and_fill")      # A1111's resize_mode 0, 1, 2


def resize_image(image: Image.Image, width: int, height: int, mode="just_resize") -> Image.Image:
    """`image` at width x height, as A1111's img2img resize modes: "just_resize" (0) stretches;
    "crop_and_resize" (1) scales to cover and crops the centre; "resize_and_fill" (2) scales to fit
    and fills the two bands left over with the picture's edge rows or columns stretched."""
    mode = RESIZE_MODES[mode] if isinstance(mode, int) and 0 <= mode < len(RESIZE_MODES) else mode
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)} (or 0, 1, 2); got {mode!r}.")
    lanczos = Image.Resampling.LANCZOS
    if mode == "just_resize":
        return image.resize((width, height), lanczos)
    cover = mode == "crop_and_resize"
    scale = (max if cover else min)(width / image.width, height / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = image.resize((w, h), lanczos)
    out = Image.new(image.mode, (width, height))
    left, top = (width - w) // 2, (height - h) // 2
    out.paste(resized, (left, top))
    if not cover and top > 0:                                   # bands above and below: edge rows
        out.paste(resized.resize((width, top), box=(0, 0, w, 0)), (0, 0))
        out.paste(resized.resize((width, height - top - h), box=(0, h, w, h)), (0, top + h))
    elif not cover and left > 0:                                # bands left and right: edge columns
        out.paste(resized.resize((left, height), box=(0, 0, 0, h)), (0, 0))
        out.paste(resized.resize((width - left - w, height), box=(w, 0, w, h)), (left + w, 0))
    return out
