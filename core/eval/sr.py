"""Super-resolution: does the model beat bicubic upscaling?

PSNR and SSIM (core.eval.metrics) of the model's 4x result against the original, next to bicubic
upscaling, on the four evaluation photos kept out of training (skimage.data chelsea, coffee,
rocket, motorcycle_left) and on shapes-world scenes at 256 px. The low-resolution input is the
original's area (box) down-sample, rounded to uint8 like a real image file; bicubic is PIL's
(a = -0.5, the MATLAB `imresize` kernel the SR literature compares with). The scoring takes a plain
callable (LR -> SR), so a test can pass an oracle through exactly the same path.
"""

import time
from typing import Callable

import numpy as np
from PIL import Image

from core import pipelines
from core.capabilities import capabilities
from core.eval.metrics import psnr, ssim
from core.eval.results import mean, model_info
from core.eval.shapes import SCENE_STREAM
from core.pipelines.defaults import first_stage_factor, unet_factor
from core.samplers import SamplingSettings
from core.world import ShapesWorld

EVAL_PHOTOS = ("chelsea", "coffee", "rocket", "motorcycle_left")


def evaluation_photos() -> dict[str, np.ndarray]:
    """The four photos kept out of training, uint8 (H, W, 3), from scikit-image's bundled data."""
    try:
        import skimage.data
    except ImportError:
        raise ImportError("the evaluation reads its photos from scikit-image, which requirements.txt "
                          "installs: pip install -r requirements.txt") from None
    photos = {name: getattr(skimage.data, name)() for name in EVAL_PHOTOS if name != "motorcycle_left"}
    photos["motorcycle_left"] = skimage.data.stereo_motorcycle()[0]   # the left view
    return {name: photos[name] for name in EVAL_PHOTOS}


def center_crop(image: np.ndarray, multiple: int, max_side: int | None = None) -> np.ndarray:
    """The centred crop whose sides are the largest multiples of `multiple` (at most max_side)."""
    h, w = image.shape[:2]
    ch, cw = (min(s, max_side or s) // multiple * multiple for s in (h, w))
    if ch == 0 or cw == 0:
        raise ValueError(f"image {h}x{w} is smaller than the model's grid of {multiple} pixels")
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top:top + ch, left:left + cw]


def area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter down-sample by an integer factor (the mean of each factor x factor block),
    rounded to uint8."""
    h, w, c = image.shape
    if h % factor or w % factor:
        raise ValueError(f"image {h}x{w} is not divisible by {factor}")
    blocks = image.reshape(h // factor, factor, w // factor, factor, c).astype(np.float64)
    return np.floor(blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint8)


def bicubic_upscale(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w * factor, h * factor), Image.Resampling.BICUBIC))


def sr_upscaler(m, settings: SamplingSettings, seed: int = 0, back_projection: int = 0
                ) -> Callable[[np.ndarray], np.ndarray]:
    """LR uint8 (h, w, 3) -> SR uint8 (h f, w f, 3) by core.pipelines.upscale, what a user gets, with
    the whole image as one tile (these images are small) and an 'upscale-ldm' model (z ++ LR image)."""
    caps = capabilities(m).require("upscale")
    if caps.family != "upscale-ldm":
        raise ValueError(f"the SR evaluation needs an 'upscale-ldm' model (z ++ LR image), this one "
                         f"is {caps.family!r}")
    align = unet_factor(m)

    def upscale(lr: np.ndarray) -> np.ndarray:
        whole = -(-max(lr.shape[:2]) // align) * align
        result = pipelines.upscale(m, Image.fromarray(lr), tile=whole, overlap=0, steps=settings.steps, seed=seed,
                                   sampler=settings.sampler, eta=settings.eta, karras=settings.karras,
                                   back_projection=back_projection, vae_tile=0)
        return np.asarray(result.convert("RGB"))

    return upscale


def evaluate_sr(upscale: Callable[[np.ndarray], np.ndarray], images: dict[str, np.ndarray],
                factor: int, log=print) -> dict:
    """Per image and on average: PSNR / SSIM of upscale(area_downsample(hr)) and of bicubic vs hr."""
    records = {}
    for name, hr in images.items():
        lr = area_downsample(hr, factor)
        sr, bicubic = upscale(lr), bicubic_upscale(lr, factor)
        if sr.shape != hr.shape:
            raise ValueError(f"the upscaler returned {sr.shape} for {name}, expected {hr.shape}")
        records[name] = {"size": list(hr.shape[:2]), "psnr": psnr(sr, hr), "ssim": ssim(sr, hr),
                         "psnr_bicubic": psnr(bicubic, hr), "ssim_bicubic": ssim(bicubic, hr)}
        if log:
            r = records[name]
            log(f"  {name}: PSNR {r['psnr']:.2f} dB (bicubic {r['psnr_bicubic']:.2f}), "
                f"SSIM {r['ssim']:.4f} (bicubic {r['ssim_bicubic']:.4f})")
    keys = ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")
    means = {k: mean(r[k] for r in records.values()) for k in keys}
    means["better_psnr_than_bicubic"] = means["psnr"] > means["psnr_bicubic"]
    return {"images": records, "mean": means}


def eval_sr(m, n_shapes: int = 16, seed: int = 0, sampler: str | None = None, steps: int | None = None,
            eta: float | None = None, karras: bool | None = None, back_projection: int | None = None,
            max_side: int | None = None, photos: bool = True, shapes_size: int = 256, log=print) -> dict:
    """The SR evaluation of a loaded 'upscale-ldm' model on the evaluation photos (centre crops, at
    most max_side) and n_shapes shapes-world scenes of shapes_size pixels (whole)."""
    defaults = pipelines.model_defaults(m)
    sampling = SamplingSettings.resolve(defaults, sampler, karras, steps, None, eta)
    rounds = defaults.back_projection if back_projection is None else back_projection
    settings = {"n_shapes": n_shapes, "shapes_size": shapes_size, "seed": seed, "sampler": sampling.sampler,
                "karras": sampling.karras, "steps": sampling.steps, "eta": sampling.eta, "max_side": max_side,
                "back_projection": rounds,
                "metric_space": "RGB 0-255, SSIM Gaussian 11x11 sigma 1.5, valid windows"}
    factor = first_stage_factor(m)
    grid = factor * unet_factor(m)
    upscale = sr_upscaler(m, sampling, seed, rounds)
    start = time.perf_counter()
    out = {"task": "sr", **model_info(m), "factor": factor, "settings": settings}
    if photos:
        if log:
            log("evaluation photos:")
        crops = {k: center_crop(v, grid, max_side) for k, v in evaluation_photos().items()}
        out["photos"] = evaluate_sr(upscale, crops, factor, log)
    if n_shapes:
        if log:
            log(f"shapes-world scenes ({shapes_size} px):")
        world = ShapesWorld(size=shapes_size, seed=SCENE_STREAM + seed)
        scenes = {f"scene_{i}": center_crop(world[i]["image"], grid) for i in range(n_shapes)}
        out["shapes"] = evaluate_sr(upscale, scenes, factor, log)
    out["wall_time_s"] = round(time.perf_counter() - start, 2)
    return out


def summary_lines(result: dict) -> list[str]:
    lines = []
    for part in ("photos", "shapes"):
        if part in result:
            m = result[part]["mean"]
            lines.append(f"{part}: PSNR {m['psnr']:.2f} dB vs bicubic {m['psnr_bicubic']:.2f}; "
                         f"SSIM {m['ssim']:.4f} vs bicubic {m['ssim_bicubic']:.4f}")
    return lines
