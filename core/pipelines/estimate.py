"""How long a generation will take, before it starts: its floating-point work counted from the
model's config, divided by what this machine does per second.

    work = txt2img_work(cfg, width, height, steps, n, guided=True)   # WorkPlan: UNet and VAE FLOPs
    seconds = work.seconds(flops_per_second("cpu"))                  # a quick measurement, once

The work is counted exactly, not guessed: the UNet and the VAE decoder are built on the meta
device (no memory, no arithmetic) and run once under torch's FlopCounterMode at the requested size
(SDXL base, 1024x1024, one image: 6.8 TFLOP per UNet evaluation, 10.5 TFLOP for the decode). What
this machine achieves is measured once per process by float32 matrix products of UNet-like shapes;
a real network reaches less than that peak (memory-bound normalisations, attention's softmax), so
the caller may pass a calibration measured on an earlier run (`seconds_per_flop`) instead.
"""
import time
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from core.models.autoencoder import build_autoencoder
from core.models.unet import UNetModel

NETWORK_EFFICIENCY = 0.5        # a UNet / VAE forward reaches about half the matmul peak on a CPU (measured
                                # on the default models and the tiny SDXL; an estimate, corrected by calibration)


@dataclass(frozen=True)
class WorkPlan:
    unet_flops: float           # all UNet evaluations (CFG: two images per evaluation)
    vae_flops: float            # all decodes

    @property
    def flops(self) -> float:
        return self.unet_flops + self.vae_flops

    def seconds(self, flops_per_second: float | None = None, seconds_per_flop: float | None = None) -> float:
        """The time at a measured rate (efficiency applied) or from a calibration of an earlier run."""
        if seconds_per_flop is not None:
            return self.flops * seconds_per_flop
        return self.flops / (flops_per_second * NETWORK_EFFICIENCY)


@lru_cache(maxsize=64)
def unet_flops(unet_cfg, latent_h: int, latent_w: int, batch: int, context_tokens: int = 77) -> float:
    """FLOPs of one UNet forward on (batch, C, latent_h, latent_w), counted on the meta device."""
    with torch.device("meta"):
        unet = UNetModel(unet_cfg)
        x = torch.empty(batch, unet_cfg.in_channels, latent_h, latent_w)
        t = torch.zeros(batch, dtype=torch.long)
        kw = {}
        if unet_cfg.context_dim is not None:
            kw["context"] = torch.empty(batch, context_tokens, unet_cfg.context_dim)
        if unet_cfg.num_classes == "sequential":
            kw["y"] = torch.empty(batch, unet_cfg.adm_in_channels)
        elif unet_cfg.num_classes is not None:
            kw["y"] = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, t, **kw)
    return float(counter.get_total_flops())


@lru_cache(maxsize=64)
def vae_decode_flops(first_stage_cfg, latent_h: int, latent_w: int) -> float:
    """FLOPs of one decode of a (1, C, latent_h, latent_w) latent, counted on the meta device."""
    with torch.device("meta"):
        vae = build_autoencoder(first_stage_cfg)
        z = torch.empty(1, first_stage_cfg.embed_dim, latent_h, latent_w)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.decode(z)
    return float(counter.get_total_flops())


def txt2img_work(cfg, width: int, height: int, steps: int, n: int = 1, guided: bool = True) -> WorkPlan:
    """The work of txt2img: n images x steps UNet evaluations (two rows each with guidance) + n decodes."""
    f = cfg.first_stage.ddconfig.downsample_factor
    h, w = height // f, width // f
    per_step = unet_flops(cfg.unet, h, w, 2 if guided else 1)
    return WorkPlan(n * steps * per_step, n * vae_decode_flops(cfg.first_stage, h, w))


@lru_cache(maxsize=8)
def flops_per_second(device: str = "cpu", size: int = 512) -> float:
    """The best float32 matrix-product rate of a few (size x size) @ (size x size) products (about 0.1 s)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best


def describe(seconds: float) -> str:
    """"about 40 s" / "about 12 min" / "about 1.5 h"."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"
