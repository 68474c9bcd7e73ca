"""Noise schedules of the reference DDPM (`register_schedule`), Ho et al. 2020 / Rombach et al. 2022.

Schedule math lives here, out of the model classes: `LatentDiffusion` only registers the buffers
this module computes. Everything is computed in float64 with NumPy, as the reference does, and
stored as float32 (FACTS.md section 6).
"""

import math

import numpy as np
import torch

# The buffer names the reference saves in every LatentDiffusion checkpoint, in its order.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)

# The x4 upscaler's noise-augmentation model (`low_scale_model`) saves only the first eight.
LOW_SCALE_BUFFERS = SCHEDULE_BUFFERS[:8]

BETA_SCHEDULES = ("linear", "cosine", "sqrt_linear", "sqrt")


def make_beta_schedule(schedule: str, timesteps: int, linear_start: float = 1e-4,
                       linear_end: float = 2e-2, cosine_s: float = 8e-3) -> np.ndarray:
    """Betas (T,) in float64.

    'linear' is the reference's: a linear ramp in sqrt(beta), squared (diffusers' "scaled_linear").
    'cosine' is Nichol & Dhariwal 2021 with offset s, betas clipped to 0.999.
    """
    if timesteps <= 0:
        raise ValueError(f"timesteps must be positive, got {timesteps}")
    if schedule == "linear":
        betas = np.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=np.float64) ** 2
    elif schedule == "cosine":
        steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps + cosine_s
        alphas = np.cos(steps / (1 + cosine_s) * math.pi / 2) ** 2
        alphas = alphas / alphas[0]
        betas = np.clip(1 - alphas[1:] / alphas[:-1], 0, 0.999)
    elif schedule == "sqrt_linear":
        betas = np.linspace(linear_start, linear_end, timesteps, dtype=np.float64)
    elif schedule == "sqrt":
        betas = np.linspace(linear_start, linear_end, timesteps, dtype=np.float64) ** 0.5
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}; valid: {', '.join(BETA_SCHEDULES)}")
    return betas


def schedule_buffers(betas: np.ndarray, v_posterior: float = 0.0) -> dict[str, torch.Tensor]:
    """The reference's schedule buffers from betas (T,), each a float32 tensor (T,)."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, posterior_variance)
    posterior_variance = ((1 - v_posterior) * betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
                          + v_posterior * betas)
    values = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
        "posterior_variance": posterior_variance,
        # clipped because the posterior variance is 0 at the start of the chain
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    }
    return {name: torch.tensor(values[name], dtype=torch.float32) for name in SCHEDULE_BUFFERS}


def discrete_sigmas(betas: np.ndarray) -> torch.Tensor:
    """sgm's `LegacyDDPMDiscretization` grid (the DiscreteDenoiser's `sigmas` buffer), ascending in t:
    sigma_t = sqrt((1 - alphas_cumprod) / alphas_cumprod), the ratio in float64, rounded to float32,
    then the square root in float32, in the reference's order of operations.  # (T,)"""
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64), axis=0)
    return torch.tensor((1 - alphas_cumprod) / alphas_cumprod, dtype=torch.float32) ** 0.5
