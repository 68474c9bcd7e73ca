"""The one latent-level core every pipeline samples through.

    z = denoise(m, cond, uncond, settings, shape, generators, x0=..., mask=..., wrap=...)

It takes resolved, frozen settings and returns latents: it never decodes, never records
parameters and never knows the tab. The denoiser is composed here, in one visible place
(innermost first):

    network(m)                 x, t, cond -> eps or v        (m.apply_model, model dtype)
    wrap(...)                  e.g. tiled(): the same, tile by tile with blended overlaps
    CFGDenoiser                classifier-free guidance on the raw output (AND: composable)
    ScheduledConditioning      only for A1111 prompt editing / alternation / AND: cond and uncond
                               of the current step, which the sampler's callback advances
    core.samplers.sample_denoiser: eps/v -> eps at t or D(x, sigma); inpainting blend; the sampler

`denoise_batches` runs n images as batches of `batch_size` (one UNet batch each), image i from its
own seed's CPU generator, so an image is reproducible alone from its recorded seed.
"""
import torch

from core.pipelines.conditioning import with_steps
from core.pipelines.offload import use_part
from core.pipelines.progress import Progress
from core.pipelines.refiner import Handoff
from core.samplers import CFGDenoiser, SamplingInterrupted, SamplingSettings, sample_denoiser, schedule_length
from core.samplers.noise import cpu_generator, randn
from core.samplers.scheduled import ScheduledConditioning, is_scheduled


def network(m, dtype):
    """m.apply_model as a raw denoiser that takes and returns `dtype` (the sampler's arithmetic)."""
    model_dtype = m.dtype

    def model_fn(x, t, cond):
        return m.apply_model(x.to(model_dtype), t, cond).to(dtype)
    return model_fn


@torch.no_grad()
def denoise(m, cond, uncond, settings: SamplingSettings, shape: tuple, generators: list, *, x0=None,
            mask=None, strength=None, wrap=None, callback=None, should_stop=None, refiner=None) -> torch.Tensor:
    """Latents (B, C, h, w) in the model's dtype for B = len(generators) images.

    cond / uncond: as core.samplers.sample (uncond None or guidance 1: one pass per step), or
        with A1111's prompt syntax (core.pipelines.conditioning.PromptConditioning, encoded here
        for settings.steps; a schedule is followed step by step).
    generators: one CPU generator per image: its x_T and ancestral noise.
    x0, mask, strength: img2img (x0 + strength) and inpainting by blending (x0 + mask).
    wrap(model_fn) -> model_fn: a wrapper around the network (tiling).
    callback(i, total, x, pred_x0) after each step; should_stop: an Event (SamplingInterrupted).
    refiner: a core.pipelines.refiner.RefinerStage: the refiner model continues the trajectory from
        its switch step with its own conditioning (A1111's refiner).
    """
    param = next(m.parameters())
    dtype = torch.promote_types(param.dtype, torch.float32)                    # sampler arithmetic
    noise = randn(shape, generators, param.device, dtype)                      # (B, C, h, w)
    guided, cond, uncond, callback = _guided(m, dtype, cond, uncond, settings.steps, wrap, callback)
    extra_args = {"cond": cond, "uncond": uncond, "cond_scale": settings.guidance_scale}
    use_part(m, "unet")                                                        # --medvram: text and VAE off
    total = schedule_length(settings, len(m.alphas_cumprod))
    if refiner is not None and refiner.switches(total):                        # A1111's refiner (refiner.py)
        second, r_cond, r_uncond, callback = _guided(refiner.model, dtype, refiner.cond, refiner.uncond,
                                                     settings.steps, wrap, callback)
        use_part(refiner.model, "unet")
        guided = Handoff(guided, second, {"cond": r_cond, "uncond": r_uncond,
                                          "cond_scale": settings.guidance_scale}, refiner.switch_step(total))
        callback = guided.following(callback)
    grid = getattr(getattr(m, "denoiser", None), "sigmas", None)                # SDXL: sgm's discrete sigmas
    z = sample_denoiser(guided, m.alphas_cumprod.to(param.device, dtype), m.parameterization,
                        noise, settings, extra_args=extra_args, x0=x0, mask=mask, strength=strength,
                        callback=callback, should_stop=should_stop, generator=generators,
                        discrete_sigmas=None if grid is None else grid.to(param.device, dtype))
    return z.to(param.dtype)


def _guided(m, dtype, cond, uncond, steps: int, wrap, callback):
    """(guided, cond, uncond, callback): m's network, wrapped, under classifier-free guidance, and
    its conditioning encoded for `steps`; a prompt schedule is followed through the callback."""
    model_fn = network(m, dtype)
    if wrap is not None:
        model_fn = wrap(model_fn)
    cond, uncond = with_steps(cond, steps), with_steps(uncond, steps)          # prompt syntax
    guided = CFGDenoiser(model_fn)
    if is_scheduled(cond) or is_scheduled(uncond):
        guided = ScheduledConditioning(guided)
        callback = guided.following(callback)
    return guided, cond, uncond, callback


def batches(seeds: tuple, batch_size: int) -> list[tuple]:
    """The seeds in consecutive batches of at most batch_size."""
    return [tuple(seeds[i:i + batch_size]) for i in range(0, len(seeds), batch_size)]


@torch.no_grad()
def denoise_batches(m, cond, uncond, settings: SamplingSettings, latent_shape: tuple, seeds: tuple,
                    batch_size: int = 1, *, x0=None, mask=None, strength=None, wrap=None, callback=None,
                    should_stop=None, refiner=None) -> torch.Tensor:
    """Latents (n, C, h, w) for n = len(seeds) images of latent_shape (C, h, w), batch by batch.

    x0 / mask: (1, ...) shared by every image, or (n, ...) one per image. callback(Progress) after
    each step; refiner as `denoise`. A stop raises SamplingInterrupted with `.latents` = the finished images' latents
    (n_done, C, h, w) and `.pred_x0` the interrupted batch's estimate.
    """
    finished = []
    for first, group in zip(range(0, len(seeds), batch_size), batches(seeds, batch_size)):
        rows = slice(first, first + len(group))
        try:
            z = denoise(m, cond, uncond, settings, (len(group), *latent_shape), [cpu_generator(s) for s in group],
                        x0=_rows(x0, rows), mask=_rows(mask, rows), strength=strength, wrap=wrap,
                        callback=_step_reporter(m, callback, first, len(seeds)), should_stop=should_stop,
                        refiner=refiner)
        except SamplingInterrupted as stop:
            stop.latents = torch.cat(finished) if finished else None
            raise
        finished.append(z)
    return torch.cat(finished)


def _rows(t, rows: slice):
    """A per-image tensor's rows for this batch; a (1, ...) tensor is shared by all."""
    if t is None or t.shape[0] == 1:
        return t
    return t[rows]


def _step_reporter(m, callback, first: int, images: int):
    """core.samplers' callback(i, total, x, pred_x0) -> a Progress report (None if no callback)."""
    if callback is None:
        return None

    def report(i, total, x, pred_x0):
        callback(Progress("sample", i + 1, total, first, images, latent=pred_x0, model=m))
    return report
