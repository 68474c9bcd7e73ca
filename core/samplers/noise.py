"""Gaussian noise drawn on the CPU, so a seed gives the same image on every device.

CUDA and CPU generators produce different streams for the same seed; drawing float32 on the CPU
from a seeded torch.Generator and then moving the tensor makes x_T and every ancestral noise
independent of where the model runs (the reference samplers draw on CUDA, which is why their
seeds do not carry over to CPU).

A batch of images may carry one generator per image (a list): row i is drawn from generator i,
so image i of a batch equals the same image sampled alone from its own seed.
"""
import hashlib

import torch


def cpu_generator(seed: int | None) -> torch.Generator:
    """A CPU torch.Generator seeded by `seed`, or from fresh OS entropy when seed is None."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def stream_seed(seed: int, stream: str) -> int:
    """A seed for a named noise stream of its own ("noise_augmentation", "latent_noise"), derived
    from the image's seed so it is reproducible, but independent of x_T's stream (a stream that
    reused the seed would draw x_T's very numbers)."""
    digest = hashlib.sha256(f"{int(seed)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1                          # [0, 2^63)


def randn(shape, generator, device, dtype) -> torch.Tensor:
    """N(0, 1) of `shape`, drawn in float32 on the CPU from `generator` (the global CPU RNG when
    None; a list of shape[0] generators: one per row), then moved to `device` / `dtype`."""
    shape = tuple(shape)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}; give one per image.")
        rows = [torch.randn((1, *shape[1:]), generator=g, device="cpu", dtype=torch.float32) for g in generator]
        return torch.cat(rows).to(device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32).to(device=device, dtype=dtype)


def randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    """N(0, 1) shaped like x, drawn on the CPU (see `randn`).  # (B, C, H, W)"""
    return randn(x.shape, generator, x.device, x.dtype)
