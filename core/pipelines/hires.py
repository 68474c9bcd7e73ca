"""Hires fix (AUTOMATIC1111's "Hires. fix"): text to image at the model's size, upscaled, then a
second image-to-image pass at the larger size with the same seed, so the composition of the small
image is kept and the detail is redrawn at full resolution.

Upscalers: the latent ones (A1111's "Latent", "Latent (antialiased)", "Latent (bicubic)", ...,
"Latent (nearest-exact)": interpolate the first pass's latents), "Lanczos" and "Nearest" (on the
decoded image), or a super-resolution model of ours (`sr_model=`: our LDM-SR with back-projection;
no other UI offers a diffusion SR model as the hires upscaler). The second pass is tiled (every step,
overlaps blended: tiling.py) when its latent is larger than the UNet's comfortable size.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from PIL import Image

from core.capabilities import capabilities
from core.pipelines import vae
from core.embeddings import ti_hashes
from core.lora import lora_hashes
from core.pipelines.conditioning import effective_clip_skip, text_conditioning
from core.pipelines.defaults import MAX_LATENT_SIDE, check_size, model_defaults, model_name
from core.pipelines.denoise import denoise_batches
from core.pipelines.generation import base_parameters, interrupted, plain_images, resolve_seeds
from core.pipelines.images import image_to_tensor, tensor_to_images
from core.pipelines.refiner import refiner_parameters
from core.pipelines.memory import budget_bytes, plan_tile, unet_peak_bytes
from core.pipelines.tiling import native_tiling as native_tiling_plan, tiled
from core.pipelines.txt2img import txt2img
from core.pipelines.upscale import upscale
from core.samplers import SIGMA_SAMPLERS, SamplingInterrupted, SamplingSettings, check_strength, schedule_length
from core.samplers.settings import finite_number, whole_number

# A1111's latent upscalers: (interpolation mode, antialias).
LATENT_UPSCALERS = {"Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
                    "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
                    "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False)}
IMAGE_UPSCALERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
SR_MODEL = "model"                      # upscaler name when sr_model= is given
TILE_FROM = 64                          # latent side beyond which (and beyond 2x training size) we tile


@dataclass(frozen=True)
class HiresSettings:
    """The second pass, as A1111's txt2img fields (enable_hr, hr_scale, hr_resize_x/y, ...)."""
    scale: float = 2.0                  # hr_scale: used when width/height are not given
    width: int | None = None            # hr_resize_x / hr_resize_y: a target size instead of a scale
    height: int | None = None
    upscaler: str = "Latent"            # a LATENT_UPSCALERS / IMAGE_UPSCALERS name, or "model"
    steps: int | None = None            # hr_second_pass_steps; None/0: the first pass's steps
    strength: float = 0.7               # denoising_strength of the second pass
    prompt: str | None = None           # hr_prompt / hr_negative_prompt; None: the first pass's
    negative_prompt: str | None = None
    sampler: str | None = None          # hr_sampler_name; None: the first pass's

    def __post_init__(self):
        finite_number("hires scale", self.scale, minimum=1.0, maximum=8.0)
        check_strength(self.strength)
        if self.upscaler not in {**LATENT_UPSCALERS, **IMAGE_UPSCALERS, SR_MODEL: None}:
            raise ValueError(f"hires upscaler must be one of {', '.join([*LATENT_UPSCALERS, *IMAGE_UPSCALERS])} "
                             f"or 'model' (with sr_model=); got {self.upscaler!r}.")
        if self.steps is not None:
            whole_number("hires steps", self.steps, minimum=0, maximum=1000)

    def target(self, width: int, height: int) -> tuple[int, int]:
        """The second pass's size for a first pass of width x height (before the model's grid)."""
        if self.width or self.height:
            w = self.width or round(self.height * width / height)
            h = self.height or round(self.width * height / width)
            return w, h
        return round(width * self.scale), round(height * self.scale)


def txt2img_hires(m, prompt, hires: HiresSettings, negative_prompt="", steps=None, guidance_scale=None,
                  sampler=None, seed=None, width=None, height=None, n=1, *, sr_model=None, batch_size=1,
                  karras=None, scheduler=None, clip_skip=None, vae_tile=None, callback=None, should_stop=None,
                  lora_dir=None, embeddings_dir=None, native_tiling=False, refiner=None,
                  refiner_switch_at=None) -> list:
    """txt2img with a hires-fix second pass; one PIL image per seed, at the hires size.
    Arguments as txt2img (native_tiling: the first pass's, above the model's native size); `hires`
    the second pass; `sr_model` a super-resolution model for hires.upscaler == "model". The second
    pass keeps the first's schedule type (A1111's "use same scheduler") when its sampler walks
    sigmas, and its clip skip. refiner / refiner_switch_at: the refiner finishes the first pass
    (core/pipelines/refiner.py); the base model runs the hires pass."""
    # 1. Resolve both passes: sizes on the model's grid, settings, seeds (checked before any work).
    caps = capabilities(m).require("txt2img")
    defaults = model_defaults(m)
    width, height = check_size(m, defaults.width if width is None else width,
                               defaults.height if height is None else height, "txt2img")
    target = _snap(hires.target(width, height), caps.grid)
    hr_w, hr_h = check_size(m, *target, "the hires pass")
    first = SamplingSettings.resolve(defaults, sampler, karras, steps, guidance_scale, scheduler=scheduler)
    second = SamplingSettings.resolve(first, hires.sampler, None, hires.steps or first.steps, first.guidance_scale)
    if second.sampler in SIGMA_SAMPLERS and second.scheduler != first.scheduler:
        second = replace(second, karras=first.karras, scheduler=first.scheduler)
    seeds = resolve_seeds(seed, n)
    if hires.upscaler == SR_MODEL:
        if sr_model is None:
            raise ValueError("hires upscaler 'model' needs a super-resolution model (sr_model=).")
        capabilities(sr_model).require("upscale")

    # 2. First pass: latents at the model's size.
    try:
        z = txt2img(m, prompt, negative_prompt, first.steps, first.guidance_scale, first.sampler, seeds[0],
                    width, height, n, karras=first.karras, scheduler=first.scheduler, clip_skip=clip_skip,
                    batch_size=batch_size, vae_tile=vae_tile,
                    callback=callback, should_stop=should_stop, output="latent", lora_dir=lora_dir,
                    embeddings_dir=embeddings_dir, native_tiling=native_tiling, refiner=refiner,
                    refiner_switch_at=refiner_switch_at)
    except SamplingInterrupted as stop:
        stop.images = []                                  # the first pass hands back latents, not images
        raise

    # 3. Upscale to the hires size: in latent space, or decoded, resized and encoded again.
    z0 = _upscale(m, z, hires, (hr_h // caps.factor, hr_w // caps.factor), sr_model, seeds, vae_tile)

    # 4. Second pass: img2img from the upscaled latents, same seeds, tiled when large.
    hr_prompt = prompt if hires.prompt is None else hires.prompt
    hr_negative = negative_prompt if hires.negative_prompt is None else hires.negative_prompt
    cond, uncond = text_conditioning(m, hr_prompt, hr_negative, clip_skip=clip_skip, size=(hr_h, hr_w),
                                     lora_dir=lora_dir, embeddings_dir=embeddings_dir)

    first_tiling = native_tiling_plan(m, width, height, native_tiling)[1]

    def params_for(i):
        params = base_parameters(m, "txt2img", first, seeds[i], width, height, prompt, negative_prompt)
        return {**params, "tiled_diffusion": first_tiling, "strength": hires.strength,
                "hr_upscaler": _upscaler_name(hires, sr_model),
                "hr_scale": None if hires.width or hires.height else hires.scale,
                "hr_resize": f"{hr_w}x{hr_h}" if hires.width or hires.height else None,
                "hr_steps": hires.steps or None, "hr_sampler": hires.sampler and second.sampler,
                "hr_prompt": hires.prompt, "hr_negative_prompt": hires.negative_prompt, "lora_hashes": lora_hashes(m),
                "clip_skip": effective_clip_skip(m, clip_skip),
                "ti_hashes": ti_hashes(embeddings_dir, [prompt, negative_prompt, hr_prompt, hr_negative]),
                **refiner_parameters(refiner, refiner_switch_at, schedule_length(first, len(m.alphas_cumprod)))}

    def record(z):
        return plain_images(m, z, params_for, vae_tile, callback)

    try:
        z = denoise_batches(m, cond, uncond, second, tuple(z0.shape[1:]), seeds, batch_size, x0=z0,
                            strength=hires.strength, wrap=_tiling(m, z0.shape[-2:], second),
                            callback=callback, should_stop=should_stop)
    except SamplingInterrupted as stop:
        raise interrupted(m, stop, record, params_for, vae_tile)

    # 5. Decode and record (A1111's Hires keys).
    return record(z)


def _snap(size: tuple[int, int], grid: int) -> tuple[int, int]:
    """The nearest multiple of the model's grid (at least one grid step) on each side."""
    return tuple(max(grid, round(v / grid) * grid) for v in size)


def _upscaler_name(hires: HiresSettings, sr_model) -> str:
    if hires.upscaler != SR_MODEL:
        return hires.upscaler
    return model_name(sr_model) or "super-resolution model"


@torch.no_grad()
def _upscale(m, z, hires: HiresSettings, size: tuple[int, int], sr_model, seeds, vae_tile):
    """Latents (n, C, h, w) -> latents (n, C, *size) by the chosen upscaler."""
    if hires.upscaler in LATENT_UPSCALERS:
        mode, antialias = LATENT_UPSCALERS[hires.upscaler]
        corners = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        return F.interpolate(z.float(), size=size, mode=mode, antialias=antialias, **corners).to(z.dtype)
    f = capabilities(m).factor
    out = []
    for i in range(z.shape[0]):
        small = tensor_to_images(vae.decode(m, z[i:i + 1], tile=vae_tile))[0]
        if hires.upscaler == SR_MODEL:
            sr_f = capabilities(sr_model).factor
            scale = min(sr_f, size[1] * f / small.width)
            small = upscale(sr_model, small, seed=seeds[i], scale=scale if scale < sr_f else None)
        big = small.resize((size[1] * f, size[0] * f), IMAGE_UPSCALERS.get(hires.upscaler, Image.Resampling.LANCZOS))
        out.append(vae.encode(m, image_to_tensor(big, m.device), tile=vae_tile))
    return torch.cat(out)


def _tiling(m, latent: tuple[int, int], settings: SamplingSettings):
    """A tiling wrapper when the hires latent is beyond twice the training size (or does not fit
    in memory as one piece); None otherwise."""
    caps, side = capabilities(m), max(latent)
    comfortable = max(2 * m.config.image_size, TILE_FROM)
    align = caps.grid // caps.factor
    batch = 2 if settings.guidance_scale != 1.0 else 1
    fits = unet_peak_bytes(m, *latent, batch) <= budget_bytes(m.device)
    if side <= comfortable and fits:
        return None
    largest = min(comfortable, MAX_LATENT_SIDE) // align * align
    tile = plan_tile(lambda t: unet_peak_bytes(m, t, t, batch), budget_bytes(m.device), align, largest)
    return tiled(tile, math.ceil(tile / 4 / align) * align, align)
