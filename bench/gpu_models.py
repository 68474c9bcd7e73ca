"""What bench/gpu_check.py runs on: the sizes of a full run and of a --quick one, and random-weight
models built on the device.

Full: Stability's released architectures (core/checkpoints/bundled_configs.py: SD 2.1 base, SDXL base)
at their real sizes. --quick: the tiny models of the test suite (tests/tiny_models.py, the same
families shrunk), at sizes scaled down so that every code path runs in seconds on a CPU. Weights are
random: bench/unet.py's seeded_init_ (every tensor non-zero, drawn on the device), text encoders and
VAEs included. The upscaler is the shipped weights/shapes-sr4x.safetensors in both modes.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.unet import BATCH, CONTEXT_LEN, inputs, seeded_init_  # noqa: E402

SHIPPED_TXT2IMG = ROOT / "weights" / "shapes-txt2img.safetensors"
SHIPPED_SR4X = ROOT / "weights" / "shapes-sr4x.safetensors"
PROMPT = "a photograph of an astronaut riding a horse on the moon"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run (latent sides are in latent pixels; images in pixels)."""
    name: str
    sd_latent: int           # SD 2.1 CFG step latents (64: a 512x512 image)
    sdxl_latent: int         # SDXL CFG step latents (128: 1024x1024)
    vae_sizes: tuple         # VAE decode outputs, pixels per side
    image_px: int            # the end-to-end SD 2.1 image
    image_steps: int         # its sampler steps
    upscale_out: int         # the tiled 4x upscale's output side
    upscale_steps: int | None  # None: the model's defaults
    upscale_tile: int | None   # UNet tile in input pixels; None: planned from memory
    txt2img_steps: int | None  # CPU-vs-GPU image: None = the shipped model's defaults
    warmup: int
    repeats: int             # timed calls of a step / a decode
    image_repeats: int       # timed end-to-end images
    upscale_repeats: int     # timed upscales


FULL = Plan("full", sd_latent=64, sdxl_latent=128, vae_sizes=(512, 1024), image_px=512, image_steps=50,
            upscale_out=2048, upscale_steps=None, upscale_tile=None, txt2img_steps=None,
            warmup=2, repeats=10, image_repeats=2, upscale_repeats=1)
QUICK = Plan("quick", sd_latent=8, sdxl_latent=16, vae_sizes=(64, 128), image_px=64, image_steps=4,
             upscale_out=128, upscale_steps=2, upscale_tile=16, txt2img_steps=4,
             warmup=1, repeats=2, image_repeats=1, upscale_repeats=1)


def sd21_config(plan: Plan):
    """SD 2.1 base (v2-inference.yaml), or the test suite's tiny sd2 under --quick."""
    if plan is FULL:
        from core.checkpoints.bundled_configs import sd2
        return sd2()
    return _tiny("sd2")


def sdxl_config(plan: Plan):
    """SDXL 1.0 base (sd_xl_base.yaml), or the test suite's tiny sdxl under --quick."""
    if plan is FULL:
        from core.checkpoints.bundled_configs import sdxl_base
        return sdxl_base()
    return _tiny("sdxl")


def _tiny(family: str):
    import yaml

    from core.checkpoints.compvis_yaml import config_from_yaml
    from tests.tiny_models import FAMILIES
    return config_from_yaml(yaml.safe_load(FAMILIES[family]))


def random_model(cfg, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A LatentDiffusion of `cfg` built on `device` (no CPU copy), every parameter drawn by
    seeded_init_, cast to `dtype` the way load_model casts (schedule buffers stay float32)."""
    from core.checkpoints.loader import _cast
    from core.models.diffusion import LatentDiffusion
    with torch.device(device):
        model = LatentDiffusion(cfg)
    seeded_init_(model, seed)
    return _cast(model, device, dtype).eval()


def random_unet(cfg, device: torch.device, seed: int = 0):
    """The float32 UNet of `cfg` alone (bench/unet.py's seeded_unet, built on `device`)."""
    from bench.unet import seeded_unet
    return seeded_unet(seed, cfg.unet, device)


def unet_inputs(unet_cfg, latent: int, device: torch.device, dtype: torch.dtype) -> tuple[tuple, dict]:
    """(args, kwargs) of one CFG step: batch 2 (cond and uncond), bench/unet.py's seeded inputs with
    the config's context width, and SDXL's ADM vector y when the UNet takes one."""
    context_dim = unet_cfg.context_dim
    if isinstance(context_dim, (list, tuple)):
        context_dim = context_dim[0]
    x, t, context = inputs(device, dtype, latent, context_dim=context_dim)
    kwargs = {"context": context}
    if unet_cfg.adm_in_channels:
        g = torch.Generator().manual_seed(2)
        kwargs["y"] = torch.randn(BATCH, unet_cfg.adm_in_channels, generator=g).to(device, dtype)
    return (x, t), kwargs


def describe(cfg) -> dict:
    """Parameter counts and shapes that say which model a figure belongs to."""
    u = cfg.unet
    return {"model_channels": u.model_channels, "channel_mult": list(u.channel_mult),
            "context_dim": u.context_dim, "adm_in_channels": u.adm_in_channels, "context_len": CONTEXT_LEN}


def parameters_m(module: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)
