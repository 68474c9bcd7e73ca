"""The KL autoencoder's posterior q(z|x): a diagonal Gaussian.

Same numerics as CompVis `ldm/modules/distributions/distributions.py` (DiagonalGaussianDistribution):
the encoder's "moments" are split in channel halves (mean first, then log-variance), the
log-variance is clamped to [-30, 20] so exp() can neither underflow to 0 nor overflow, and
std = exp(logvar / 2). Differences from the reference: `sample` takes a torch.Generator (the
reference draws from the global RNG, so its latents are not reproducible from a seed), and the
deterministic kl/nll return zeros per sample on the input's device instead of a CPU tensor [0.].
"""

import math

import torch
from torch import Tensor


class DiagonalGaussianDistribution:
    """N(mean, diag(exp(logvar))) over latents of shape (B, C, H, W)."""

    def __init__(self, parameters: Tensor, deterministic: bool = False):
        if parameters.dim() != 4 or parameters.shape[1] % 2 != 0:
            raise ValueError(
                "DiagonalGaussianDistribution expects moments of shape (B, 2*C, H, W) "
                f"(mean and logvar stacked on channels), got {tuple(parameters.shape)}"
            )
        self.parameters = parameters                                   # (B, 2C, H, W)
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)          # (B, C, H, W) each
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            # A point mass at the mean: no spread, so sample() == mode().
            self.std = torch.zeros_like(self.mean)
            self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """mean + std * eps, eps ~ N(0, I) drawn with `generator` (reproducible from a seed).

        The noise is drawn in float32 on the generator's device (so one seed gives the same eps
        whatever the model's dtype, and a CPU generator works for a CUDA model), then moved to
        the parameters' device and dtype.
        """
        noise_device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=noise_device,
                          dtype=torch.float32)
        eps = eps.to(device=self.mean.device, dtype=self.mean.dtype)   # (B, C, H, W)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        """The most likely latent: the mean (what LDM uses for deterministic encoding)."""
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> Tensor:
        """KL(self || other) summed over C, H, W -> (B,); `other=None` means N(0, I).

        KL(N(m, v) || N(0, 1)) = 0.5 * sum(m^2 + v - 1 - log v).
        """
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = ((self.mean - other.mean).pow(2) / other.var + self.var / other.var
                     - 1.0 - self.logvar + other.logvar)
        return 0.5 * torch.sum(terms, dim=(1, 2, 3))

    def nll(self, sample: Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> Tensor:
        """Negative log-likelihood of `sample`, summed over `dims`.

        -log N(x; m, v) = 0.5 * (log(2 pi) + log v + (x - m)^2 / v).
        """
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        log_two_pi = math.log(2.0 * math.pi)
        terms = log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var
        return 0.5 * torch.sum(terms, dim=dims)
