"""Gaussian noise drawn on the CPU, so a seed gives the same image on every device.

CUDA and CPU generators produce different streams for the same seed; drawing float32 on the CPU
from a seeded torch.Generator and then moving the tensor makes x_T and every ancestral noise
independent of where the model runs (the reference samplers draw on CUDA, which is why their
seeds do not carry over to CPU).
"""
import torch


def cpu_generator(seed: int | None) -> torch.Generator:
    """A CPU torch.Generator seeded by `seed`, or from fresh OS entropy when seed is None."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def randn(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """N(0, 1) of `shape`, drawn in float32 on the CPU from `generator` (the global CPU RNG when
    None), then moved to `device` / `dtype`."""
    return torch.randn(tuple(shape), generator=generator, device="cpu",
                       dtype=torch.float32).to(device=device, dtype=dtype)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, 1) shaped like x, drawn on the CPU (see `randn`).  # (B, C, H, W)"""
    return randn(x.shape, generator, x.device, x.dtype)
