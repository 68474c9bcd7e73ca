"""Schedules and samplers as pure functions over a denoiser; `sample()` ties them to a model.

    from core.samplers import sample
    z = sample(m, cond, uncond, guidance_scale=7.5, steps=50, sampler="ddim", shape=(1, 4, 64, 64), seed=0)

Files: schedules.py (timestep lists, sigmas by schedule type: Karras, Exponential, SGM Uniform, Simple),
denoisers.py (CFG, eps/v -> eps or D(x, sigma), inpainting blend), timestep_samplers.py (DDIM, PLMS,
DDPM), sigma_samplers.py (Euler, Euler a, Heun, DPM++ 2M, LMS, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE,
DPM++ 2M SDE), unipc.py (UniPC), registry.py (the samplers by name), settings.py (the frozen,
checked SamplingSettings), noise.py (CPU-seeded noise), sampling.py (`sample_denoiser`, `sample`).
"""
from core.samplers.denoisers import CFGDenoiser, EpsDenoiser, KDenoiser
from core.samplers.registry import (DEFAULT_SCHEDULE_NAME, KARRAS_SCHEDULE_NAME, SAMPLER_DISPLAY_NAMES,
                                    SAMPLERS, SCHEDULE_DISPLAY_NAMES, SIGMA_SAMPLERS, TIMESTEP_SAMPLERS)
from core.samplers.sampling import SamplingInterrupted, sample, sample_denoiser, schedule_length
from core.samplers.schedules import ddim_timesteps, ddpm_timesteps, get_sigmas, karras_sigmas
from core.samplers.settings import SamplingSettings, check_strength, sampler_name, scheduler_name

__all__ = ["sample", "sample_denoiser", "schedule_length", "SamplingInterrupted", "SamplingSettings",
           "sampler_name", "scheduler_name", "check_strength", "SAMPLERS", "TIMESTEP_SAMPLERS", "SIGMA_SAMPLERS",
           "SAMPLER_DISPLAY_NAMES", "SCHEDULE_DISPLAY_NAMES", "KARRAS_SCHEDULE_NAME", "DEFAULT_SCHEDULE_NAME",
           "CFGDenoiser", "EpsDenoiser", "KDenoiser",
           "ddim_timesteps", "ddpm_timesteps", "get_sigmas", "karras_sigmas"]
