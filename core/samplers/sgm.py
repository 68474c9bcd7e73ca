"""SDXL's sampling numerics: sgm's `DiscreteDenoiser` and its sampler set-up (Stability-AI/generative-models,
`sgm/modules/diffusionmodules/{denoiser,denoiser_scaling,discretizer,sampling}.py`, `sgm/inference/helpers.py`).

The samplers themselves are ours (sigma_samplers.py: Euler, DPM++ 2M, ... are the same algorithms
as sgm's EulerEDMSampler / DPMPP2MSampler); what differs from the k-diffusion set-up of SD 1/2 is:

1. the step list (`LegacyDDPMDiscretization.get_sigmas(n)`): timesteps
   linspace(T-1, 0, n, endpoint=False) truncated to int (n = 10: 999, 899, ..., 99), their grid sigmas,
   descending, then a final 0 -- not k-diffusion's interpolated linspace(T-1, 0, n);
2. the denoiser (`DiscreteDenoiser` with EpsScaling / VScaling): sigma is snapped to the nearest
   grid sigma (linear distance), which sets c_in = 1/sqrt(sigma^2 + 1), c_out and the integer t
   the UNet sees;
3. the starting point (`prepare_sampling_loop`): x_T * sqrt(1 + sigma_max^2), not x_T * sigma_max;
   img2img (`do_img2img` + `Img2ImgDiscretizationWrapper`): of the n + 1 sigmas (the 0 included)
   the lowest max(int(strength (n + 1)), 1) are kept, and x = z + sigma_0 noise.
"""
import torch

from core.samplers.denoisers import append_dims


def sgm_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`generate_roughly_equally_spaced_steps`, descending: int((T-1) - i (T-1)/n) for i < n, i.e.
    np.linspace(T-1, 0, n, endpoint=False) truncated to int (n = 10: 999, 899, ..., 99); n = T: all."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}] for this model; got {steps}.")
    if steps == num_timesteps:
        return list(range(num_timesteps - 1, -1, -1))
    delta = (num_timesteps - 1) / steps                      # np.linspace(T-1, 0, n, endpoint=False)
    return [int((num_timesteps - 1) - i * delta) for i in range(steps)]


def sgm_sigmas(grid: torch.Tensor, steps: int) -> torch.Tensor:
    """The sampler's sigmas: grid sigmas at `sgm_timesteps`, descending, then 0.  # (steps + 1,)"""
    t = torch.tensor(sgm_timesteps(len(grid), steps), device=grid.device)
    return torch.cat([grid[t], grid.new_zeros([1])])


def sgm_start_index(steps: int, strength: float) -> int:
    """img2img as the reference counts it: keep the lowest max(int(strength (steps + 1)), 1) of the
    steps + 1 sigmas (the final 0 included), i.e. start at index steps + 1 - kept."""
    kept = max(int(strength * (steps + 1)), 1)
    return steps + 1 - kept


def sgm_initial_x(noise: torch.Tensor, sigmas: torch.Tensor, x0: torch.Tensor | None) -> torch.Tensor:
    """txt2img: x_T * sqrt(1 + sigma_0^2) (`prepare_sampling_loop`). img2img: z + sigma_0 noise (the
    reference divides by sqrt(1 + sigma_0^2) and the loop multiplies by it again)."""
    if x0 is not None:
        return x0 + sigmas[0] * noise
    return noise * torch.sqrt(1.0 + sigmas[0] ** 2)


class DiscreteDenoiser:
    """D(x, sigma) of sgm's DiscreteDenoiser from an eps- or v-network on the grid `sigmas` (T,).

    sigma_q = grid[argmin |sigma - grid|], t = that index, c_in = 1 / sqrt(sigma_q^2 + 1);
    eps (EpsScaling): D = x - sigma_q eps(x c_in, t);
    v (VScaling):     D = x / (sigma_q^2 + 1) - sigma_q / sqrt(sigma_q^2 + 1) v(x c_in, t).
    """

    def __init__(self, model_fn, sigmas: torch.Tensor, parameterization: str):
        if parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization must be 'eps' or 'v'; got {parameterization!r}.")
        self.inner = model_fn
        self.sigmas = sigmas                                                 # (T,) ascending
        self.parameterization = parameterization

    def __call__(self, x, sigma, **extra_args):
        t = (sigma.reshape(-1)[None, :] - self.sigmas[:, None]).abs().argmin(dim=0)  # (B,)
        s = append_dims(self.sigmas[t], x.ndim)                              # (B, 1, 1, 1) snapped
        c_in = 1 / (s ** 2 + 1.0) ** 0.5
        out = self.inner(x * c_in, t, **extra_args)
        if self.parameterization == "eps":
            return x - s * out
        return x / (s ** 2 + 1.0) - s * c_in * out
