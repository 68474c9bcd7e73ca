"""core.samplers: schedules, denoiser wrappers, samplers and `sample()`, without any network.

Three kinds of evidence:
- exact answers: for data N(MU, S^2) the ideal denoiser is D(x, sigma) = (S^2 x + sigma^2 MU) /
  (S^2 + sigma^2) and the probability-flow ODE maps x at sigma_max to MU + (x - MU) S /
  sqrt(S^2 + sigma_max^2); ODE samplers must land there, with their textbook order of accuracy;
- the reference: DDIM, PLMS and DDPM loops transcribed here from FACTS.md sections 6-8 (plain,
  index-based, like CompVis') on a fake linear eps/v model, compared to float64 tolerance;
- behaviour: one batched CFG pass, CPU-seeded noise, interruption, clear errors.
"""
import math
import threading

import numpy as np
import pytest
import torch

from core.samplers import (SAMPLER_DISPLAY_NAMES, SAMPLERS, SIGMA_SAMPLERS, CFGDenoiser,
                           EpsDenoiser, KDenoiser, SamplingInterrupted, ddim_timesteps,
                           get_sigmas, karras_sigmas, sample)
from core.samplers.schedules import sigma_to_t, sigmas_from_alphas_cumprod
from core.samplers.schedules import exponential_sigmas
from core.samplers.settings import SamplingSettings
from core.samplers.sigma_samplers import (sample_dpm_2, sample_dpm_2_ancestral, sample_dpmpp_2m, sample_dpmpp_2m_sde,
                                          sample_dpmpp_2s_ancestral, sample_dpmpp_sde, sample_euler,
                                          sample_euler_ancestral, sample_heun, sample_lms)
from core.samplers.unipc import sample_unipc

MU, S = 0.3, 0.5            # the Gaussian "data" of the exact-denoiser tests


def linear_betas(T=1000, start=0.00085, end=0.012):
    """SD's 'linear' schedule: linear in sqrt(beta), float64 (FACTS.md section 6)."""
    return torch.linspace(start ** 0.5, end ** 0.5, T, dtype=torch.float64) ** 2


def sd_alphas_cumprod(T=1000):
    return torch.cumprod(1 - linear_betas(T), 0).float()             # stored float32, like the buffer


class FakeModel(torch.nn.Module):
    """The model interface samplers see: apply_model, alphas_cumprod, num_timesteps,
    parameterization, and one parameter for device/dtype. `fn(x, t, cond)` is the network."""

    def __init__(self, fn, alphas_cumprod, parameterization="eps", dtype=torch.float64):
        super().__init__()
        self.fn, self.parameterization = fn, parameterization
        self.alphas_cumprod = alphas_cumprod
        self.num_timesteps = len(alphas_cumprod)
        self.anchor = torch.nn.Parameter(torch.zeros(1, dtype=dtype))
        self.calls = []

    def apply_model(self, x, t, cond):
        self.calls.append({"x": x.clone(), "t": t.clone(), "cond": cond})
        return self.fn(x, t, cond)


def linear_net(C=3, seed=0, dtype=torch.float64):
    """A fixed random linear map of x plus a t-dependent and a cond-dependent term."""
    W = 0.4 * torch.randn(C, C, generator=torch.Generator().manual_seed(seed), dtype=dtype)

    def fn(x, t, cond):
        out = torch.einsum("oc,bchw->bohw", W, x) + 0.1 * torch.sin(t.to(x.dtype) / 137).reshape(-1, 1, 1, 1)
        if isinstance(cond, torch.Tensor):
            out = out + cond.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)            # (B, L, D) context
        elif isinstance(cond, dict):
            out = out + torch.cat(cond["c_crossattn"], 1).mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
            if "c_concat" in cond:
                out = out + 0.5 * torch.cat(cond["c_concat"], 1).mean(dim=1, keepdim=True)
            if "c_adm" in cond:
                out = out + 0.01 * cond["c_adm"].to(x.dtype).reshape(-1, 1, 1, 1)
        return out
    return fn


def gaussian_net(parameterization):
    """The exact network for data N(MU, S^2) on a discrete schedule: eps or v at integer t."""
    def fn(x, t, cond):
        a = FakeModel_ac[t].to(x.dtype).reshape(-1, 1, 1, 1)
        sigma = ((1 - a) / a).sqrt()
        xk = x / a.sqrt()                                                     # x_0 + sigma eps
        d = (S ** 2 * xk + sigma ** 2 * MU) / (S ** 2 + sigma ** 2)
        eps = (xk - d) / sigma
        return eps if parameterization == "eps" else a.sqrt() * eps - (1 - a).sqrt() * d
    return fn


FakeModel_ac = sd_alphas_cumprod()


def exact_denoiser(x, sigma):
    s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return (S ** 2 * x + s2 * MU) / (S ** 2 + s2)


def exact_flow(x, sigma_from, sigma_to):
    """The probability-flow ODE solution for N(MU, S^2) data, from sigma_from to sigma_to."""
    return MU + (x - MU) * math.sqrt(S ** 2 + sigma_to ** 2) / math.sqrt(S ** 2 + sigma_from ** 2)


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------

def test_ddim_step_lists_match_the_reference_uniform_spacing():
    assert ddim_timesteps(1000, 10) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    s50 = ddim_timesteps(1000, 50)
    assert len(s50) == 50 and s50[0] == 981 and s50[-1] == 1 and s50[-2] == 21
    s7 = ddim_timesteps(1000, 7)                                  # c = 142: 8 steps
    assert s7 == [t + 1 for t in range(0, 1000, 142)][::-1] and len(s7) == 8
    assert ddim_timesteps(1000, 3) == [999, 667, 334, 1]          # 1000 would be out of range
    assert len(ddim_timesteps(1000, 30)) == 31
    assert ddim_timesteps(1000, 1) == [1]


def test_sigmas_from_schedule_and_t_sigma_round_trip():
    ac = sd_alphas_cumprod()
    sigmas = sigmas_from_alphas_cumprod(ac)
    assert sigmas[0].item() == pytest.approx(0.0292, abs=2e-4)       # SD's sigma_min
    assert sigmas[-1].item() == pytest.approx(14.61, abs=0.01)       # SD's sigma_max
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    assert torch.equal(sigma_to_t(sigmas[t], sigmas.log()), t)
    # nearest in log-sigma, between two grid points
    between = (sigmas[[100]].log() * 0.6 + sigmas[[101]].log() * 0.4).exp()
    assert sigma_to_t(between, sigmas.log()).item() == 100


def test_default_sigmas_interpolate_log_sigma_and_end_in_zero():
    ac = sd_alphas_cumprod()
    log_sigmas = sigmas_from_alphas_cumprod(ac).log()
    sig = get_sigmas(ac, 4)                                          # t = 999, 666, 333, 0
    assert len(sig) == 5 and sig[-1] == 0
    assert sig[0].item() == pytest.approx(log_sigmas[999].exp().item(), rel=1e-6)
    assert sig[3].item() == pytest.approx(log_sigmas[0].exp().item(), rel=1e-6)
    expected = log_sigmas[666].exp().item()                          # t = 666 exactly
    assert sig[1].item() == pytest.approx(expected, rel=1e-5)
    # fractional t: t = 999 * 2/3 = 666 exactly, so try 7 steps -> t = 832.5
    sig7 = get_sigmas(ac, 7)
    assert sig7[1].item() == pytest.approx(((log_sigmas[832] + log_sigmas[833]) / 2).exp().item(), rel=1e-5)


def test_karras_sigmas_formula():
    sig = karras_sigmas(5, 0.1, 10.0, dtype=torch.float64)
    ramp = np.linspace(0, 1, 5)
    expected = (10.0 ** (1 / 7) + ramp * (0.1 ** (1 / 7) - 10.0 ** (1 / 7))) ** 7
    assert np.allclose(sig[:-1].numpy(), expected) and sig[-1] == 0
    ac = sd_alphas_cumprod()
    sk = get_sigmas(ac, 10, karras=True)
    sigmas = sigmas_from_alphas_cumprod(ac)
    assert sk[0].item() == pytest.approx(sigmas[-1].item(), rel=1e-5)
    assert sk[-2].item() == pytest.approx(sigmas[0].item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Denoiser wrappers
# ---------------------------------------------------------------------------------------------

def test_kdenoiser_is_the_exact_gaussian_denoiser_for_eps_and_v_models():
    ac = FakeModel_ac.double()
    sigmas = sigmas_from_alphas_cumprod(ac)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sigma = sigmas[[5, 300, 990]]
    for param in ("eps", "v"):
        d = KDenoiser(lambda x, t, cond=None: gaussian_net(param)(x, t, cond), ac, param)(x, sigma)
        assert torch.allclose(d, exact_denoiser(x, sigma), atol=1e-10), param


def test_eps_denoiser_converts_v_with_alpha_at_the_same_t():
    ac = sd_alphas_cumprod().double()
    v = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([1, 981])
    eps = EpsDenoiser(lambda x, t: v, ac, "v")(x, t)
    a = ac[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(eps, a.sqrt() * v + (1 - a).sqrt() * x)


def test_cfg_runs_one_batched_pass_and_combines_outputs():
    fn = linear_net()
    calls = []

    def model(x, t, cond):
        calls.append((x.shape[0], cond))
        return fn(x, t, cond)

    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([501, 501])
    c = torch.randn(2, 5, 8, dtype=torch.float64)
    uc = torch.randn(2, 5, 8, dtype=torch.float64)
    out = CFGDenoiser(model)(x, t, cond=c, uncond=uc, cond_scale=7.5)
    assert [b for b, _ in calls] == [4]
    assert torch.equal(calls[0][1], torch.cat([uc, c]))
    expected = fn(x, t, uc) + 7.5 * (fn(x, t, c) - fn(x, t, uc))
    assert torch.allclose(out, expected)
    calls.clear()
    assert torch.allclose(CFGDenoiser(model)(x, t, cond=c, uncond=uc, cond_scale=1.0), fn(x, t, c))
    assert torch.allclose(CFGDenoiser(model)(x, t, cond=c, uncond=None, cond_scale=7.5), fn(x, t, c))
    assert [b for b, _ in calls] == [2, 2]


def test_cfg_dict_conds_concatenate_key_by_key_with_shared_c_concat():
    fn = linear_net()
    seen = []

    def model(x, t, cond):
        seen.append(cond)
        return fn(x, t, cond)

    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([7, 7])
    c_cat = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    adm = torch.tensor([20, 20])
    cond = {"c_crossattn": [torch.randn(2, 5, 8, dtype=torch.float64)], "c_concat": [c_cat], "c_adm": adm}
    uc = torch.randn(1, 5, 8, dtype=torch.float64)                   # batch 1: expanded
    out = CFGDenoiser(model)(x, t, cond=cond, uncond=uc, cond_scale=3.0)
    both = seen[0]
    assert both["c_crossattn"][0].shape[0] == 4
    assert torch.equal(both["c_crossattn"][0], torch.cat([uc.expand(2, 5, 8), cond["c_crossattn"][0]]))
    assert torch.equal(both["c_concat"][0], torch.cat([c_cat, c_cat]))
    assert torch.equal(both["c_adm"], torch.cat([adm, adm]))
    uncond_full = {**cond, "c_crossattn": [uc.expand(2, 5, 8)]}
    expected = fn(x, t, uncond_full) + 3.0 * (fn(x, t, cond) - fn(x, t, uncond_full))
    assert torch.allclose(out, expected)
    # a dict uncond overrides only the keys it names (the reference passes a full dict)
    other = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    CFGDenoiser(model)(x, t, cond=cond, uncond={"c_crossattn": [uc], "c_concat": [other]}, cond_scale=3.0)
    assert torch.equal(seen[-1]["c_concat"][0], torch.cat([other, c_cat]))
    with pytest.raises(ValueError, match="batch"):
        CFGDenoiser(model)(x, t, cond=torch.randn(3, 5, 8, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Reference equivalence: DDIM / PLMS / DDPM transcribed from FACTS.md sections 6-8
# ---------------------------------------------------------------------------------------------

def _ref_guided(net, x, t, c, uc, scale):
    if uc is None or scale == 1:
        return net(x, t, c)
    if isinstance(c, dict):
        c_in = {k: ([torch.cat([uc[k][i], c[k][i]]) for i in range(len(c[k]))]
                    if isinstance(c[k], list) else torch.cat([uc[k], c[k]])) for k in c}
    else:
        c_in = torch.cat([uc, c])
    e_u, e_c = net(torch.cat([x] * 2), torch.cat([t] * 2), c_in).chunk(2)
    return e_u + scale * (e_c - e_u)


def ref_ddim(net, ac, S_steps, x, c, uc, scale, param="eps", eta=0.0, generator=None):
    """CompVis DDIMSampler.ddim_sampling / p_sample_ddim, index-based, as FACTS.md section 7."""
    T = len(ac)
    c_step = T // S_steps
    ddim_ts = np.asarray(list(range(0, T, c_step))) + 1
    alphas = ac[ddim_ts]
    alphas_prev = torch.cat([ac[:1], ac[ddim_ts[:-1]]])
    sigmas = eta * ((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev)).sqrt()
    time_range = np.flip(ddim_ts)
    total = ddim_ts.shape[0]
    for i, step in enumerate(time_range):
        index = total - i - 1
        t = torch.full((x.shape[0],), int(step), dtype=torch.long)
        out = _ref_guided(net, x, t, c, uc, scale)
        a_t, a_prev, sigma_t = alphas[index], alphas_prev[index], sigmas[index]
        if param == "v":
            e_t = ac[t].sqrt().reshape(-1, 1, 1, 1) * out + (1 - ac[t]).sqrt().reshape(-1, 1, 1, 1) * x
            pred_x0 = ac[t].sqrt().reshape(-1, 1, 1, 1) * x - (1 - ac[t]).sqrt().reshape(-1, 1, 1, 1) * out
        else:
            e_t = out
            pred_x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        dir_xt = (1 - a_prev - sigma_t ** 2).sqrt() * e_t
        noise = 0.0
        if eta > 0:
            noise = sigma_t * torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.dtype)
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
    return x


def ref_plms(net, ac, S_steps, x, c, uc, scale):
    """CompVis PLMSSampler.plms_sampling / p_sample_plms, as FACTS.md section 8."""
    T = len(ac)
    ddim_ts = np.asarray(list(range(0, T, T // S_steps))) + 1
    alphas = ac[ddim_ts]
    alphas_prev = torch.cat([ac[:1], ac[ddim_ts[:-1]]])
    time_range = np.flip(ddim_ts)
    total = ddim_ts.shape[0]
    old_eps = []
    for i, step in enumerate(time_range):
        index = total - i - 1
        ts = torch.full((x.shape[0],), int(step), dtype=torch.long)
        ts_next = torch.full((x.shape[0],), int(time_range[min(i + 1, len(time_range) - 1)]), dtype=torch.long)

        def x_prev_of(e_t):
            pred_x0 = (x - (1 - alphas[index]).sqrt() * e_t) / alphas[index].sqrt()
            return alphas_prev[index].sqrt() * pred_x0 + (1 - alphas_prev[index]).sqrt() * e_t

        e_t = _ref_guided(net, x, ts, c, uc, scale)
        if len(old_eps) == 0:
            e_t_next = _ref_guided(net, x_prev_of(e_t), ts_next, c, uc, scale)
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = x_prev_of(e_t_prime)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
    return x


def _x_T(shape=(2, 3, 4, 4), seed=11):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_ddim_matches_reference_eps(scale):
    ac = sd_alphas_cumprod()
    m = FakeModel(linear_net(), ac)
    c, uc = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    x_T = _x_T()
    z = sample(m, c, uc, guidance_scale=scale, steps=10, sampler="ddim", x_T=x_T)
    ref = ref_ddim(m.fn, ac.double(), 10, x_T, c, uc, scale)
    assert torch.allclose(z, ref, atol=1e-10, rtol=0)
    assert len(m.calls) == 10 and m.calls[0]["x"].shape[0] == (2 if scale == 1 else 4)
    assert [int(call["t"][0]) for call in m.calls] == ddim_timesteps(1000, 10)


def test_ddim_matches_reference_v_with_dict_conds():
    ac = sd_alphas_cumprod()
    m = FakeModel(linear_net(), ac, parameterization="v")
    c_cat = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    cond = {"c_crossattn": [torch.randn(2, 5, 8, dtype=torch.float64)], "c_concat": [c_cat]}
    uc_full = {"c_crossattn": [torch.randn(2, 5, 8, dtype=torch.float64)], "c_concat": [c_cat]}
    x_T = _x_T()
    z = sample(m, cond, uc_full["c_crossattn"][0], guidance_scale=9.0, steps=10, sampler="ddim", x_T=x_T)
    ref = ref_ddim(m.fn, ac.double(), 10, x_T, cond, uc_full, 9.0, param="v")
    assert torch.allclose(z, ref, atol=1e-10, rtol=0)
    # treating v as eps is far off (FACTS trap 5)
    wrong = ref_ddim(m.fn, ac.double(), 10, x_T, cond, uc_full, 9.0, param="eps")
    assert (wrong - ref).abs().max() > 0.1


def test_ddim_eta_matches_reference_with_the_same_cpu_noise():
    ac = sd_alphas_cumprod()
    m = FakeModel(linear_net(), ac)
    c, uc = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    x_T = _x_T()
    z = sample(m, c, uc, guidance_scale=5.0, steps=10, sampler="ddim", eta=0.7, x_T=x_T, seed=123)
    ref = ref_ddim(m.fn, ac.double(), 10, x_T, c, uc, 5.0, eta=0.7,
                   generator=torch.Generator().manual_seed(123))
    assert torch.allclose(z, ref, atol=1e-10, rtol=0)


def test_ddim_step_list_and_final_alpha_prev_is_alphas_cumprod_0():
    ac = sd_alphas_cumprod()
    m = FakeModel(linear_net(), ac)
    x_T = _x_T()
    z = sample(m, None, steps=1, sampler="ddim", x_T=x_T)               # one step: t = 1
    a_t, a_prev = ac[1].double(), ac[0].double()
    eps = m.fn(x_T, torch.tensor([1, 1]), None)
    pred_x0 = (x_T - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    assert torch.allclose(z, a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * eps, atol=1e-12)
    assert not torch.allclose(z, pred_x0, atol=1e-3)                    # a_prev = 1 would give pred_x0
    for steps, n in [(7, 8), (3, 4)]:
        m.calls.clear()
        sample(m, None, steps=steps, sampler="ddim", x_T=x_T)
        assert [int(call["t"][0]) for call in m.calls] == ddim_timesteps(1000, steps)
        assert len(m.calls) == n


@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_plms_matches_reference(scale):
    ac = sd_alphas_cumprod()
    m = FakeModel(linear_net(), ac)
    c, uc = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    x_T = _x_T()
    z = sample(m, c, uc, guidance_scale=scale, steps=10, sampler="plms", x_T=x_T)
    ref = ref_plms(m.fn, ac.double(), 10, x_T, c, uc, scale)
    assert torch.allclose(z, ref, atol=1e-10, rtol=0)
    assert len(m.calls) == 11                                           # S steps cost S + 1 calls


def test_plms_works_for_v_models_by_converting_to_eps():
    """Beyond the reference: PLMS on a v-model = PLMS on the equivalent eps-model."""
    ac = sd_alphas_cumprod()
    x_T = _x_T()
    z_v = sample(FakeModel(gaussian_net("v"), ac, "v"), None, steps=10, sampler="plms", x_T=x_T)
    z_eps = sample(FakeModel(gaussian_net("eps"), ac, "eps"), None, steps=10, sampler="plms", x_T=x_T)
    assert torch.allclose(z_v, z_eps, atol=1e-9)


def test_ddpm_full_schedule_matches_reference_p_sample():
    T = 50
    betas = linear_betas(T, 0.0015, 0.0195 * 20)
    ac = torch.cumprod(1 - betas, 0)                                    # float64 buffer here
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    m = FakeModel(linear_net(), ac)
    x_T = _x_T()
    z = sample(m, None, steps=T, sampler="ddpm", x_T=x_T, seed=5)
    # reference register_schedule + p_sample (FACTS section 6): posterior coefficients from betas
    coef1 = betas * ac_prev.sqrt() / (1 - ac)
    coef2 = (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)
    var = betas * (1 - ac_prev) / (1 - ac)
    g = torch.Generator().manual_seed(5)
    x = x_T
    for t in range(T - 1, -1, -1):
        eps = m.fn(x, torch.full((2,), t), None)
        x0 = (1 / ac[t]).sqrt() * x - (1 / ac[t] - 1).sqrt() * eps
        x = coef1[t] * x0 + coef2[t] * x
        if t > 0:
            x = x + var[t].sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float32).double()
    assert torch.allclose(z, x, atol=1e-9, rtol=0)


# ---------------------------------------------------------------------------------------------
# Exact Gaussian denoiser (STYLE habit 12)
# ---------------------------------------------------------------------------------------------

ODE_SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m,
                "unipc": sample_unipc, "lms": sample_lms, "dpm2": sample_dpm_2}
# Samplers that inject noise: tested by the marginal they reach.
NOISY_SAMPLERS = {"dpm2_a": sample_dpm_2_ancestral, "dpmpp_2s_a": sample_dpmpp_2s_ancestral,
                  "dpmpp_sde": sample_dpmpp_sde, "dpmpp_2m_sde": sample_dpmpp_2m_sde}


@pytest.mark.parametrize("name", list(ODE_SAMPLERS))
def test_ode_samplers_carry_noise_onto_the_data_distribution(name):
    x0 = torch.randn(4096, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    steps = 200 if name == "euler" else 40                              # Euler is first order
    sigmas = karras_sigmas(steps, 0.002, 80.0, dtype=torch.float64)
    x = x0 * sigmas[0]                                                  # N(0, sigma_max^2)
    out = ODE_SAMPLERS[name](exact_denoiser, x.reshape(-1, 1), sigmas).reshape(-1)
    tol = {"euler": 0.05, "heun": 0.04, "dpmpp_2m": 0.04, "unipc": 0.015, "lms": 0.01, "dpm2": 0.04}[name]
    assert (out - exact_flow(x, 80.0, 0.0)).abs().max() < tol
    assert abs(out.mean().item() - MU) < 0.03 and abs(out.std().item() - S) < 0.03


# LMS is a 4-step method; its lower-order start-up steps make the error fall like ~h^3 at these sizes.
@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("unipc", 3), ("lms", 3),
                                        ("dpm2", 2)])
def test_ode_samplers_have_their_order_of_accuracy(name, order):
    x = torch.linspace(-3, 3, 64, dtype=torch.float64).reshape(-1, 1) * 80.0
    errors = []
    for n in (20, 40):
        sigmas = karras_sigmas(n, 0.002, 80.0, dtype=torch.float64)
        errors.append((ODE_SAMPLERS[name](exact_denoiser, x, sigmas) - exact_flow(x, 80.0, 0.0)).abs().max())
    ratio = (errors[0] / errors[1]).item()                              # ~ 2^order
    assert 2 ** order * 0.75 < ratio < 2 ** order * 1.6, ratio


def test_euler_ancestral_reaches_the_data_distribution():
    x0 = torch.randn(8192, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigmas = karras_sigmas(300, 0.002, 80.0, dtype=torch.float64)
    out = sample_euler_ancestral(exact_denoiser, x0 * 80.0, sigmas, generator=torch.Generator().manual_seed(2))
    assert abs(out.mean().item() - MU) < 0.025 and abs(out.std().item() - S) < 0.025
    # with eta = 0 it is plain Euler
    assert torch.equal(sample_euler_ancestral(exact_denoiser, x0[:8] * 80.0, sigmas[:5], eta=0.0),
                       sample_euler(exact_denoiser, x0[:8] * 80.0, sigmas[:5]))


@pytest.mark.parametrize("name", list(NOISY_SAMPLERS))
def test_ancestral_and_sde_samplers_reach_the_data_distribution(name):
    """Marginals: N(0, 80^2) onto N(MU, S^2) with fresh noise every step; eta = 0 is their ODE
    (deterministic: the generator is not used)."""
    x0 = torch.randn(8192, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigmas = karras_sigmas(100, 0.002, 80.0, dtype=torch.float64)
    out = NOISY_SAMPLERS[name](exact_denoiser, x0 * 80.0, sigmas, generator=torch.Generator().manual_seed(2))
    assert abs(out.mean().item() - MU) < 0.025 and abs(out.std().item() - S) < 0.025
    ode = NOISY_SAMPLERS[name](exact_denoiser, x0[:64] * 80.0, sigmas[::2].contiguous(), eta=0.0)
    assert (ode - exact_flow(x0[:64] * 80.0, 80.0, 0.0)).abs().max() < 0.05


def test_noisy_samplers_draw_one_row_per_generator():
    """Generators as a list, one per image: row i depends only on its own generator."""
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 80.0
    sigmas = karras_sigmas(6, 0.002, 80.0, dtype=torch.float64)
    for name, run in NOISY_SAMPLERS.items():
        batch = run(exact_denoiser, x, sigmas, generator=[torch.Generator().manual_seed(s) for s in (5, 6, 7)])
        alone = run(exact_denoiser, x[1:2], sigmas, generator=[torch.Generator().manual_seed(6)])
        assert torch.allclose(batch[1:2], alone, atol=1e-12), name


@pytest.mark.parametrize("param", ["eps", "v"])
@pytest.mark.parametrize("name,karras,steps", [("lms", True, 50), ("dpm2", False, 30), ("dpm2_a", True, 50),
                                               ("dpmpp_2s_a", False, 50), ("dpmpp_sde", True, 30),
                                               ("dpmpp_2m_sde", True, 50), ("ddim", False, 50), ("plms", False, 50),
                                               ("euler", False, 50), ("heun", False, 50),
                                               ("dpmpp_2m", True, 50), ("unipc", True, 50),
                                               ("euler_a", True, 50), ("ddpm", False, 250)])
def test_sample_on_the_sd_schedule_reaches_the_data_distribution(name, karras, steps, param):
    """Through sample(): N(0, 1) noise onto N(MU, S^2). Ancestral DDPM with the exact
    posterior-mean plug-in loses variance on coarse strides, so it gets more steps."""
    m = FakeModel(gaussian_net(param), FakeModel_ac, param)
    z = sample(m, None, steps=steps, sampler=name, karras=karras, shape=(2048, 1, 1, 1), seed=0)
    assert abs(z.mean().item() - MU) < 0.04 and abs(z.std().item() - S) < 0.04


@pytest.mark.parametrize("param", ["eps", "v"])
def test_ddim_eta0_equals_euler_on_the_same_sigmas(param):
    """DDIM(eta=0) is Euler in (x / sqrt(alphas_cumprod), sigma) (Karras et al. 2022, sec. 4)."""
    ac = FakeModel_ac
    m = FakeModel(gaussian_net(param), ac, param)
    x_T = _x_T((16, 1, 2, 2))
    z_ddim = sample(m, None, steps=20, sampler="ddim", x_T=x_T)
    ts = ddim_timesteps(1000, 20)
    acd = ac.double()
    sigmas = sigmas_from_alphas_cumprod(acd)[ts + [0]]                  # DDIM ends at sigma(0)
    denoiser = KDenoiser(lambda x, t, cond=None: m.apply_model(x, t, cond), acd, param)
    z_euler = sample_euler(denoiser, x_T / acd[ts[0]].sqrt(), sigmas)
    assert torch.allclose(z_ddim / acd[0].sqrt(), z_euler, atol=1e-9, rtol=0)


# ---------------------------------------------------------------------------------------------
# Seeds, noise, img2img, inpainting
# ---------------------------------------------------------------------------------------------

def test_seeds_are_reproducible_and_drawn_on_the_cpu():
    m = FakeModel(linear_net(), sd_alphas_cumprod())
    shape = (2, 3, 4, 4)
    z1 = sample(m, None, steps=5, sampler="euler_a", shape=shape, seed=42)
    z2 = sample(m, None, steps=5, sampler="euler_a", shape=shape, seed=42)
    z3 = sample(m, None, steps=5, sampler="euler_a", shape=shape, seed=43)
    assert torch.equal(z1, z2) and not torch.allclose(z1, z3)
    m.calls.clear()
    sample(m, None, steps=3, sampler="ddim", shape=shape, seed=7)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    assert torch.equal(m.calls[0]["x"], x_T.double())                  # x_T from CPU float32 stream
    # the ancestral noise continues the same CPU stream after x_T
    g = torch.Generator().manual_seed(42)
    x_T = torch.randn(shape, generator=g, dtype=torch.float32).double()
    ac = sd_alphas_cumprod().double()
    sigmas = get_sigmas(ac, 5)
    den = KDenoiser(lambda x, t, cond=None: linear_net()(x, t, cond), ac, "eps")
    assert torch.allclose(z1, sample_euler_ancestral(den, x_T * sigmas[0], sigmas, generator=g), atol=1e-12)


def test_img2img_starts_from_x0_noised_to_the_first_step_run():
    ac = sd_alphas_cumprod()
    m = FakeModel(linear_net(), ac)
    x0, x_T = _x_T(seed=1), _x_T(seed=2)
    totals = []
    sample(m, None, steps=10, sampler="ddim", x_T=x_T, x0=x0, strength=0.5,
           callback=lambda i, total, x, p: totals.append(total))
    ts = ddim_timesteps(1000, 10)[5:]
    assert [int(c["t"][0]) for c in m.calls] == ts and totals == [5] * 5
    a = ac[ts[0]].double()
    assert torch.allclose(m.calls[0]["x"], a.sqrt() * x0 + (1 - a).sqrt() * x_T)
    m.calls.clear()
    sample(m, None, steps=10, sampler="euler", x_T=x_T, x0=x0, start_step=7)
    assert len(m.calls) == 3


@pytest.mark.parametrize("name", ["ddim", "euler", "euler_a", "dpmpp_2m", "plms"])
def test_inpainting_keeps_x0_and_shows_it_noised_to_each_level(name):
    ac = sd_alphas_cumprod()
    m = FakeModel(linear_net(), ac)
    x0, x_T = _x_T(seed=1), _x_T(seed=2)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :, 2:] = 1                                                # repaint the right half
    z = sample(m, None, steps=6, sampler=name, x_T=x_T, x0=x0, mask=mask, seed=0)
    keep = mask.expand_as(z) == 0
    assert torch.equal(z[keep], x0[keep])
    assert (z[~keep] - x0[~keep]).abs().max() > 0.1
    if name in SIGMA_SAMPLERS:
        levels = get_sigmas(ac.double(), 6)[:-1]
        alphas = [1 / (1 + s ** 2) for s in levels]                     # network input scale
    else:
        alphas = [ac[t].double() for t in ddim_timesteps(1000, 6)]
    inputs = [c["x"] for c in m.calls if c is not m.calls[1] or name != "plms"]
    for x_in, a in zip(inputs, alphas):
        expected = a.sqrt() * x0 + (1 - a).sqrt() * x_T
        assert torch.allclose(x_in[keep], expected[keep], atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Interruption
# ---------------------------------------------------------------------------------------------

def test_should_stop_event_interrupts_after_the_right_step():
    m = FakeModel(linear_net(), sd_alphas_cumprod())
    stop = threading.Event()
    seen = []

    def callback(i, total, x, pred_x0):
        seen.append(x.clone())
        if i == 2:
            stop.set()

    with pytest.raises(SamplingInterrupted) as info:
        sample(m, None, steps=10, sampler="ddim", shape=(1, 3, 4, 4), seed=0,
               callback=callback, should_stop=stop)
    assert info.value.step == 3 and info.value.total == 10 and len(m.calls) == 3
    assert torch.equal(info.value.x, seen[-1]) and info.value.pred_x0 is not None


def test_callback_raising_interrupt_and_callable_should_stop():
    m = FakeModel(linear_net(), sd_alphas_cumprod())

    def callback(i, total, x, pred_x0):
        if i == 1:
            raise SamplingInterrupted()

    with pytest.raises(SamplingInterrupted) as info:
        sample(m, None, steps=5, sampler="euler", shape=(1, 3, 4, 4), seed=0, callback=callback)
    assert info.value.step == 2 and info.value.x is not None and len(m.calls) == 2
    m.calls.clear()
    with pytest.raises(SamplingInterrupted) as info:
        sample(m, None, steps=5, sampler="heun", shape=(1, 3, 4, 4), seed=0, should_stop=lambda: True)
    assert info.value.step == 0 and len(m.calls) == 0


# ---------------------------------------------------------------------------------------------
# Names and bad inputs
# ---------------------------------------------------------------------------------------------

def test_display_names_cover_every_sampler():
    assert set(SAMPLER_DISPLAY_NAMES) == set(SAMPLERS)
    assert {"DDIM", "PLMS", "DDPM", "Euler", "Euler a", "Heun", "DPM++ 2M", "UniPC", "LMS", "DPM2", "DPM2 a",
            "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE"} == set(SAMPLER_DISPLAY_NAMES.values())


def test_bad_inputs_give_clear_errors():
    m = FakeModel(linear_net(), sd_alphas_cumprod())
    ok = dict(shape=(1, 3, 4, 4), seed=0)
    with pytest.raises(ValueError, match="euler_a"):
        sample(m, None, sampler="k_dpmpp_3m", **ok)
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            sample(m, None, steps=steps, **ok)
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance_scale"):
            sample(m, None, guidance_scale=scale, **ok)
    with pytest.raises(ValueError, match="eta"):
        sample(m, None, eta=-0.1, **ok)
    with pytest.raises(ValueError, match="eta"):
        sample(m, None, sampler="plms", eta=0.5, **ok)
    with pytest.raises(ValueError, match="shape"):
        sample(m, None)
    with pytest.raises(ValueError, match="Karras"):
        sample(m, None, sampler="ddim", karras=True, **ok)
    with pytest.raises(ValueError, match="steps"):
        sample(m, None, sampler="ddim", steps=600, **ok)
    with pytest.raises(ValueError, match="x0"):
        sample(m, None, strength=0.5, **ok)
    with pytest.raises(ValueError, match="strength"):
        sample(m, None, x0=torch.zeros(1, 3, 4, 4), strength=1.5, **ok)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample(m, None, x0=torch.zeros(1, 3, 4, 4), mask=torch.full((1, 1, 4, 4), -1.0), **ok)
    with pytest.raises(ValueError, match="x0"):
        sample(m, None, x0=torch.zeros(1, 3, 8, 8), strength=0.5, **ok)
    with pytest.raises(ValueError, match="x_T has shape"):
        sample(m, None, x_T=torch.zeros(1, 3, 4, 4), shape=(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        sample(m, None, shape=(3, 4, 4))


# ---------------------------------------------------------------------------------------------
# Schedule types (A1111's names) and sampler names from PNGs and API calls
# ---------------------------------------------------------------------------------------------

def test_schedule_types():
    ac = sd_alphas_cumprod()
    sigmas = sigmas_from_alphas_cumprod(ac)
    smin, smax = sigmas[0].item(), sigmas[-1].item()
    assert torch.equal(get_sigmas(ac, 6, scheduler="normal"), get_sigmas(ac, 6))
    assert torch.equal(get_sigmas(ac, 6, scheduler="karras"), get_sigmas(ac, 6, karras=True))
    expo = get_sigmas(ac, 5, scheduler="exponential")
    assert torch.allclose(expo[:-1].log(), torch.linspace(math.log(smax), math.log(smin), 5), atol=1e-5)
    assert torch.equal(expo, exponential_sigmas(5, smin, smax))
    simple = get_sigmas(ac, 4, scheduler="simple")                   # every 250th of the model's sigmas
    assert torch.equal(simple, torch.cat([sigmas[[999, 749, 499, 249]], torch.zeros(1)]))
    sgm = get_sigmas(ac, 4, scheduler="sgm_uniform")                 # t = 999, 749.25, 499.5, 249.75
    assert sgm[0].item() == pytest.approx(smax, rel=1e-6) and sgm[-1] == 0 and len(sgm) == 5
    assert sgm[2].item() == pytest.approx(((sigmas[499].log() + sigmas[500].log()) / 2).exp().item(), rel=1e-5)
    for name in ("automatic", "karras", "exponential", "sgm_uniform", "simple", "normal"):
        sig = get_sigmas(ac, 7, scheduler=name)
        assert len(sig) == 8 and sig[-1] == 0 and bool((sig[:-1] > 0).all()) and bool((sig.diff() < 0).all()), name
    with pytest.raises(ValueError, match="sgm_uniform"):
        get_sigmas(ac, 4, scheduler="beta")


def test_sampling_settings_scheduler_and_karras_alias():
    s = SamplingSettings("euler", True, 3, 2.0)
    assert s.scheduler == "karras" and s.karras and s.schedule_display_name == "Karras"
    s = SamplingSettings("euler", scheduler="karras")
    assert s.karras and s == SamplingSettings("euler", True)
    assert not SamplingSettings("euler", scheduler="exponential").karras
    with pytest.raises(ValueError, match="Karras"):
        SamplingSettings("euler", True, scheduler="exponential")
    with pytest.raises(ValueError, match=r"schedule types \(Exponential\) apply"):
        SamplingSettings("ddim", scheduler="exponential")
    with pytest.raises(ValueError, match="SGM Uniform"):
        SamplingSettings("euler", scheduler="sgm")

    class Defaults:
        sampler, karras, steps, guidance_scale, eta = "ddim", False, 20, 7.5, 0.0

    r = SamplingSettings.resolve(Defaults, "DPM++ 2M SDE", scheduler="Exponential")
    assert (r.sampler, r.scheduler, r.karras) == ("dpmpp_2m_sde", "exponential", False)
    assert SamplingSettings.resolve(Defaults, "k_lms").sampler == "lms"                 # A1111's API aliases
    assert SamplingSettings.resolve(Defaults, "DPM++ 2M Karras").scheduler == "karras"
    assert SamplingSettings.resolve(Defaults, "euler", karras=True, scheduler="Simple").scheduler == "simple"
    with pytest.warns(UserWarning, match="does not apply"):
        assert SamplingSettings.resolve(Defaults, "ddim", scheduler="Karras").scheduler == "automatic"
    with pytest.warns(UserWarning, match="'DPM\\+\\+ 3M SDE' is not available.*DDIM"):
        fallback = SamplingSettings.resolve(Defaults, "DPM++ 3M SDE")
    assert fallback.sampler == "ddim" and fallback.steps == 20
    with pytest.raises(ValueError, match="sampler"):
        SamplingSettings.resolve(Defaults, 3)


def test_dpm2_discards_the_next_to_last_sigma_as_a1111():
    m = FakeModel(gaussian_net("eps"), FakeModel_ac)
    sample(m, None, steps=4, sampler="dpm2", shape=(1, 1, 1, 1), seed=0)
    full = get_sigmas(FakeModel_ac.double(), 5)
    walked = torch.cat([full[:-2], full[-1:]])                         # 4 steps: 3 x 2 calls + 1 Euler
    seen = sorted({int(c["t"][0]) for c in m.calls}, reverse=True)
    assert len(m.calls) == 7 and seen[0] == 999 and len(walked) == 5
