"""Evaluate the default models: does a text-to-image model draw what the caption asks, and does a
super-resolution model beat bicubic upscaling?

    python -m core.eval shapes --model weights/shapes-txt2img.safetensors --n 200 [--objects 1|2|3|mixed]
                               [--seed 0] [--sampler ddim --steps 50 --guidance 5] [--out results.json]
    python -m core.eval sr --model weights/shapes-sr4x.safetensors [--n-shapes 16] [--out results.json]
    python -m core.eval inpaint --model weights/shapes-txt2img.safetensors --n 64 [--out results.json]
    python -m core.eval autoencoder --model weights/shapes-kl-f4.safetensors [--n 64] [--out results.json]

shapes: random shapes-world captions (shared/shapes_world.md), one image each from a fixed seed
(scene i gets seed + i, drawn alone, so an image equals the one txt2img gives for that prompt and
seed with batch size 1), judged by `core.world.judge` (colour, shape, size, cell per object, no
extra object, background). Reported: the fraction of scenes entirely right, per-attribute accuracy
over the asked objects, and both split by the number of objects.

sr: PSNR and SSIM of the model's 4x result against the original, next to bicubic upscaling, on the
four evaluation photos kept out of training (skimage.data chelsea, coffee, rocket,
motorcycle_left) and on shapes-world scenes at 256 px. The low-resolution input is the original's
area (box) down-sample, rounded to uint8 like a real image file; bicubic is PIL's (a = -0.5, the
MATLAB `imresize` kernel the SR literature compares with). Both metrics are on RGB (0-255, all three
channels, no border shaved); SSIM is Wang et al. 2004 with an 11-tap Gaussian window, sigma 1.5,
K1 = 0.01, K2 = 0.03, over 'valid' windows only (as their reference MATLAB code), averaged over
channels.

inpaint: one object of a 1- or 2-object scene is masked (its circumscribed square plus 3 px) and
repainted with the caption that gives it another colour; the result is judged against the edited
scene. Reported: the fraction entirely right, the PSNR outside the mask and the CIEDE2000 colour
difference along the mask border. A text-to-image model inpaints by latent blending, a dedicated
inpainting model (SD2-inpainting layout) with its mask and masked-image conditioning.

The judging and scoring functions take a plain callable (captions -> images, LR -> SR), so a test
can pass a perfect "model" through exactly the same path.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core import pipelines
from core.checkpoints import model_hash
from core.models.conditioners import ClassEmbedder, LayoutEmbedder
from core.models.distributions import DiagonalGaussianDistribution
from core.pipelines import defaults
from core.pipelines.defaults import first_stage_factor, unet_factor
from core.samplers import SAMPLERS, sample
from core.world import PALETTE, ShapesWorld, caption, judge, random_scene, render

OBJECT_CHOICES = {"1": 1, "2": 2, "3": 3, "mixed": None}
SCENE_STREAM = 0x5EE1      # the evaluation scenes' own numpy stream, apart from the training world's
EVAL_PHOTOS = ("chelsea", "coffee", "rocket", "motorcycle_left")
ATTRIBUTES = ("found", "colour", "shape", "size", "cell")


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """10 log10(L^2 / MSE) over all pixels and channels; inf for identical images."""
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The 1-D normalised Gaussian (size,); SSIM's 2-D window is its outer product."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean SSIM (Wang, Bovik, Sheikh, Simoncelli 2004, eq. 13) of two images (H, W) or (H, W, C).

    Local statistics are Gaussian-weighted (population moments) over every window that lies fully
    inside the image; per-channel maps are averaged. Computed in float64.
    """
    a, b = _pair(a, b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if min(a.shape[:2]) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size} pixels, got {a.shape[:2]}")
    x = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2)      # (2, C, H, W) float64
    c = x.shape[1]
    g = torch.from_numpy(gaussian_window(size, sigma))
    kh = g.view(1, 1, size, 1).expand(c, 1, size, 1)
    kw = g.view(1, 1, 1, size).expand(c, 1, 1, size)

    def filt(t):                                                     # (N, C, H, W) -> valid windows
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu = filt(x)                                                     # (2, C, H-10, W-10)
    mu_a, mu_b = mu[0], mu[1]
    var_a = filt(x[:1] ** 2)[0] - mu_a ** 2
    var_b = filt(x[1:] ** 2)[0] - mu_b ** 2
    cov = filt(x[:1] * x[1:])[0] - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    return a, b


# --------------------------------------------------------------------------------------------
# Model plumbing shared by both evaluations
# --------------------------------------------------------------------------------------------

def model_defaults(m) -> dict:
    """The sampling defaults a pipeline would use (the file's metadata over the task's reference)."""
    return dataclasses.asdict(defaults.model_defaults(m))


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    """Decoded images (B, 3, H, W) in [-1, 1] -> uint8 (H, W, 3) each: clamp, scale by 255 and
    truncate, as the reference scripts do (`255. * x` then `astype(np.uint8)`)."""
    x = ((x.float() + 1) / 2).clamp(0, 1) * 255
    return list(x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy())


def _noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """x_T (B, C, h, w): each image's noise drawn alone from its own seed, as sample() draws it."""
    return torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(int(s)))
                      for s in seeds])


# --------------------------------------------------------------------------------------------
# Shapes world: caption following
# --------------------------------------------------------------------------------------------

def eval_scenes(n: int, objects: str = "mixed", seed: int = 0) -> list:
    """n random scenes for captions; scene i from numpy's PCG64 seeded with (SCENE_STREAM, seed, i)."""
    if objects not in OBJECT_CHOICES:
        raise ValueError(f"objects must be one of {list(OBJECT_CHOICES)}, got {objects!r}")
    if n <= 0:
        raise ValueError(f"n must be a positive number of scenes, got {n}")
    return [random_scene(np.random.default_rng([SCENE_STREAM, seed, i]), OBJECT_CHOICES[objects])
            for i in range(n)]


def text_generator(m, width: int, height: int, sampler: str, steps: int, guidance_scale: float,
                   eta: float = 0.0, karras: bool = False) -> Callable[[list[str], list[int]], list[np.ndarray]]:
    """captions, seeds -> uint8 images, with core.samplers.sample and classifier-free guidance
    against the empty caption."""
    if m.task != "conditional" or isinstance(m.cond_stage_model, (ClassEmbedder, LayoutEmbedder)):
        raise ValueError(f"the shapes evaluation needs a text-to-image model; this one is "
                         f"{m.task!r} ({type(m.cond_stage_model).__name__})")
    f, grid = first_stage_factor(m), first_stage_factor(m) * unet_factor(m)
    if width % grid or height % grid:
        raise ValueError(f"width and height must be multiples of {grid} for this model, got {width}x{height}")
    latent = (m.config.channels, height // f, width // f)

    def generate(captions: list[str], seeds: list[int]) -> list[np.ndarray]:
        cond = m.get_learned_conditioning(list(captions))
        uncond = m.get_learned_conditioning([""] * len(captions))
        z = sample(m, cond, uncond, guidance_scale=guidance_scale, steps=steps, sampler=sampler,
                   eta=eta, karras=karras, x_T=_noise(seeds, latent), seed=seeds[0])
        return to_uint8(m.decode_first_stage(z))

    return generate


def evaluate_shapes(generate: Callable, scenes: list, seeds: list[int], batch_size: int = 16,
                    save_dir: str | Path | None = None, log=print) -> dict:
    """Generate an image per scene's caption and judge it against the scene."""
    records = []
    for start in range(0, len(scenes), batch_size):
        batch = scenes[start:start + batch_size]
        texts = [caption(s) for s in batch]
        images = generate(texts, seeds[start:start + batch_size])
        for k, (scene, text, image) in enumerate(zip(batch, texts, images)):
            i = start + k
            verdict = judge(image, scene)
            records.append(_record(i, seeds[i], text, verdict))
            if save_dir is not None:
                Path(save_dir).mkdir(parents=True, exist_ok=True)
                mark = "ok" if verdict["scene_ok"] else "wrong"
                Image.fromarray(image).save(Path(save_dir) / f"{i:05d}_{mark}.png")
        if log:
            done = len(records)
            right = sum(r["scene_ok"] for r in records)
            log(f"  {done}/{len(scenes)} scenes, {right} entirely right")
    return {"summary": _accuracy(records), "by_objects": _by_objects(records), "scenes": records}


def _record(index: int, seed: int, text: str, verdict: dict) -> dict:
    objects = [{"asked": o["asked"], "found": o["found"], "colour": o["colour_ok"],
                "shape": o["shape_ok"], "size": o["size_ok"], "cell": o["cell_ok"], "ok": o["ok"]}
               for o in verdict["objects"]]
    return {
        "index": index, "seed": seed, "caption": text, "scene_ok": verdict["scene_ok"],
        "background_ok": verdict["background"]["ok"], "background_seen": verdict["background"]["seen"],
        # count: as many objects seen as asked (none missing, none extra)
        "count_ok": all(o["found"] for o in objects) and verdict["no_extra"],
        "extra_objects": len(verdict["extra_objects"]), "objects": objects,
    }


def _accuracy(records: list[dict]) -> dict:
    objects = [o for r in records for o in r["objects"]]
    out = {"scenes": len(records), "scene_accuracy": _mean(r["scene_ok"] for r in records),
           "objects": len(objects), "object_accuracy": _mean(o["ok"] for o in objects)}
    out.update({a: _mean(o[a] for o in objects) for a in ATTRIBUTES})
    out["count"] = _mean(r["count_ok"] for r in records)
    out["background"] = _mean(r["background_ok"] for r in records)
    return out


def _by_objects(records: list[dict]) -> dict:
    counts = sorted({len(r["objects"]) for r in records})
    return {str(k): _accuracy([r for r in records if len(r["objects"]) == k]) for k in counts}


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else 0.0


def eval_shapes(m, n: int = 200, objects: str = "mixed", seed: int = 0, sampler: str | None = None,
                steps: int | None = None, guidance_scale: float | None = None, eta: float | None = None,
                karras: bool | None = None, width: int | None = None, height: int | None = None,
                batch_size: int = 16, save_dir=None, log=print) -> dict:
    """The shapes evaluation of a loaded text-to-image model; settings default to the model's own."""
    d = model_defaults(m)
    side = m.config.image_size * first_stage_factor(m)
    settings = {
        "n": n, "objects": objects, "seed": seed,
        "sampler": sampler or d["sampler"], "karras": d["karras"] if karras is None else karras,
        "steps": steps or d["steps"],
        "guidance_scale": d["guidance_scale"] if guidance_scale is None else guidance_scale,
        "eta": d["eta"] if eta is None else eta,
        "width": width or d.get("width", side), "height": height or d.get("height", side),
        "batch_size": batch_size,
    }
    generate = text_generator(m, settings["width"], settings["height"], settings["sampler"],
                              settings["steps"], settings["guidance_scale"], settings["eta"],
                              settings["karras"])
    start = time.perf_counter()
    result = evaluate_shapes(generate, eval_scenes(n, objects, seed), [seed + i for i in range(n)],
                             batch_size, save_dir, log)
    return {"task": "shapes", **_model_info(m), "settings": settings, **result,
            "wall_time_s": round(time.perf_counter() - start, 2)}


def _model_info(m) -> dict:
    path = getattr(m, "checkpoint_path", None)
    info = {"model": path, "model_name": getattr(m, "metadata", {}).get("ldm_studio_name")}
    if path and Path(path).is_file():
        info["model_hash"] = model_hash(path)
    return info


# --------------------------------------------------------------------------------------------
# Inpainting: repaint one object with a new colour, judge the whole scene
# --------------------------------------------------------------------------------------------

def inpaint_cases(n: int, seed: int = 0, size: int = 64, margin: int = 3) -> list[dict]:
    """n edits: a 1- or 2-object scene, one of its objects to be repainted in another colour.

    Each case: the original scene and its render, the edited scene (what the result must show: the
    same scene with that object's colour changed), and the mask (H, W) uint8, 255 = repaint: the
    object's circumscribed square grown by `margin` pixels."""
    cases = []
    for i in range(n):
        rng = np.random.default_rng([SCENE_STREAM, seed, i, 7])
        scene = random_scene(rng, (1, 2))
        k = int(rng.integers(len(scene.objects)))
        obj = scene.objects[k]
        colour = str(rng.choice([c for c in PALETTE if c != obj.colour]))
        objects = list(scene.objects)
        objects[k] = dataclasses.replace(obj, colour=colour)
        edited = dataclasses.replace(scene, objects=tuple(objects))
        half = obj.diameter * size / 2 + margin
        x0, x1 = (max(0, int(math.floor(obj.cx * size - half))), min(size, int(math.ceil(obj.cx * size + half))))
        y0, y1 = (max(0, int(math.floor(obj.cy * size - half))), min(size, int(math.ceil(obj.cy * size + half))))
        mask = np.zeros((size, size), np.uint8)
        mask[y0:y1, x0:x1] = 255
        cases.append({"scene": scene, "edited": edited, "image": render(scene, size), "mask": mask,
                      "prompt": caption(edited), "object": k, "new_colour": colour})
    return cases


def eval_inpaint(m, n: int = 64, seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 guidance_scale: float | None = None, eta: float | None = None, karras: bool | None = None,
                 mask_blur: int = 2, save_dir=None, log=print) -> dict:
    """Inpaint every case of inpaint_cases with `m` (a dedicated inpainting model, or any text-to-image
    model by latent blending) and report the fraction of edited scenes entirely right (checker), the
    PSNR outside the mask and the border colour difference (CIEDE2000) the pipeline measures."""
    from core.pipelines import inpaint
    size = m.config.image_size * first_stage_factor(m)
    records = []
    start = time.perf_counter()
    for i, case in enumerate(inpaint_cases(n, seed, size)):
        out = inpaint(m, Image.fromarray(case["image"]), Image.fromarray(case["mask"]), case["prompt"],
                      steps=steps, guidance_scale=guidance_scale, sampler=sampler, seed=seed + i, eta=eta,
                      karras=karras, mask_blur=mask_blur)[0]
        image = np.asarray(out.convert("RGB"))
        verdict = judge(image, case["edited"])
        reports = out.info.get("ldm_studio", {})
        records.append({**_record(i, seed + i, case["prompt"], verdict),
                        "outside_psnr": reports.get("outside_psnr"), "border_delta_e": reports.get("border_delta_e")})
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            out.save(Path(save_dir) / f"{i:05d}_{'ok' if verdict['scene_ok'] else 'wrong'}.png")
        if log and (i + 1) % 8 == 0:
            log(f"  {i + 1}/{n} edits, {sum(r['scene_ok'] for r in records)} entirely right")
    summary = _accuracy(records)
    # The worst image's PSNR outside the mask (the pipeline reports 100 dB for an exact copy).
    summary["outside_psnr"] = min((r["outside_psnr"] for r in records if r["outside_psnr"] is not None),
                                  default=math.inf)
    summary["border_delta_e"] = _mean(r["border_delta_e"] for r in records if r["border_delta_e"] is not None)
    d = model_defaults(m)
    settings = {"n": n, "seed": seed, "sampler": sampler or d["sampler"], "steps": steps or d["steps"],
                "guidance_scale": d["guidance_scale"] if guidance_scale is None else guidance_scale,
                "mask_blur": mask_blur, "method": "dedicated model" if m.task.startswith("inpaint") else "latent blending"}
    return {"task": "inpaint", **_model_info(m), "settings": settings, "summary": summary, "scenes": records,
            "wall_time_s": round(time.perf_counter() - start, 2)}


# --------------------------------------------------------------------------------------------
# Super-resolution: PSNR / SSIM against the original, next to bicubic
# --------------------------------------------------------------------------------------------

def evaluation_photos() -> dict[str, np.ndarray]:
    """The four photos kept out of training, uint8 (H, W, 3), from scikit-image's bundled data."""
    try:
        import skimage.data
    except ImportError:
        raise ImportError("the SR evaluation reads its photos from scikit-image; install the dev "
                          "requirements (pip install -r requirements-dev.txt) or pip install "
                          "scikit-image") from None
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


def sr_upscaler(m, sampler: str, steps: int, seed: int = 0, eta: float = 0.0, karras: bool = False,
                back_projection: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """LR uint8 (h, w, 3) -> SR uint8 (h f, w f, 3) by core.pipelines.upscale, what a user gets, with
    the whole image as one tile (these images are small) and an 'upscale-ldm' model (z ++ LR image)."""
    if m.task != "upscale-ldm":
        raise ValueError(f"the SR evaluation needs an 'upscale-ldm' model (z ++ LR image), this one "
                         f"is {m.task!r}")
    align = unet_factor(m)

    def upscale(lr: np.ndarray) -> np.ndarray:
        whole = -(-max(lr.shape[:2]) // align) * align
        result = pipelines.upscale(m, Image.fromarray(lr), tile=whole, overlap=0, steps=steps, seed=seed,
                                   sampler=sampler, eta=eta, karras=karras, back_projection=back_projection,
                                   vae_tile=0)
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
    mean = {k: _mean(r[k] for r in records.values()) for k in keys}
    mean["better_psnr_than_bicubic"] = mean["psnr"] > mean["psnr_bicubic"]
    return {"images": records, "mean": mean}


def eval_sr(m, n_shapes: int = 16, seed: int = 0, sampler: str | None = None, steps: int | None = None,
            eta: float | None = None, karras: bool | None = None, back_projection: int | None = None,
            max_side: int | None = None, photos: bool = True, shapes_size: int = 256, log=print) -> dict:
    """The SR evaluation of a loaded 'upscale-ldm' model on the evaluation photos (centre crops, at
    most max_side) and n_shapes shapes-world scenes of shapes_size pixels (whole)."""
    d = model_defaults(m)
    settings = {"n_shapes": n_shapes, "shapes_size": shapes_size, "seed": seed, "sampler": sampler or d["sampler"],
                "karras": d["karras"] if karras is None else karras, "steps": steps or d["steps"],
                "eta": d["eta"] if eta is None else eta, "max_side": max_side,
                "back_projection": d["back_projection"] if back_projection is None else back_projection,
                "metric_space": "RGB 0-255, SSIM Gaussian 11x11 sigma 1.5, valid windows"}
    factor = first_stage_factor(m)
    grid = factor * unet_factor(m)
    upscale = sr_upscaler(m, settings["sampler"], settings["steps"], seed, settings["eta"],
                          settings["karras"], settings["back_projection"])
    start = time.perf_counter()
    out = {"task": "sr", **_model_info(m), "factor": factor, "settings": settings}
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


# --------------------------------------------------------------------------------------------
# Autoencoder: reconstruction PSNR / SSIM
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def reconstruct_uint8(ae, image: np.ndarray) -> np.ndarray:
    """D(E(x)) of a uint8 (H, W, 3) image with the posterior mean (KL) or the quantised latent (VQ)."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    param = next(ae.parameters())
    h = ae.encode(x.to(param.device, param.dtype))
    z = h.mode() if isinstance(h, DiagonalGaussianDistribution) else h     # VQ: h (a Tensor has .mode too)
    return to_uint8(ae.decode(z))[0]


def eval_autoencoder(ae, n_shapes: int = 64, seed: int = 0, size: int = 64, photos: bool = True,
                     max_side: int | None = 256, log=print) -> dict:
    """Reconstruction PSNR and SSIM of a first stage on n_shapes held-out shapes-world scenes and on the
    four evaluation photos (centre crops of at most max_side): mean, median and worst per set."""
    if not hasattr(ae, "decoder") or not hasattr(ae, "cfg"):
        raise ValueError(f"the autoencoder evaluation needs a first-stage model file; this is a "
                         f"{type(ae).__name__} (for an LDM, evaluate its task: shapes, sr or inpaint)")
    factor = ae.cfg.ddconfig.downsample_factor
    world = ShapesWorld(size=size, seed=SCENE_STREAM + seed)
    samples = [world[i] for i in range(n_shapes)]
    sets = {"shapes": {f"scene_{i}": s["image"] for i, s in enumerate(samples)}}
    if photos:
        sets["photos"] = {k: center_crop(v, factor, max_side) for k, v in evaluation_photos().items()}
    start = time.perf_counter()
    out = {"task": "autoencoder", **_model_info(ae), "settings": {"n_shapes": n_shapes, "size": size, "seed": seed,
                                                                  "max_side": max_side}}
    for name, images in sets.items():
        scores, records = {}, []
        for i, (key, image) in enumerate(images.items()):
            rec = reconstruct_uint8(ae, image)
            scores[key] = {"psnr": psnr(rec, image), "ssim": ssim(rec, image)}
            if name == "shapes":        # the checker on D(E(x)): what a perfect LDM could reach at best
                records.append(_record(i, 0, caption(samples[i]["scene"]), judge(rec, samples[i]["scene"])))
        values = {m: [v[m] for v in scores.values()] for m in ("psnr", "ssim")}
        out[name] = {"images": scores, **{f"{stat}_{m}": float(fn(values[m])) for m in values
                                          for stat, fn in (("mean", np.mean), ("median", np.median),
                                                           ("min", np.min))}}
        if records:
            out[name]["checker"] = _accuracy(records)
        if log:
            log(f"{name}: PSNR median {out[name]['median_psnr']:.2f} dB (min {out[name]['min_psnr']:.2f})"
                + (f"; the checker finds {out[name]['checker']['scene_accuracy']:.0%} of the reconstructed "
                   f"scenes entirely right (colour {out[name]['checker']['colour']:.0%}, shape "
                   f"{out[name]['checker']['shape']:.0%})" if records else ""))
    out["wall_time_s"] = round(time.perf_counter() - start, 2)
    return out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _finite(obj):
    """JSON has no infinity: an infinite PSNR (identical images) is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(result: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(result), indent=1, allow_nan=False) + "\n")


def _summary_lines(result: dict) -> list[str]:
    if result["task"] == "shapes":
        lines = []
        for k, s in [("all", result["summary"]), *result["by_objects"].items()]:
            label = "all scenes" if k == "all" else f"{k}-object scenes"
            attrs = ", ".join(f"{a} {s[a]:.1%}" for a in (*ATTRIBUTES, "count", "background"))
            lines.append(f"{label} ({s['scenes']}): {s['scene_accuracy']:.1%} entirely right; {attrs}")
        return lines
    if result["task"] == "autoencoder":
        return [f"{part}: reconstruction PSNR mean {result[part]['mean_psnr']:.2f} dB, median "
                f"{result[part]['median_psnr']:.2f}, worst {result[part]['min_psnr']:.2f}; SSIM mean "
                f"{result[part]['mean_ssim']:.4f}" for part in ("shapes", "photos") if part in result]
    if result["task"] == "inpaint":
        s = result["summary"]
        return [f"inpaint ({result['settings']['method']}, {s['scenes']} edits): {s['scene_accuracy']:.1%} of edited "
                f"scenes entirely right; objects {s['object_accuracy']:.1%}; worst PSNR outside the mask "
                f"{s['outside_psnr']:.1f} dB; border colour difference {s['border_delta_e']:.2f} (CIEDE2000)"]
    lines = []
    for part in ("photos", "shapes"):
        if part in result:
            m = result[part]["mean"]
            lines.append(f"{part}: PSNR {m['psnr']:.2f} dB vs bicubic {m['psnr_bicubic']:.2f}; "
                         f"SSIM {m['ssim']:.4f} vs bicubic {m['ssim_bicubic']:.4f}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m core.eval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="task", required=True)
    for name in ("shapes", "sr", "inpaint", "autoencoder"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True, help="a project .safetensors file")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--sampler", choices=list(SAMPLERS), help="default: the model's")
        p.add_argument("--steps", type=int, help="default: the model's")
        p.add_argument("--karras", action=argparse.BooleanOptionalAction, default=None)
        p.add_argument("--eta", type=float)
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
        p.add_argument("--out", help="write the results here as JSON")
    shapes, sr, inp, ae = (sub.choices[k] for k in ("shapes", "sr", "inpaint", "autoencoder"))
    ae.add_argument("--n", type=int, default=64, help="held-out shapes-world scenes")
    ae.add_argument("--max-side", type=int, default=256, help="centre crops of the photos, at most this side")
    ae.add_argument("--no-photos", action="store_true", help="skip the four evaluation photos")
    inp.add_argument("--n", type=int, default=64, help="number of edits (one object recoloured each)")
    inp.add_argument("--guidance", type=float, help="classifier-free guidance scale; default: the model's")
    inp.add_argument("--mask-blur", type=int, default=2, help="feather of the paste-back, pixels")
    inp.add_argument("--save-images", help="folder for the results, named by index and verdict")
    shapes.add_argument("--n", type=int, default=200, help="number of scenes")
    shapes.add_argument("--objects", choices=list(OBJECT_CHOICES), default="mixed")
    shapes.add_argument("--guidance", type=float, help="classifier-free guidance scale; default: the model's")
    shapes.add_argument("--batch-size", type=int, default=16)
    shapes.add_argument("--save-images", help="folder for the generated images, named by index and verdict")
    sr.add_argument("--n-shapes", type=int, default=16, help="shapes-world scenes (256 px) besides the photos")
    sr.add_argument("--shapes-size", type=int, default=256, help="side of the shapes-world scenes")
    sr.add_argument("--max-side", type=int, help="crop the photos to at most this side (default: whole)")
    sr.add_argument("--no-photos", action="store_true", help="skip the four evaluation photos")
    sr.add_argument("--back-projection", type=int, help="rounds after decoding; default: the model's")
    args = parser.parse_args(argv)

    from core import load_model
    m = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    common = dict(seed=args.seed, sampler=args.sampler, steps=args.steps, eta=args.eta, karras=args.karras)
    log = lambda text: print(text, file=sys.stderr, flush=True)     # noqa: E731
    if args.task == "shapes":
        result = eval_shapes(m, n=args.n, objects=args.objects, guidance_scale=args.guidance,
                             batch_size=args.batch_size, save_dir=args.save_images, log=log, **common)
    elif args.task == "autoencoder":
        result = eval_autoencoder(m, n_shapes=args.n, seed=args.seed, photos=not args.no_photos,
                                  max_side=args.max_side, log=log)
    elif args.task == "inpaint":
        result = eval_inpaint(m, n=args.n, guidance_scale=args.guidance, mask_blur=args.mask_blur,
                              save_dir=args.save_images, log=log, **common)
    else:
        result = eval_sr(m, n_shapes=args.n_shapes, max_side=args.max_side, photos=not args.no_photos,
                         shapes_size=args.shapes_size, back_projection=args.back_projection, log=log, **common)
    result["command"] = "python -m core.eval " + " ".join(sys.argv[1:] if argv is None else argv)
    for line in _summary_lines(result):
        print(line)
    if args.out:
        write_json(result, args.out)
        print(f"results written to {args.out}")
    return result


if __name__ == "__main__":
    main()
