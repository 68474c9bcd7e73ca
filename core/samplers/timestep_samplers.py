"""Samplers that walk the model's discrete timesteps: DDIM, PLMS, DDPM.

Each is `(denoiser, x, timesteps, *, extra_args, callback, generator) -> x` where
- denoiser(x, t, **extra_args) -> eps, t a LongTensor (B,), with `denoiser.alphas_cumprod` (T,)
  (an EpsDenoiser: v-models are already converted to eps at the t the UNet saw);
- timesteps: the integer timesteps in sampling order (descending), e.g. `ddim_timesteps(1000, 50)`;
- callback(i, total, x, pred_x0) after step i (0-based) of `total`;
- generator: the CPU torch.Generator for ancestral noise.
Latent pred_x0 is never clipped (the reference DDIM does not clip; its DDPM loop clips to [-1, 1],
which is wrong for latents and is not copied).
"""
import torch

from core.samplers.noise import randn_like


def _alphas(alphas_cumprod, timesteps, i, last_prev):
    """(a_t, a_prev): alphas_cumprod at step i and at the next step; `last_prev` after the last."""
    a_t = alphas_cumprod[timesteps[i]]
    a_prev = alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else last_prev
    return a_t, a_prev


def _t(x, t):
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)  # (B,)


@torch.no_grad()
def sample_ddim(denoiser, x, timesteps, *, extra_args=None, callback=None, generator=None, eta=0.0):
    """DDIM, Song et al. 2021 ("Denoising Diffusion Implicit Models", eq. 12), with the reference
    CompVis DDIMSampler semantics (FACTS.md section 7): after the final step a_prev is
    alphas_cumprod[0], not 1; sigma_t = eta sqrt((1 - a_prev)/(1 - a_t) (1 - a_t/a_prev));
    eta = 0 is deterministic, eta = 1 is DDPM-like."""
    extra_args = {} if extra_args is None else extra_args
    alphas_cumprod = denoiser.alphas_cumprod
    for i, t in enumerate(timesteps):
        a_t, a_prev = _alphas(alphas_cumprod, timesteps, i, last_prev=alphas_cumprod[0])
        eps = denoiser(x, _t(x, t), **extra_args)                              # (B, C, H, W)
        pred_x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma_t = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        # x_prev = sqrt(a_prev) pred_x0 + "direction pointing to x_t" + sigma_t z
        x = a_prev.sqrt() * pred_x0 + (1 - a_prev - sigma_t ** 2).sqrt() * eps
        if eta > 0:
            x = x + sigma_t * randn_like(x, generator)
        if callback is not None:
            callback(i, len(timesteps), x, pred_x0)
    return x


@torch.no_grad()
def sample_plms(denoiser, x, timesteps, *, extra_args=None, callback=None, generator=None):
    """PLMS, Liu et al. 2022 ("Pseudo Numerical Methods for Diffusion Models on Manifolds"), as
    the reference CompVis PLMSSampler (FACTS.md section 8): DDIM (eta 0) steps whose eps is a
    linear multistep combination. Step 1 takes two evaluations (eps' = (eps_t + eps(x', t_next))/2,
    a pseudo improved-Euler step); then Adams-Bashforth 2/3/4 on the stored RAW eps_t (history 3).
    S steps cost S + 1 network calls. Beyond the reference: because the denoiser already returns
    eps, this also works for v-models and dict conditionings (the reference PLMS does neither)."""
    extra_args = {} if extra_args is None else extra_args
    alphas_cumprod = denoiser.alphas_cumprod

    def ddim_step(x, eps, i):
        a_t, a_prev = _alphas(alphas_cumprod, timesteps, i, last_prev=alphas_cumprod[0])
        pred_x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * eps, pred_x0

    old_eps = []                                                               # newest last
    for i, t in enumerate(timesteps):
        eps = denoiser(x, _t(x, t), **extra_args)
        if len(old_eps) == 0:
            x_next, _ = ddim_step(x, eps, i)
            t_next = timesteps[min(i + 1, len(timesteps) - 1)]                # last step: its own t
            eps_prime = (eps + denoiser(x_next, _t(x, t_next), **extra_args)) / 2
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, pred_x0 = ddim_step(x, eps_prime, i)
        old_eps = (old_eps + [eps])[-3:]
        if callback is not None:
            callback(i, len(timesteps), x, pred_x0)
    return x


@torch.no_grad()
def sample_ddpm(denoiser, x, timesteps, *, extra_args=None, callback=None, generator=None):
    """Ancestral DDPM sampling, Ho et al. 2020 (Algorithm 2), written with the posterior
    q(x_prev | x_t, pred_x0) (eq. 6-7): mean = sqrt(a_prev) beta / (1 - a_t) pred_x0
    + sqrt(1 - beta) (1 - a_prev) / (1 - a_t) x_t, variance = beta (1 - a_prev) / (1 - a_t), with
    beta = 1 - a_t / a_prev. On the full schedule (T-1, ..., 0) that is the reference p_sample;
    on a strided list it is the same posterior between the visited timesteps. After the last step
    a_prev = 1 (alphas_cumprod_prev[0]) and no noise is added, so the result is pred_x0."""
    extra_args = {} if extra_args is None else extra_args
    alphas_cumprod = denoiser.alphas_cumprod
    for i, t in enumerate(timesteps):
        a_t, a_prev = _alphas(alphas_cumprod, timesteps, i, last_prev=alphas_cumprod.new_ones(()))
        eps = denoiser(x, _t(x, t), **extra_args)
        pred_x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        beta = 1 - a_t / a_prev
        x = (a_prev.sqrt() * beta / (1 - a_t)) * pred_x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x
        if i + 1 < len(timesteps):
            x = x + (beta * (1 - a_prev) / (1 - a_t)).sqrt() * randn_like(x, generator)
        if callback is not None:
            callback(i, len(timesteps), x, pred_x0)
    return x
