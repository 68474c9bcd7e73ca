"""The first stage as the pipelines use it: latents <-> images, tiled when large, safe in float16.

* Tiling is decided by the memory planner (tile=None), forced off (tile=0) or set (tile=N, the
  core size in latent pixels); the tiled path shares GroupNorm statistics over the whole image
  (tiled_vae.py) and retries with smaller tiles when the device runs out of memory. Its cost is
  about (number of GroupNorms / 2 + 1) untiled runs (the statistics passes stop early), so it is
  used only when the untiled run does not fit in memory.
* A float16 / bfloat16 VAE can overflow to inf/NaN on some latents (the well-known "black image"
  problem of SD VAEs in half precision); decode then runs again in float32 and warns. It runs on a
  float32 COPY of the first stage (made once per model), never converting the shared model in place
  while another thread may be using it.
"""

import copy
import math
import threading
import warnings
import weakref

import torch

from core.pipelines.offload import use_part
from core.pipelines.memory import (budget_bytes, plan_tile, run_with_oom_retry, vae_decode_peak_bytes,
                                   vae_encode_peak_bytes)
from core.pipelines.tiled_vae import SharedGroupNorms, tiled_apply
from core.pipelines.tiles import core_tiles

MIN_TILE = 16           # latent pixels: the smallest core the planner / retry goes down to
# Tiles that measure the shared GroupNorm statistics: None = all of them (exact, the default); a
# number k = k tiles evenly spread (cheaper; only an estimate when content varies across the image).
STAT_TILES = None
# Attention windows (decode's `window`): each window's box has this many latent pixels of context
# on every side. Measured on shapes-sr4x (windows of 64, margins 0 / 8 / 13, and 32 / 8): within
# 0.04 dB PSNR of attention over the whole latent; 8 keeps the window seams invisible.
ATTENTION_MARGIN = 8


def decoder_context(m) -> int:
    """Latent pixels of context a decoder tile needs: the decoder's receptive-field radius (each 3x3
    conv adds one pixel at its own resolution; the mid-block attention is not counted). m: a model
    or its LatentDiffusionConfig."""
    dd = getattr(m, "config", m).first_stage.ddconfig
    levels = len(dd.ch_mult)
    r = 1 + 2 * 2                                               # conv_in, mid block's two ResnetBlocks
    for level in reversed(range(levels)):
        scale = 1 / 2 ** (levels - 1 - level)                   # latent pixels per pixel here
        r += (dd.num_res_blocks + 1) * 2 * scale + (scale / 2 if level else 0)
    r += 1 / 2 ** (levels - 1)                                  # conv_out
    return math.ceil(r)


def encoder_context(m) -> int:
    """Image pixels of context an encoder tile needs (its receptive-field radius, attention aside)."""
    dd = m.config.first_stage.ddconfig
    levels = len(dd.ch_mult)
    r = 1
    for level in range(levels):
        r += dd.num_res_blocks * 2 * 2 ** level + (2 ** level if level < levels - 1 else 0)
    r += (2 * 2 + 1) * 2 ** (levels - 1)                         # mid block, conv_out
    return r


def _first_stage_param(m):
    return next(m.first_stage_model.parameters())


class FirstStageView:
    """A first stage alone, as the decode path uses a model (config, first_stage_model,
    decode_first_stage): here a float32 copy of the model's, for the fp16-overflow fallback."""

    def __init__(self, m, first_stage):
        self.config, self.first_stage_model, self.scale_factor = m.config, first_stage, m.scale_factor

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z.float() / self.scale_factor)


_FLOAT32_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_COPYING = threading.Lock()


def float32_first_stage(m) -> FirstStageView:
    """The model's first stage in float32, copied once and kept while the model lives."""
    with _COPYING:
        if m not in _FLOAT32_COPIES:
            _FLOAT32_COPIES[m] = FirstStageView(m, copy.deepcopy(m.first_stage_model).float())
        return _FLOAT32_COPIES[m]


def plan_decode_tile(m, h: int, w: int, batch: int, budget: int | None = None, window: int | None = None,
                     dtype=None, device=None) -> int:
    """Latent core size for decoding (batch, C, h, w): 0 (untiled) when the whole decode fits.
    window: attention windows of that many latent pixels (decode's `window`), None = whole tiles.
    m: a model, or its LatentDiffusionConfig with the dtype and device it will run in."""
    if dtype is None:
        param = _first_stage_param(m)
        dtype, device = param.dtype, param.device
    budget = budget_bytes(device, budget)
    box = window and window + 2 * ATTENTION_MARGIN
    if vae_decode_peak_bytes(m, h, w, batch, dtype, box) <= budget:
        return 0
    pad = decoder_context(m)
    return plan_tile(lambda t: vae_decode_peak_bytes(m, t + 2 * pad, t + 2 * pad, batch, dtype, box),
                     budget, align=8, largest=max(h, w), smallest=MIN_TILE)


def decode_work(m, h: int, w: int, tile: int, stat_tiles: int | None = STAT_TILES) -> int:
    """Output pixels the decoder computes for an (h, w) latent with cores of `tile` (0: untiled):
    each tile's box with its context margin, and the statistics passes of the tiled path (each
    stops at its GroupNorm: about half a pass per norm for every measuring tile). For time estimates."""
    dd = getattr(m, "config", m).first_stage.ddconfig
    f = dd.downsample_factor
    if not tile or tile >= max(h, w):
        return h * w * f * f
    tiles = core_tiles(h, w, tile, decoder_context(m))
    norms = 2 * 2 + (dd.attn_type != "none") + len(dd.ch_mult) * (dd.num_res_blocks + 1) * 2 + 1
    measured = len(tiles) if stat_tiles is None else min(stat_tiles, len(tiles))
    boxes = sum(t.height * t.width for t in tiles) / len(tiles)
    return int(boxes * (len(tiles) + measured * norms / 2) * f * f)


def _decode_once(m, z, tile, stat_tiles, on_tile, window):
    h, w = z.shape[-2:]
    if tile is None:
        tile = plan_decode_tile(m, h, w, z.shape[0], window=window)
    if not tile or tile >= max(h, w):
        with SharedGroupNorms(m.first_stage_model.decoder, window, ATTENTION_MARGIN):
            return m.decode_first_stage(z).float()

    def run(t):
        f = m.config.first_stage.ddconfig.downsample_factor
        return tiled_apply(m.decode_first_stage, m.first_stage_model.decoder, z, (f, 1), t,
                           decoder_context(m), 1, stat_tiles, on_tile, window, ATTENTION_MARGIN)
    return run_with_oom_retry(run, tile, 8, MIN_TILE, what="VAE tile", device=z.device)


@torch.no_grad()
def decode(m, z: torch.Tensor, tile: int | None = None, stat_tiles: int | None = STAT_TILES,
           on_tile=None, window: int | None = None) -> torch.Tensor:
    """Latent (B, C, h, w) -> float32 image (B, 3, h*f, w*f) in about [-1, 1].

    tile: None = the planner decides (untiled when it fits), 0 = untiled, N = cores of N latent px.
    stat_tiles: tiles that measure the shared GroupNorm statistics (None = all: exact).
    on_tile(done, total): progress of the tiled path.
    window: the decoder's self-attention within windows of this many latent pixels (each seeing
        ATTENTION_MARGIN more around it): linear instead of quadratic in the area, so a large latent
        decodes untiled, with exact GroupNorm statistics, in one pass. None = over the whole
        (tile), as the reference decodes.
    """
    use_part(m, "vae")                                                      # --medvram: the VAE onto the GPU
    x = _decode_once(m, z, tile, stat_tiles, on_tile, window)
    dtype = _first_stage_param(m).dtype
    if dtype in (torch.float16, torch.bfloat16) and not torch.isfinite(x).all():
        warnings.warn(f"the VAE decoder overflowed in {dtype} (NaN/inf); decoding again in float32",
                      stacklevel=3)
        x = _decode_once(float32_first_stage(m), z.float(), tile, stat_tiles, on_tile, window)
    return x


@torch.no_grad()
def encode(m, x: torch.Tensor, tile: int | None = None, stat_tiles: int | None = STAT_TILES,
           on_tile=None) -> torch.Tensor:
    """Image (B, 3, H, W) in [-1, 1] (H, W multiples of f) -> latent (B, C, H/f, W/f), scaled by
    scale_factor; the KL posterior mean (deterministic). tile: core size in latent pixels."""
    use_part(m, "vae")
    param = _first_stage_param(m)
    f = m.config.first_stage.ddconfig.downsample_factor
    x = x.to(param.device, param.dtype)
    H, W = x.shape[-2:]
    if tile is None:
        budget = budget_bytes(param.device)
        if vae_encode_peak_bytes(m, H, W, x.shape[0], param.dtype) <= budget:
            tile = 0
        else:
            pad = encoder_context(m)
            tile = plan_tile(lambda t: vae_encode_peak_bytes(m, t * f + 2 * pad, t * f + 2 * pad,
                                                             x.shape[0], param.dtype),
                             budget, align=8, largest=max(H, W) // f, smallest=MIN_TILE)
    if not tile or tile * f >= max(H, W):
        return m.encode_first_stage(x)

    def run(t):
        return tiled_apply(m.encode_first_stage, m.first_stage_model.encoder, x, (1, f), t * f,
                           encoder_context(m), f, stat_tiles, on_tile).to(param.dtype)
    return run_with_oom_retry(run, tile, 8, MIN_TILE, what="VAE tile", device=x.device)
