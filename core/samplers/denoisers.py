"""Denoiser wrappers: each turns one callable into another, so samplers never see a UNet or a prompt.

The chain `sample()` builds (innermost first):
    model_fn(x, t, cond) -> raw network output (eps or v)           # m.apply_model
    CFGDenoiser          -> raw output with classifier-free guidance  # still eps or v
    EpsDenoiser          -> eps at integer t        (DDIM, PLMS, DDPM walk timesteps)
    KDenoiser            -> D(x, sigma) = pred_x0   (Euler, Heun, DPM++, UniPC walk sigmas)
    Inpaint*Blend        -> the same, with the known region pinned to x0 (optional)
Guidance is applied to the RAW output, before any v -> eps conversion (FACTS.md section 7, trap 5).
"""
import torch

from core.samplers.scheduled import Composition
from core.samplers.schedules import sigma_to_t, sigmas_from_alphas_cumprod


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with `ndim` dimensions, to broadcast a per-sample scalar over x."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance (Ho & Salimans 2022)
# ---------------------------------------------------------------------------------------------

class CFGDenoiser:
    """model_fn(x, t, cond) -> guided(x, t, cond=, uncond=, cond_scale=), on the raw output.

    out = out_uncond + cond_scale * (out_cond - out_uncond), from ONE batched forward of
    [uncond, cond] (as the reference DDIM sampler). Dict conditionings are concatenated key by key;
    an `uncond` given as a tensor (or list) only replaces `c_crossattn`, so `c_concat` / `c_adm`
    (inpainting mask + masked image, upscaler low-res image and noise level) are the same for both
    halves. With no uncond or cond_scale == 1 a single pass runs. When cond and uncond differ in
    context length (a prompt of 2 chunks of 75 tokens, a negative prompt of 1), they run as two
    passes, as AUTOMATIC1111 does by default (its "pad conds" option off).

    `cond` may be a Composition (AND, core/samplers/scheduled.py): composable diffusion, A1111's
    combine_denoised: out_uncond + sum_i (out_i - out_uncond) * (w_i * cond_scale), in one pass
    of [uncond, cond_1, ..., cond_n] when their contexts have one length.
    """

    def __init__(self, model_fn):
        self.inner = model_fn

    def __call__(self, x, t, cond=None, uncond=None, cond_scale=1.0):
        batch = x.shape[0]
        if isinstance(cond, Composition):
            return self._composed(x, t, cond, uncond, cond_scale)
        if uncond is None or cond_scale == 1.0:
            return self.inner(x, t, _match_batch(cond, batch))
        if cond is None:
            raise ValueError("An unconditional embedding (uncond) was given without a condition; "
                             "pass cond as well, or drop uncond for an unconditional model.")
        out_uncond, out_cond = self._outputs(x, t, [_match_batch(_full_uncond(uncond, cond), batch),
                                                    _match_batch(cond, batch)])
        return out_uncond + cond_scale * (out_cond - out_uncond)

    def _composed(self, x, t, composition, uncond, cond_scale):
        if uncond is None:
            raise ValueError("AND (composable diffusion) guides each sub-prompt against the unconditional "
                             "output, and this model has none; write the prompt without AND.")
        conds = [_match_batch(c, x.shape[0]) for _, c in composition.parts]
        outs = self._outputs(x, t, [_match_batch(_full_uncond(uncond, conds[0]), x.shape[0])] + conds)
        out = outs[0].clone()
        for (weight, _), out_i in zip(composition.parts, outs[1:]):
            out += (out_i - outs[0]) * (weight * cond_scale)
        return out

    def _outputs(self, x, t, conds: list) -> list:
        """The network's output for each conditioning: one batched pass when their contexts have
        one shape, else one pass each."""
        if any(_leaf_shapes(c) != _leaf_shapes(conds[0]) for c in conds[1:]):
            return [self.inner(x, t, c) for c in conds]
        k = len(conds)
        return list(self.inner(torch.cat([x] * k), torch.cat([t] * k), _concat_conds(*conds)).chunk(k))


def _leaf_shapes(c) -> list:
    """The per-sample shapes of the tensors in a conditioning (tensor, dict or list)."""
    if isinstance(c, dict):
        return [s for k in sorted(c) for s in _leaf_shapes(c[k])]
    if isinstance(c, (list, tuple)):
        return [s for v in c for s in _leaf_shapes(v)]
    return [tuple(c.shape[1:])] if isinstance(c, torch.Tensor) else [None]


def _full_uncond(uncond, cond):
    """The unconditional half in the layout of `cond`: a tensor/list uncond replaces c_crossattn
    only; a dict uncond overrides the keys it names (the reference passes a full dict)."""
    if not isinstance(cond, dict):
        if isinstance(uncond, dict):
            raise ValueError("uncond is a dict but cond is a tensor; give both in the same layout.")
        return uncond
    if isinstance(uncond, dict):
        unknown = set(uncond) - set(cond)
        if unknown:
            raise ValueError(f"uncond has keys {sorted(unknown)} that cond lacks ({sorted(cond)}).")
        return {**cond, **uncond}
    if "c_crossattn" not in cond:
        raise ValueError("A tensor uncond replaces cond['c_crossattn'], but cond has no such key.")
    return {**cond, "c_crossattn": list(uncond) if isinstance(uncond, (list, tuple)) else [uncond]}


def _concat_conds(*conds):
    """The conditionings along the batch ([uncond, cond, ...]), key by key for dicts and item by
    item for lists."""
    first = conds[0]
    if isinstance(first, dict):
        return {k: _concat_conds(*(c[k] for c in conds)) for k in first}
    if isinstance(first, (list, tuple)):
        if any(len(c) != len(first) for c in conds):
            raise ValueError(f"cond and uncond lists differ in length ({[len(c) for c in conds]}).")
        return [_concat_conds(*items) for items in zip(*conds)]
    if first is None:
        return None
    return torch.cat(list(conds))


def _match_batch(c, batch: int):
    """Expand batch-1 conditioning tensors to the latent batch; any other mismatch is an error."""
    if isinstance(c, dict):
        return {k: _match_batch(v, batch) for k, v in c.items()}
    if isinstance(c, (list, tuple)):
        return [_match_batch(v, batch) for v in c]
    if not isinstance(c, torch.Tensor) or c.shape[0] == batch:
        return c
    if c.shape[0] == 1:
        return c.expand(batch, *c.shape[1:])
    raise ValueError(f"A conditioning tensor has batch {c.shape[0]} but the latent has batch "
                     f"{batch}; give one conditioning per image, or a single one for all.")


# ---------------------------------------------------------------------------------------------
# Timestep space: eps at integer t
# ---------------------------------------------------------------------------------------------

class EpsDenoiser:
    """Raw network output at integer t -> eps, for the timestep samplers (DDIM, PLMS, DDPM).

    A v-model's output is converted with alphas_cumprod at the same t the UNet saw:
    eps = sqrt(a_t) v + sqrt(1 - a_t) x (SD2 `predict_eps_from_z_and_v`). The samplers read
    `self.alphas_cumprod`.
    """

    def __init__(self, model_fn, alphas_cumprod: torch.Tensor, parameterization: str):
        if parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization must be 'eps' or 'v'; got {parameterization!r}.")
        self.inner = model_fn
        self.alphas_cumprod = alphas_cumprod                        # (T,)
        self.parameterization = parameterization

    def __call__(self, x, t, **extra_args):
        out = self.inner(x, t, **extra_args)                        # (B, C, H, W)
        if self.parameterization == "eps":
            return out
        a_t = append_dims(self.alphas_cumprod[t], x.ndim)           # (B, 1, 1, 1)
        return a_t.sqrt() * out + (1 - a_t).sqrt() * x


# ---------------------------------------------------------------------------------------------
# Sigma space: D(x, sigma) (k-diffusion `CompVisDenoiser` / `CompVisVDenoiser`)
# ---------------------------------------------------------------------------------------------

class KDenoiser:
    """D(x, sigma) ~ E[x_0 | x], x = x_0 + sigma eps, from an eps- or v-network on a discrete schedule.

    The network sees x * c_in with c_in = 1 / sqrt(sigma^2 + 1) (back in its own
    sqrt(a) x_0 + sqrt(1-a) eps scale) and the integer t nearest to sigma in log-sigma.
    eps model: D = x - sigma eps. v model: D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v.
    """

    def __init__(self, model_fn, alphas_cumprod: torch.Tensor, parameterization: str):
        if parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization must be 'eps' or 'v'; got {parameterization!r}.")
        self.inner = model_fn
        self.sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)    # (T,) ascending
        self.log_sigmas = self.sigmas.log()
        self.parameterization = parameterization

    def __call__(self, x, sigma, **extra_args):
        s = append_dims(sigma, x.ndim)                              # (B, 1, 1, 1)
        c_in = 1 / (s ** 2 + 1).sqrt()
        out = self.inner(x * c_in, sigma_to_t(sigma, self.log_sigmas), **extra_args)
        if self.parameterization == "eps":
            return x - s * out
        return x / (s ** 2 + 1) - s * c_in * out


# ---------------------------------------------------------------------------------------------
# Inpainting by latent blending (mask: 1 = repaint, 0 = keep x0; the product's "white = repaint")
# ---------------------------------------------------------------------------------------------

class InpaintSigmaBlend:
    """Pins the known region (mask == 0) to x0 for a sigma-space denoiser.

    The network sees the known region as x0 noised to the current level, x0 + sigma noise, and the
    prediction there is x0 itself; so an ODE sampler started at x0 + sigma_max noise keeps that
    region exactly on x0 + sigma noise at every step, and ends on x0.
    """

    def __init__(self, denoiser, x0, mask, noise):
        self.inner, self.x0, self.mask, self.noise = denoiser, x0, mask, noise  # (B, C, H, W) / (B|1, 1|C, H, W)

    def __call__(self, x, sigma, **extra_args):
        known = self.x0 + append_dims(sigma, x.ndim) * self.noise
        x_in = self.mask * x + (1 - self.mask) * known
        return self.mask * self.inner(x_in, sigma, **extra_args) + (1 - self.mask) * self.x0


class InpaintEpsBlend:
    """The same for a timestep-space eps denoiser: the network sees the known region as
    sqrt(a_t) x0 + sqrt(1 - a_t) noise, and eps there is the one whose pred_x0 is x0."""

    def __init__(self, denoiser, x0, mask, noise):
        self.inner, self.x0, self.mask, self.noise = denoiser, x0, mask, noise
        self.alphas_cumprod = denoiser.alphas_cumprod

    def __call__(self, x, t, **extra_args):
        a_t = append_dims(self.alphas_cumprod[t], x.ndim)           # (B, 1, 1, 1)
        known = a_t.sqrt() * self.x0 + (1 - a_t).sqrt() * self.noise
        eps = self.inner(self.mask * x + (1 - self.mask) * known, t, **extra_args)
        eps_known = (x - a_t.sqrt() * self.x0) / (1 - a_t).sqrt()
        return self.mask * eps + (1 - self.mask) * eps_known

