"""Sampling: from a denoiser and starting noise to a latent z, in numbered steps.

`sample_denoiser(guided, alphas_cumprod, parameterization, noise, settings, ...)` is the core, as
k-diffusion's samplers are: it is given a *denoiser* — any function guided(x, t, **extra_args) ->
the network's raw output (eps or v) — and knows nothing of models or prompts. It picks the
schedule (timesteps or sigmas), wraps the denoiser into what the chosen sampler family needs
(eps at t, or D(x, sigma)), optionally starts part-way (img2img) and pins a known region
(inpainting), runs the sampler chosen by name, and stops cleanly between steps when asked.

`sample(m, cond, uncond, ...)` is the model-level convenience of the public API (DESIGN.md): it
wraps `m.apply_model` and classifier-free guidance around the core. The pipelines compose the same
wrappers themselves (core/pipelines/denoise.py), with tiling and per-image generators.
"""
import operator
from functools import partial

import torch

from core.samplers.denoisers import (CFGDenoiser, EpsDenoiser, InpaintEpsBlend, InpaintSigmaBlend,
                                     KDenoiser)
from core.samplers.noise import cpu_generator, randn
from core.samplers.registry import ANCESTRAL_SAMPLERS, DISCARD_NEXT_TO_LAST_SIGMA, SAMPLERS, TIMESTEP_SAMPLERS
from core.samplers.scheduled import ScheduledConditioning, is_scheduled
from core.samplers.schedules import ddim_timesteps, ddpm_timesteps, get_sigmas
from core.samplers.settings import SamplingSettings, check_strength, scheduler_name
from core.samplers.sgm import DiscreteDenoiser, sgm_initial_x, sgm_sigmas, sgm_start_index


class SamplingInterrupted(Exception):
    """Raised out of sampling when it is stopped between two steps.

    Carries the latest state: `x` (the sampler's current x, model dtype), `pred_x0` (the latest
    estimate of the clean latent, the thing to decode for a preview; None if stopped before the
    first step), `step` (steps completed) and `total`. The pipelines fill in what they finished:
    `latents` (the finished images' latents), `images` (those images, with their parameters) and
    `partial` (the interrupted images decoded from pred_x0, marked as such; empty if none).
    """

    def __init__(self, x=None, pred_x0=None, step=0, total=0):
        super().__init__(f"Sampling interrupted after step {step} of {total}.")
        self.x, self.pred_x0, self.step, self.total = x, pred_x0, step, total
        self.latents = None
        self.images: list = []
        self.partial: list = []


def schedule_length(settings: SamplingSettings, num_timesteps: int) -> int:
    """How many steps the sampler reports: DDIM/PLMS/DDPM walk the reference step list, which has
    more than `steps` entries when steps does not divide the schedule length (FACTS.md section 7)."""
    if settings.sampler not in TIMESTEP_SAMPLERS:
        return settings.steps
    make = ddpm_timesteps if settings.sampler == "ddpm" else ddim_timesteps
    return len(make(num_timesteps, settings.steps))


@torch.no_grad()
def sample_denoiser(guided, alphas_cumprod, parameterization: str, noise, settings: SamplingSettings, *,
                    extra_args=None, x0=None, mask=None, strength=None, start_step=None, callback=None,
                    should_stop=None, generator=None, discrete_sigmas=None):
    """A latent z (B, C, H, W) from starting noise N(0, 1) (B, C, H, W), float32 or wider.

    guided(x, t, **extra_args) -> the raw output (eps or v) at integer timesteps t (B,): the network
        with classifier-free guidance and any other wrapper already around it.
    settings: a SamplingSettings (valid by construction). generator: a CPU torch.Generator, or one
        per image (a list), for ancestral noise.
    x0 / mask / strength / start_step, callback, should_stop: as `sample`.
    discrete_sigmas: the grid (T,) of an sgm model's DiscreteDenoiser (`m.denoiser.sigmas`, SDXL):
        sigma samplers then follow sgm's numerics (core/samplers/sgm.py) unless Karras sigmas are
        asked for; img2img strength counts steps as the reference does. None: k-diffusion's.
    """
    # 1. The kept latent and the mask, checked against the noise's shape.
    x0, mask = _check_x0_mask(x0, mask, strength, start_step, tuple(noise.shape), noise.device, noise.dtype)
    img2img = strength is not None or start_step is not None
    extra_args = extra_args or {}

    # 2. Schedule, starting point and denoiser for the chosen family.
    if settings.sampler in TIMESTEP_SAMPLERS:
        make_steps = ddpm_timesteps if settings.sampler == "ddpm" else ddim_timesteps
        schedule = make_steps(len(alphas_cumprod), settings.steps)
        schedule = schedule[_start_index(len(schedule), strength, start_step):]
        denoiser = EpsDenoiser(guided, alphas_cumprod, parameterization)
        if img2img:
            a_t = alphas_cumprod[schedule[0]]
            x = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
        else:
            x = noise
        if mask is not None:
            denoiser = InpaintEpsBlend(denoiser, x0, mask, noise)
        total = len(schedule)
    elif discrete_sigmas is not None and settings.scheduler == "automatic" and \
            settings.sampler not in DISCARD_NEXT_TO_LAST_SIGMA:
        # SDXL (sgm DiscreteDenoiser): its step list, snapped sigmas and starting point (sgm.py)
        schedule = sgm_sigmas(discrete_sigmas, settings.steps)
        if strength is not None and start_step is None:                      # the reference's count
            schedule = schedule[sgm_start_index(settings.steps, check_strength(strength)):]
        else:
            schedule = schedule[_start_index(settings.steps, strength, start_step):]
        denoiser = DiscreteDenoiser(guided, discrete_sigmas, parameterization)
        x = sgm_initial_x(noise, schedule, x0 if img2img else None)
        if mask is not None:
            denoiser = InpaintSigmaBlend(denoiser, x0, mask, noise)
        total = len(schedule) - 1
    else:
        if settings.sampler in DISCARD_NEXT_TO_LAST_SIGMA:
            schedule = get_sigmas(alphas_cumprod, settings.steps + 1, scheduler=settings.scheduler)
            schedule = torch.cat([schedule[:-2], schedule[-1:]])
        else:
            schedule = get_sigmas(alphas_cumprod, settings.steps, scheduler=settings.scheduler)
        schedule = schedule[_start_index(settings.steps, strength, start_step):]
        denoiser = KDenoiser(guided, alphas_cumprod, parameterization)
        x = x0 + schedule[0] * noise if img2img else schedule[0] * noise
        if mask is not None:
            denoiser = InpaintSigmaBlend(denoiser, x0, mask, noise)
        total = len(schedule) - 1
    run = SAMPLERS[settings.sampler]
    if settings.sampler == "ddim":
        run = partial(run, eta=settings.eta)
    elif settings.sampler in ANCESTRAL_SAMPLERS:
        run = partial(run, eta=settings.ancestral_eta)

    # 3. Sample, stopping between steps when asked.
    latest = {"x": x, "pred_x0": None, "step": 0}

    def interrupted():
        return SamplingInterrupted(latest["x"], latest["pred_x0"], latest["step"], total)

    def step_callback(i, total, x, pred_x0):
        latest.update(x=x, pred_x0=pred_x0, step=i + 1)
        if callback is not None:
            callback(i, total, x, pred_x0)
        if _stop_requested(should_stop):
            raise interrupted()

    try:
        if _stop_requested(should_stop):
            raise interrupted()
        z = run(denoiser, x, schedule, extra_args=extra_args, callback=step_callback, generator=generator)
    except SamplingInterrupted as stop:
        if stop.x is None:                          # raised bare by the user's callback
            raise interrupted() from None
        raise

    # 4. The kept region is exactly x0 (DDIM ends at alphas_cumprod[0], not at the data).
    if mask is not None:
        z = mask * z + (1 - mask) * x0
    return z


@torch.no_grad()
def sample(m, cond, uncond=None, guidance_scale=7.5, steps=50, sampler="ddim", eta=0.0,
           x_T=None, shape=None, seed=None, callback=None, *, karras=False, x0=None, mask=None,
           strength=None, start_step=None, should_stop=None, ancestral_eta=1.0, scheduler="automatic"):
    """Sample a latent z (B, C, H, W) from model `m` (apply_model, alphas_cumprod, parameterization).

    cond / uncond: the conditioning and the unconditional one for classifier-free guidance (a
        tensor, or a dict with "c_crossattn" / "c_concat" / "c_adm" lists as in the reference code;
        a tensor uncond with a dict cond replaces only c_crossattn). uncond None or
        guidance_scale 1: one network pass per evaluation. Either may change during sampling: a
        core.samplers.scheduled.CondSchedule (prompt editing) or Composition (AND).
    steps, sampler: one of SAMPLERS. ddim/plms use the reference step list (more than `steps`
        steps when steps does not divide T); sigma-space samplers take `karras=True`.
    eta: DDIM's eta (0 = deterministic). `ancestral_eta` (default 1) is the ancestral and SDE
        samplers' noise scale. scheduler: the schedule type of sigma-space samplers ("karras",
        "exponential", "sgm_uniform", "simple", "normal" or A1111's names; karras=True = "karras").
    x_T / shape / seed: the starting noise N(0, 1) (sigma samplers scale it by sigma_max); when x_T
        is None it is drawn on the CPU from torch.Generator().manual_seed(seed) (a random seed if
        None), as is every ancestral noise, so a seed gives the same latent on CPU and GPU.
    callback(i, total, x, pred_x0): after each step i (0-based) of `total`; x is the sampler's state
        (sigma-space samplers keep x = x_0 + sigma eps, not the model's scale), pred_x0 the current
        estimate of the clean latent, for previews. Raising SamplingInterrupted in it stops sampling.
    should_stop: a threading.Event or a callable returning True to stop; checked before the first
        step and after each step; sample() then raises SamplingInterrupted carrying the latest x.
    x0: a clean latent (B|1, C, H, W) for img2img and inpainting.
    strength (0, 1] or start_step: img2img. Run the last max(1, int(strength * N)) of the N steps
        (or start at index start_step), from x0 noised to the first level run.
    mask (B|1, 1|C, H, W) in [0, 1]: 1 = repaint, 0 = keep x0 (the product's "white = repaint").
        At every step the network sees the kept region as x0 noised to the current level; the
        result equals x0 there. Without strength the repainted region starts from pure noise.
    Returns z in the model's dtype; the arithmetic runs in float32 (float64 for a float64 model).
    """
    # 1. Check the arguments before touching the model.
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    settings = SamplingSettings(sampler, bool(karras), steps, guidance_scale, eta, ancestral_eta,
                                scheduler_name(scheduler))
    shape = _latent_shape(x_T, shape)

    # 2. Device and dtypes come from the model; sampler arithmetic runs in at least float32.
    param = next(m.parameters())
    device, model_dtype = param.device, param.dtype
    dtype = torch.promote_types(model_dtype, torch.float32)

    # 3. Noise: x_T, and ancestral noise, from one CPU generator.
    generator = cpu_generator(seed)
    noise = x_T.to(device=device, dtype=dtype) if x_T is not None else randn(shape, generator, device, dtype)

    # 4. m.apply_model -> guided raw output; cond/uncond/scale travel as extra_args.
    def model_fn(x, t, c):
        return m.apply_model(x.to(model_dtype), t, c).to(dtype)

    extra_args = {"cond": cond, "uncond": uncond, "cond_scale": guidance_scale}
    guided = CFGDenoiser(model_fn)
    if is_scheduled(cond) or is_scheduled(uncond):                 # a CondSchedule / Composition
        guided = ScheduledConditioning(guided)
        callback = guided.following(callback)
    try:
        grid = getattr(getattr(m, "denoiser", None), "sigmas", None)             # sgm models (SDXL)
        z = sample_denoiser(guided, m.alphas_cumprod.to(device=device, dtype=dtype),
                            m.parameterization, noise, settings, extra_args=extra_args, x0=x0, mask=mask,
                            strength=strength, start_step=start_step, callback=callback,
                            should_stop=should_stop, generator=generator,
                            discrete_sigmas=None if grid is None else grid.to(device=device, dtype=dtype))
    except SamplingInterrupted as stop:
        stop.x = stop.x.to(model_dtype)
        stop.pred_x0 = None if stop.pred_x0 is None else stop.pred_x0.to(model_dtype)
        raise
    return z.to(model_dtype)


def _latent_shape(x_T, shape) -> tuple:
    if x_T is None and shape is None:
        raise ValueError("Give the latent shape (B, C, H, W) as shape=, or the starting noise as x_T=.")
    if shape is not None:
        try:
            shape = tuple(operator.index(s) for s in shape)
        except TypeError:
            raise ValueError(f"shape must be (B, C, H, W) of whole numbers; got {shape!r}.") from None
    if x_T is not None:
        if shape is not None and tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={shape}; give one of them.")
        shape = tuple(x_T.shape)
    if len(shape) != 4 or min(shape) <= 0:
        raise ValueError(f"The latent must be (B, C, H, W) with positive sizes; got {shape}.")
    return shape


def _check_x0_mask(x0, mask, strength, start_step, shape, device, dtype):
    """Validate the img2img / inpainting inputs and move them to the sampling device and dtype."""
    wants_x0 = mask is not None or strength is not None or start_step is not None
    if x0 is None:
        if wants_x0:
            raise ValueError("mask, strength and start_step need the original latent as x0=.")
        return None, None
    if not wants_x0:
        raise ValueError("x0 was given without mask= (inpainting) or strength= / start_step= "
                         "(img2img), so it would be ignored; pass one of them.")
    b, c, h, w = shape
    if x0.ndim != 4 or tuple(x0.shape[1:]) != (c, h, w) or x0.shape[0] not in (1, b):
        raise ValueError(f"x0 must be a latent of shape ({b} or 1, {c}, {h}, {w}); got {tuple(x0.shape)}.")
    x0 = x0.to(device=device, dtype=dtype)
    if mask is not None:
        if (mask.ndim != 4 or mask.shape[0] not in (1, b) or mask.shape[1] not in (1, c)
                or tuple(mask.shape[2:]) != (h, w)):
            raise ValueError(f"mask must have shape ({b} or 1, 1 or {c}, {h}, {w}) at latent "
                             f"resolution; got {tuple(mask.shape)}.")
        mask = mask.to(device=device, dtype=dtype)
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError("mask values must lie in [0, 1]: 1 = repaint, 0 = keep x0.")
    return x0, mask


def _start_index(n: int, strength, start_step) -> int:
    """Index of the first of n steps to run: 0, or from img2img's strength / start_step."""
    if strength is not None and start_step is not None:
        raise ValueError("Give strength or start_step, not both.")
    if strength is not None:
        strength = check_strength(strength)
        return n - max(1, int(strength * n + 1e-6))
    if start_step is not None:
        if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step < n:
            raise ValueError(f"start_step must be a whole number in [0, {n - 1}]; got {start_step!r}.")
        return start_step
    return 0


def _stop_requested(should_stop) -> bool:
    if should_stop is None:
        return False
    if hasattr(should_stop, "is_set"):                                             # threading.Event
        return should_stop.is_set()
    return bool(should_stop())
