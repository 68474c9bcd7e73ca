"""What every pipeline shares: settle the sampling settings, make n images with one seed each, report
progress, stop when asked, and record the parameters on each image.

Seeds: image i gets seed + i, and is sampled on its own with core.samplers' CPU generator seeded
by it, so `n=1, seed=s + i` reproduces image i exactly. seed=None draws a random 32-bit seed,
which is recorded like any other.

Interruption: when `should_stop` is set (or the callback raises SamplingInterrupted), the
pipeline raises core.samplers.SamplingInterrupted with `.images`, the images finished before the
stop (each with its parameters), and `.partial`, the image in progress as far as it got (its latest
pred_x0 decoded; None when stopped before the first step).
"""

import math
import random
from dataclasses import dataclass

import torch

from core.pipelines import vae
from core.pipelines.defaults import VERSION, Defaults, model_name
from core.pipelines.images import tensor_to_images
from core.pipelines.infotext import attach_parameters, cached_model_hash
from core.pipelines.progress import Progress
from core.samplers import SAMPLER_DISPLAY_NAMES, SAMPLERS, SIGMA_SAMPLERS, SamplingInterrupted

MAX_SEED = 2 ** 63 - 1


@dataclass(frozen=True)
class SamplingSettings:
    sampler: str              # a key of core.samplers.SAMPLERS
    karras: bool              # Karras sigmas (sigma-space samplers only)
    steps: int
    guidance_scale: float
    eta: float                # DDIM's eta; 0 for every other sampler


def sampler_name(name) -> tuple[str, bool | None]:
    """Our sampler key for a key or a display name ("DPM++ 2M", "Euler a", "DPM++ 2M Karras");
    the second value is True when the name itself asks for Karras sigmas."""
    if not isinstance(name, str):
        raise ValueError(f"sampler must be a name such as 'ddim'; got {name!r}.")
    key = name.strip()
    if key in SAMPLERS:
        return key, None
    by_display = {v.lower(): k for k, v in SAMPLER_DISPLAY_NAMES.items()}
    lowered = key.lower()
    if lowered in by_display:
        return by_display[lowered], None
    if lowered.endswith(" karras") and lowered[:-7] in by_display:
        return by_display[lowered[:-7]], True
    valid = ", ".join(f"{k} ({SAMPLER_DISPLAY_NAMES[k]})" for k in SAMPLERS)
    raise ValueError(f"unknown sampler {name!r}; choose one of: {valid}.")


def _finite(name, value, minimum=None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}.")
    return float(value)


def resolve_settings(defaults: Defaults, sampler=None, karras=None, steps=None, guidance_scale=None,
                     eta=None) -> SamplingSettings:
    """The caller's values over the model's defaults, checked (ValueError with what is valid)."""
    explicit_sampler = sampler is not None
    name, named_karras = sampler_name(sampler if explicit_sampler else defaults.sampler)
    if karras is None:
        karras = named_karras if named_karras is not None else (
            defaults.karras if not explicit_sampler or name == defaults.sampler else False)
        karras = bool(karras) and name in SIGMA_SAMPLERS
    elif karras and name not in SIGMA_SAMPLERS:
        raise ValueError(f"Karras sigmas apply to the samplers {', '.join(SIGMA_SAMPLERS)}, not to {name!r}.")
    steps = defaults.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a whole number >= 1; got {steps!r}.")
    guidance_scale = _finite("guidance_scale", defaults.guidance_scale if guidance_scale is None
                             else guidance_scale, minimum=0.0)
    if eta is None:
        eta = defaults.eta if name == "ddim" else 0.0
    eta = _finite("eta", eta, minimum=0.0)
    if eta and name != "ddim":
        raise ValueError(f"eta applies to the 'ddim' sampler only (got sampler {name!r}); leave eta at 0.")
    return SamplingSettings(name, bool(karras), steps, guidance_scale, eta)


def resolve_seed(seed) -> int:
    """The caller's seed, or a random one (recorded with the image)."""
    if seed is None or (type(seed) is int and seed == -1):
        return random.SystemRandom().randrange(2 ** 32)                       # A1111: -1 = random
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number in [0, 2^63 - 1], or None / -1 for a random one; "
                         f"got {seed!r}.")
    return seed


def check_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of images) must be a whole number >= 1; got {n!r}.")
    return n


def base_parameters(m, task: str, settings: SamplingSettings, seed: int, width: int, height: int,
                    prompt: str = "", negative_prompt: str = "") -> dict:
    """The parameters recorded on an image (infotext.PARAMETERS keys)."""
    return {"prompt": prompt, "negative_prompt": negative_prompt, "steps": settings.steps,
            "sampler": settings.sampler, "karras": settings.karras,
            "guidance_scale": settings.guidance_scale, "seed": seed, "width": width, "height": height,
            "model_hash": cached_model_hash(getattr(m, "checkpoint_path", None)), "model": model_name(m),
            "rng": "CPU", "eta": settings.eta if settings.sampler == "ddim" and settings.eta else None, "task": task,
            "version": VERSION}


def sampler_callback(m, callback, image: int, images: int):
    """core.samplers' callback(i, total, x, pred_x0) -> our Progress reports (None if no callback)."""
    if callback is None:
        return None

    def report(i, total, x, pred_x0):
        callback(Progress("sample", i + 1, total, image, images, latent=pred_x0, model=m))
    return report


def decode_callback(callback, image: int, images: int):
    if callback is None:
        return None
    return lambda done, total: callback(Progress("decode", done, total, image, images))


@torch.no_grad()
def generate(m, n: int, seed: int, sample_one, finish_one, callback=None, vae_tile=None):
    """n images: z = sample_one(i, seed_i, sampler_callback) -> latent (1, C, h, w); decoded (tiled
    when large); finish_one(i, seed_i, x) turns the decoded (1, 3, H, W) in [-1, 1] into a PIL image
    with its parameters. Raises SamplingInterrupted with `.images` = the finished ones."""
    images = []
    for i in range(n):
        seed_i = seed + i
        try:
            z = sample_one(i, seed_i, sampler_callback(m, callback, i, n))
        except SamplingInterrupted as stop:
            stop.images = images
            stop.partial = None if stop.pred_x0 is None else \
                tensor_to_images(vae.decode(m, stop.pred_x0, tile=vae_tile))[0]     # the estimate so far
            raise
        x = vae.decode(m, z, tile=vae_tile, on_tile=decode_callback(callback, i, n))
        images.append(finish_one(i, seed_i, x))
    return images


def finish_plain(params_for, reports_for=None):
    """A finish_one for pipelines whose decoded image is the result: truncate to uint8, attach."""
    def finish(i, seed_i, x):
        image = tensor_to_images(x)[0]
        return attach_parameters(image, params_for(i, seed_i), reports_for(i) if reports_for else None)
    return finish
