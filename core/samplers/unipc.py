"""UniPC, Zhao et al. 2023 ("UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), multistep, data prediction, in sigma space.

Same calling convention as sigma_samplers.py. Written in the k-diffusion variables (x = x_0 +
sigma eps, so the paper's alpha_t is 1 and lambda = -log sigma); the paper's VP formulas reduce
to these after dividing by alpha_t. AUTOMATIC1111 runs UniPC on its own time grid; here it walks
the same sigmas as every other sigma-space sampler (so "Karras" applies to it too).
"""
import math

import torch


def _unipc_coefficients(rks: list[float], hh: float, variant: str):
    """R (p, p) and b (p,) of the paper's order conditions (its Algorithm 'UniPC-p', eq. 8-9),
    for hh = -h and the node ratios rks = [r_1, ..., r_(p-1), 1]."""
    h_phi_k = math.expm1(hh) / hh - 1                       # phi_2-type terms, built recursively
    b_h = hh if variant == "bh1" else math.expm1(hh)        # B(h): bh1 = h, bh2 = e^h - 1
    rows, b, factorial = [], [], 1
    for k in range(1, len(rks) + 1):
        rows.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), b_h


def _combine(weights, tensors):
    return sum(float(w) * d for w, d in zip(weights, tensors))


@torch.no_grad()
def sample_unipc(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None,
                 order=2, variant="bh2"):
    """UniPC-p: each step predicts with UniP (order p, from the last p denoised values) and
    corrects with UniC, using the network call at the predicted point, which is then reused as
    the next step's denoised value, so it costs one call per step. Orders drop near the end
    ("lower_order_final") and the final step to sigma = 0 returns D. `variant`: "bh2"
    (B(h) = e^h - 1, the paper's choice for guided sampling) or "bh1" (B(h) = h)."""
    if order not in (1, 2, 3) or variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC order must be 1, 2 or 3 and variant 'bh1' or 'bh2'; got {order}, {variant!r}.")
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    n = len(sigmas) - 1
    sig = [float(s) for s in sigmas]
    models, lams = [], []                                    # denoised history, newest last
    model_t = None
    for i in range(n):
        m0 = model_t if model_t is not None else denoiser(x, sigmas[i] * s_in, **extra_args)
        models, lams = (models + [m0])[-order:], (lams + [-math.log(sig[i])])[-order:]
        if sig[i + 1] == 0:
            x, model_t = m0, None
        else:
            p = min(order, len(models), n - i)               # lower order at start and end
            lam_s, h = lams[-1], -math.log(sig[i + 1]) - lams[-1]
            rks = [(lams[-(k + 1)] - lam_s) / h for k in range(1, p)] + [1.0]
            d1s = [(models[-(k + 1)] - m0) / rks[k - 1] for k in range(1, p)]
            R, b, b_h = _unipc_coefficients(rks, -h, variant)
            x_lin = (sig[i + 1] / sig[i]) * x - math.expm1(-h) * m0   # first-order part
            # UniP predictor
            rhos_p = [0.5] if p == 2 else (torch.linalg.solve(R[:-1, :-1], b[:-1]) if p > 2 else [])
            x_pred = x_lin - b_h * _combine(rhos_p, d1s) if d1s else x_lin
            # UniC corrector, with the call at x_pred (also next step's m0)
            model_t = denoiser(x_pred, sigmas[i + 1] * s_in, **extra_args)
            rhos_c = [0.5] if p == 1 else torch.linalg.solve(R, b)
            x = x_lin - b_h * (_combine(rhos_c[:-1], d1s) + float(rhos_c[-1]) * (model_t - m0))
        if callback is not None:
            callback(i, n, x, m0)
    return x
