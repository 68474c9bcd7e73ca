"""Noise schedules: the discrete timestep lists and the continuous sigmas samplers walk.

Two views of the same DDPM schedule `alphas_cumprod` (float32 [T], FACTS.md section 6):
- timestep space (DDPM, DDIM, PLMS): x_t = sqrt(alphas_cumprod[t]) x_0 + sqrt(1 - alphas_cumprod[t]) eps;
- sigma space (k-diffusion, Karras et al. 2022): x = x_0 + sigma eps, where
  sigma(t) = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]) and x_sigma = x_t / sqrt(alphas_cumprod[t]).
Every function here is pure: tensors in, tensors out, on the device and dtype of its input.
"""
import math

import torch


# ---------------------------------------------------------------------------------------------
# Timestep space (CompVis `make_ddim_timesteps`, 'uniform' discretisation; FACTS.md section 7)
# ---------------------------------------------------------------------------------------------

def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The reference DDIM/PLMS step list, in sampling order (descending).

    c = T // S; the steps are range(0, T, c) + 1. That is more than S steps when S does not divide
    T (S = 7 -> 8 steps, S = 3 -> 4) and the UNet sees the shifted values (S = 50: 981, ..., 21, 1).
    When T - 1 is a multiple of c (S = 3, 9, 27, ...) the shift reaches t = T, which the reference
    indexes out of range (IndexError); like AUTOMATIC1111 we clip it to T - 1. With c = 1 every
    step would shift, so S is capped at T // 2.
    """
    if not 1 <= steps <= num_timesteps // 2:
        raise ValueError(f"DDIM/PLMS take 1 to {num_timesteps // 2} steps for a {num_timesteps}-step "
                         f"model (the reference 'uniform' spacing shifts every step by +1); got "
                         f"{steps}. Use sampler='ddpm' to walk the full schedule.")
    c = num_timesteps // steps
    return [min(t + 1, num_timesteps - 1) for t in range(0, num_timesteps, c)][::-1]


def ddpm_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Strided DDPM step list, descending: range(0, T, T // S), WITHOUT DDIM's +1 shift.

    It ends at t = 0, whose alphas_cumprod_prev is 1, so the last ancestral step returns pred_x0.
    steps == T is the model's full schedule T-1, ..., 0 (the reference `p_sample_loop`).
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"DDPM takes 1 to {num_timesteps} steps for this model; got {steps}.")
    return list(range(0, num_timesteps, num_timesteps // steps))[::-1]


# ---------------------------------------------------------------------------------------------
# Sigma space (k-diffusion `DiscreteSchedule` semantics)
# ---------------------------------------------------------------------------------------------

def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]), ascending in t.  # (T,)"""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Continuous t in [0, T-1] -> sigma, interpolating log-sigma linearly between the two
    neighbouring integer timesteps (k-diffusion's DiscreteSchedule.t_to_sigma)."""
    t = t.to(log_sigmas.dtype)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """sigma -> the integer timestep whose log-sigma is nearest (k-diffusion's `quantize=True`).

    The model interface takes a LongTensor t, so the UNet always sees a timestep it was trained on;
    the input scaling c_in still uses the exact sigma. On the model's own sigmas this is exact.
    """
    log_sigma = sigma.to(log_sigmas.dtype).log().reshape(-1)                       # (B,)
    # log_sigmas ascends with t: binary search, then the nearer of the two neighbours
    high = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
    low = high - 1
    nearer_low = (log_sigma - log_sigmas[low]).abs() <= (log_sigmas[high] - log_sigma).abs()
    return torch.where(nearer_low, low, high).reshape(sigma.shape)

def default_sigmas(alphas_cumprod: torch.Tensor, steps: int) -> torch.Tensor:
    """k-diffusion's `get_sigmas(n)`: n values of t evenly spaced from T-1 down to 0, mapped to
    sigma by log-sigma interpolation, then a final 0.  # (steps + 1,)"""
    log_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).log()
    t = torch.linspace(len(log_sigmas) - 1, 0, steps, device=log_sigmas.device, dtype=log_sigmas.dtype)
    return _append_zero(t_to_sigma(t, log_sigmas))


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  device=None, dtype=torch.float32) -> torch.Tensor:
    """Karras et al. 2022, eq. (5): sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho,
    then a final 0.  # (steps + 1,)"""
    ramp = torch.linspace(0, 1, steps, device=device, dtype=dtype)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float, device=None,
                       dtype=torch.float32) -> torch.Tensor:
    """Evenly spaced in log sigma from sigma_max to sigma_min (k-diffusion's
    get_sigmas_exponential), then a final 0.  # (steps + 1,)"""
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, device=device, dtype=dtype)
    return _append_zero(log_sigmas.exp())


def sgm_uniform_sigmas(alphas_cumprod: torch.Tensor, steps: int) -> torch.Tensor:
    """A1111's "SGM Uniform" (Stability's sgm discretisation): t evenly spaced from T-1 towards 0
    with the end point left out (steps + 1 points, the last dropped), then a final 0.  # (steps + 1,)"""
    log_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).log()
    t = torch.linspace(len(log_sigmas) - 1, 0, steps + 1, device=log_sigmas.device, dtype=log_sigmas.dtype)[:-1]
    return _append_zero(t_to_sigma(t, log_sigmas))


def simple_sigmas(alphas_cumprod: torch.Tensor, steps: int) -> torch.Tensor:
    """A1111's (and ComfyUI's) "Simple": every (T / steps)-th of the model's own sigmas, from the
    largest down, then a final 0.  # (steps + 1,)"""
    sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)
    stride = len(sigmas) / steps
    return _append_zero(sigmas[[len(sigmas) - 1 - int(i * stride) for i in range(steps)]])


def get_sigmas(alphas_cumprod: torch.Tensor, steps: int, karras: bool = False,
               scheduler: str = "automatic") -> torch.Tensor:
    """The sigma list for `steps` steps of a sigma-space sampler, by schedule type (A1111's names
    in core.samplers.registry.SCHEDULE_DISPLAY_NAMES): "automatic" and "normal", the default
    discretisation (uniform in t); "karras" (rho 7) and "exponential", between the model's own
    sigma_min and sigma_max, as AUTOMATIC1111 does; "sgm_uniform"; "simple". `karras=True` is
    scheduler="karras". Descending, ending in 0.  # (steps + 1,)"""
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}.")
    if karras:
        scheduler = "karras"
    if scheduler in ("automatic", "normal"):
        return default_sigmas(alphas_cumprod, steps)
    if scheduler == "sgm_uniform":
        return sgm_uniform_sigmas(alphas_cumprod, steps)
    if scheduler == "simple":
        return simple_sigmas(alphas_cumprod, steps)
    sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)
    sigma_min, sigma_max = sigmas.min().item(), sigmas.max().item()
    if scheduler == "karras":
        return karras_sigmas(steps, sigma_min, sigma_max, device=sigmas.device, dtype=sigmas.dtype)
    if scheduler == "exponential":
        return exponential_sigmas(steps, sigma_min, sigma_max, device=sigmas.device, dtype=sigmas.dtype)
    raise ValueError(f"unknown schedule type {scheduler!r}; choose one of automatic, karras, exponential, "
                     "sgm_uniform, simple, normal.")


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])
