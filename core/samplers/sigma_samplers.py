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
import numpy as np
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


@torch.no_grad()
def sample_lms(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, order=4):
    """Linear multistep ("LMS", k-diffusion's sample_lms): Adams-Bashforth on the ODE in sigma,
    with coefficients from the Lagrange polynomials through the last `order` sigmas, integrated
    exactly (Gauss-Legendre; k-diffusion integrates them numerically with scipy's quad)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sig = [float(s) for s in sigmas]
    ds = []                                                                 # newest last
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
        coeffs = [_lms_coefficient(sig, i, j, len(ds)) for j in range(len(ds))]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
        if callback is not None:
            callback(i, len(sigmas) - 1, x, denoised)
    return x


def _lms_coefficient(sig: list[float], i: int, j: int, order: int) -> float:
    """The integral over [sig[i], sig[i+1]] of the Lagrange basis polynomial that is 1 at sig[i-j]
    and 0 at the other nodes sig[i], ..., sig[i-order+1] (degree < 4: 2-point Gauss is exact)."""
    nodes, weights = np.polynomial.legendre.leggauss(2)
    a, b = sig[i], sig[i + 1]
    total = 0.0
    for node, weight in zip(nodes, weights):
        tau = (b - a) / 2 * node + (a + b) / 2
        basis = 1.0
        for k in range(order):
            if k != j:
                basis *= (tau - sig[i - k]) / (sig[i - j] - sig[i - k])
        total += weight * basis
    return total * (b - a) / 2


@torch.no_grad()
def sample_dpm_2(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None):
    """DPM-Solver-2 in Karras et al.'s form ("DPM2", k-diffusion's sample_dpm_2): the slope at the
    log-midpoint sigma_mid = sqrt(sigma_i sigma_(i+1)), reached by an Euler half step, carries x
    the whole step; Euler on the final step to 0. Two network calls per step."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            x = _midpoint_step(denoiser, x, d, sigmas[i], sigmas[i + 1], s_in, extra_args)
        if callback is not None:
            callback(i, len(sigmas) - 1, x, denoised)
    return x


def _midpoint_step(denoiser, x, d, sigma, sigma_to, s_in, extra_args):
    """x carried from sigma to sigma_to with the slope at their log-midpoint."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, denoiser(x_2, sigma_mid * s_in, **extra_args))
    return x + d_2 * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2_ancestral(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, eta=1.0):
    """Ancestral DPM2 ("DPM2 a", k-diffusion's sample_dpm_2_ancestral): a DPM2 step down to
    sigma_down, then fresh noise of std sigma_up (no noise when sigma_down is 0)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = _midpoint_step(denoiser, x, d, sigmas[i], sigma_down, s_in, extra_args)
            x = x + randn_like(x, generator) * sigma_up
        if callback is not None:
            callback(i, len(sigmas) - 1, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, eta=1.0):
    """Ancestral DPM-Solver++(2S) ("DPM++ 2S a", Lu et al. 2022, k-diffusion's
    sample_dpmpp_2s_ancestral): a single-step second-order DPM-Solver++ step (its intermediate
    point at half the step in lambda = -log sigma) down to sigma_down, then noise of std sigma_up."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            h = sigmas[i].log() - sigma_down.log()                          # lambda_next - lambda
            sigma_s = (sigmas[i].log() - h / 2).exp()                       # the midpoint in lambda
            x_2 = (sigma_s / sigmas[i]) * x - torch.expm1(-h / 2) * denoised
            denoised_2 = denoiser(x_2, sigma_s * s_in, **extra_args)
            x = (sigma_down / sigmas[i]) * x - torch.expm1(-h) * denoised_2
        if sigmas[i + 1] > 0:
            x = x + randn_like(x, generator) * sigma_up
        if callback is not None:
            callback(i, len(sigmas) - 1, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_sde(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, eta=1.0, r=0.5):
    """DPM-Solver++ SDE ("DPM++ SDE", k-diffusion's sample_dpmpp_sde): per step, an ancestral
    first-order DPM-Solver++ step to the intermediate lambda_s = lambda + r h, then one from the
    start to lambda_next with the denoised values mixed (1 - 1/(2r)) D + 1/(2r) D_s; two network
    calls per step. Noise: k-diffusion draws both sub-steps' noise from one Brownian motion (a
    torchsde Brownian tree); here the same Brownian motion is drawn per step from the image's
    generator (its increment over the step, and the bridge to the intermediate sigma), so the
    statistics are k-diffusion's but not its exact numbers."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            lam, lam_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = lam_next - lam
            sigma_s = (-(lam + r * h)).exp()
            noise_s, noise_next = _brownian_pair(x, generator, sigmas[i], sigma_s, sigmas[i + 1])
            # Step 1: to sigma_s
            sd, su = ancestral_step(sigmas[i], sigma_s, eta)
            x_2 = (sd / sigmas[i]) * x - torch.expm1(sd.log() - sigmas[i].log()) * denoised + noise_s * su
            denoised_2 = denoiser(x_2, sigma_s * s_in, **extra_args)
            # Step 2: to sigma_next, with the mixed denoised value
            sd, su = ancestral_step(sigmas[i], sigmas[i + 1], eta)
            mixed = (1 - 1 / (2 * r)) * denoised + 1 / (2 * r) * denoised_2
            x = (sd / sigmas[i]) * x - torch.expm1(sd.log() - sigmas[i].log()) * mixed + noise_next * su
        if callback is not None:
            callback(i, len(sigmas) - 1, x, denoised)
    return x


def _brownian_pair(x, generator, sigma, sigma_s, sigma_next):
    """Normalised increments (W(sigma_s) - W(sigma)) / sqrt|sigma_s - sigma| and (W(sigma_next) -
    W(sigma)) / sqrt|sigma_next - sigma| of ONE Brownian motion W, sigma > sigma_s > sigma_next:
    the whole increment, then the Brownian bridge to the intermediate point."""
    z_next, z_bridge = randn_like(x, generator), randn_like(x, generator)
    frac = (sigma - sigma_s) / (sigma - sigma_next)                         # in (0, 1)
    return frac.sqrt() * z_next + (1 - frac).sqrt() * z_bridge, z_next


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, eta=1.0):
    """DPM-Solver++(2M) SDE ("DPM++ 2M SDE", k-diffusion's sample_dpmpp_2m_sde, midpoint
    solver): x_next = (sigma_next / sigma) e^(-eta h) x + (1 - e^(-h - eta h)) D, a second-order
    correction 0.5 (1 - e^(-h - eta h)) (D - D_prev) / r (r = h_prev / h), then noise of std
    sigma_next sqrt(1 - e^(-2 eta h)); the final step to 0 returns D. One call per step; the noise
    of each step is an independent N(0, 1) (k-diffusion's Brownian increments over disjoint steps
    have the same law)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x - torch.expm1(-h - eta_h) * denoised
            if old_denoised is not None:
                x = x - 0.5 * torch.expm1(-h - eta_h) * (h / h_last) * (denoised - old_denoised)
            if eta:
                x = x + randn_like(x, generator) * sigmas[i + 1] * (-torch.expm1(-2 * eta_h)).sqrt()
            h_last = h
        old_denoised = denoised
        if callback is not None:
            callback(i, len(sigmas) - 1, x, denoised)
    return x
