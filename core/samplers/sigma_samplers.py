"""Samplers that walk a list of noise levels sigma (k-diffusion semantics, Karras et al. 2022).

Each is `(denoiser, x, sigmas, *, extra_args, callback, generator) -> x` where
- denoiser(x, sigma, **extra_args) -> D(x, sigma), the estimate of x_0 (a KDenoiser), sigma (B,);
- x starts at noise scaled to sigmas[0] (x = x_0 + sigma eps; x_0 in latent units);
- sigmas: descending noise levels, usually ending in 0 (`get_sigmas`);
- callback(i, total, x, pred_x0) after step i (0-based) of `total`, pred_x0 = D at step i;
- generator: the CPU torch.Generator for ancestral noise.
The probability-flow ODE they solve is dx/dsigma = (x - D(x, sigma)) / sigma (Karras eq. 3 with
sigma(t) = t).
"""
import torch

from core.samplers.noise import randn_like


def to_d(x, sigma, denoised):
    """The ODE derivative dx/dsigma = (x - D) / sigma, for a scalar sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from, sigma_to, eta=1.0):
    """(sigma_down, sigma_up): a deterministic step to sigma_down followed by fresh noise of std
    sigma_up lands on sigma_to with the marginal variance of the forward process (k-diffusion's
    get_ancestral_step); eta scales the injected noise (0 = the Euler ODE step)."""
    if eta == 0:
        return sigma_to, sigma_to * 0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None):
    """Euler steps on the probability-flow ODE, Karras et al. 2022 (Algorithm 2 without churn)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)              # (B, C, H, W)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i, len(sigmas) - 1, x, denoised)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None,
                           eta=1.0):
    """Ancestral sampling with Euler steps ("Euler a", k-diffusion): an Euler step down to
    sigma_down, then fresh noise of std sigma_up (none on the step to sigma = 0)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + randn_like(x, generator) * sigma_up
        if callback is not None:
            callback(i, len(sigmas) - 1, x, denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None):
    """Heun's second-order method, Karras et al. 2022 (Algorithm 1): an Euler step, then the
    average of the slopes at both ends; plain Euler on the final step to sigma = 0.
    Two network calls per step (one on the last)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt                                                  # Euler
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], denoiser(x_2, sigmas[i + 1] * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt                                      # trapezoid
        if callback is not None:
            callback(i, len(sigmas) - 1, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None):
    """DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models", Algorithm 2), k-diffusion's sample_dpmpp_2m. In lambda = -log
    sigma, with h = lambda_next - lambda: x_next = (sigma_next / sigma) x - (e^-h - 1) D', where D'
    extrapolates the last two denoised values, D' = (1 + 1/(2r)) D_i - 1/(2r) D_(i-1),
    r = h_last / h; first step and the final step to sigma = 0 are first order."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        if sigmas[i + 1] == 0:
            x = denoised                                                    # the limit h -> inf
        else:
            lam, lam_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = lam_next - lam
            d_prime = denoised
            if old_denoised is not None:
                r = (lam - (-sigmas[i - 1].log())) / h
                d_prime = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * d_prime
        old_denoised = denoised
        if callback is not None:
            callback(i, len(sigmas) - 1, x, denoised)
    return x
