"""Tiling: layouts, blending, the tiled UNet stand-in, the tiled VAE with whole-image GroupNorm
statistics, the seam test, memory bounds, the memory planner and the out-of-memory retry."""

import numpy as np
import pytest
import torch
from PIL import Image

from core import pipelines as P
from core.pipelines import memory
from core.pipelines.tiling import TileState, tiled
from core.pipelines.tiled_vae import tiled_apply
from core.pipelines.tiles import blend_weights, core_tiles, overlapping_tiles
from core.pipelines.vae import decoder_context, encoder_context
from tests.tiny_models import tiny_model


def _smooth_lr(side=32) -> Image.Image:
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
    return Image.fromarray((np.stack([xx, yy, 0.5 + 0 * xx], -1) * 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# Layouts and blending
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("H, W, tile, overlap, align", [(32, 48, 16, 4, 2), (40, 24, 16, 8, 8), (12, 12, 16, 4, 4)])
def test_overlapping_tiles_cover_with_overlap(H, W, tile, overlap, align):
    tiles = overlapping_tiles(H, W, tile, overlap, align)
    cover = np.zeros((H, W), int)
    for t in tiles:
        assert t.y0 % align == 0 and t.x0 % align == 0
        assert (t.height, t.width) == (min(tile, H), min(tile, W))
        cover[t.y0:t.y1, t.x0:t.x1] += 1
    assert cover.min() >= 1
    starts_y = sorted({t.y0 for t in tiles})
    for a, b in zip(starts_y, starts_y[1:]):
        assert a + min(tile, H) - b >= overlap                               # neighbours overlap enough


def test_core_tiles_partition_the_image():
    tiles = core_tiles(37, 50, 16, 5, align=1)
    owner = np.zeros((37, 50), int)
    for t in tiles:
        owner[t.cy0:t.cy1, t.cx0:t.cx1] += 1
        assert (t.y0, t.x0) == (max(0, t.cy0 - 5), max(0, t.cx0 - 5))
    assert (owner == 1).all()


def test_blending_reproduces_any_pointwise_model_exactly():
    """A model that works pixel by pixel must give the same output tiled or not: the blend weights
    are a partition of unity, and c_concat is cut like x."""
    class Pointwise:
        conditioning_key = "concat"
        alphas_cumprod = torch.linspace(0.99, 0.01, 10)
        parameterization = "eps"

        def parameters(self):
            return iter([torch.zeros(1)])

        def apply_model(self, x, t, cond):
            return x * 2 + cond["c_concat"][0][:, :1] + t.view(-1, 1, 1, 1)

    fake = Pointwise()
    fake.config = type("C", (), {"unet": type("U", (), {"channel_mult": (1, 2)})})()
    x = torch.randn(2, 3, 20, 28)
    c = {"c_concat": [torch.randn(2, 2, 20, 28)]}
    t = torch.tensor([3, 7])
    state = TileState(8)
    tiled_fn = tiled(8, 4, 2, state)(fake.apply_model)
    assert torch.allclose(tiled_fn(x, t, c), fake.apply_model(x, t, c), atol=1e-6)
    assert state.max_tile == (8, 8)
    w = blend_weights(overlapping_tiles(20, 28, 8, 4, 2)[0], 20, 28, 4)
    assert w.min() > 0 and w.max() == 1.0


# ---------------------------------------------------------------------------------------------
# Tiled VAE: whole-image GroupNorm statistics
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def sr_without_attention():
    """LDM-SR's VQ-f4 autoencoder with the (global) mid-block attention removed, so that a tile with
    enough context sees exactly what the whole image sees."""
    m = tiny_model("ldm_sr")
    m.first_stage_model.decoder.mid.attn_1 = torch.nn.Identity()
    m.first_stage_model.encoder.mid.attn_1 = torch.nn.Identity()
    return m


def test_tiled_decode_equals_untiled_with_shared_statistics(sr_without_attention):
    m = sr_without_attention
    z = torch.randn(1, 3, 16, 48, generator=torch.Generator().manual_seed(0))
    full = m.decode_first_stage(z).float()
    pad = decoder_context(m)
    assert pad < 24                                                          # tiles really are cut
    shared = tiled_apply(m.decode_first_stage, m.first_stage_model.decoder, z, (4, 1), 24, pad)
    local = tiled_apply(m.decode_first_stage, torch.nn.Module(), z, (4, 1), 24, pad)   # per-tile norms
    rel = lambda a: ((a - full).norm() / full.norm()).item()
    assert rel(shared) < 1e-4
    assert rel(local) > 0.02                                                 # what sharing fixes
    assert not any("forward" in n.__dict__ for n in m.first_stage_model.modules())     # patches removed


def test_tiled_encode_equals_untiled(sr_without_attention):
    m = sr_without_attention
    x = torch.rand(1, 3, 64, 192, generator=torch.Generator().manual_seed(1)) * 2 - 1
    full = m.encode_first_stage(x)
    tiled = tiled_apply(m.encode_first_stage, m.first_stage_model.encoder, x, (1, 4), 96,
                        encoder_context(m), 4)
    assert ((tiled - full).norm() / full.norm()).item() < 1e-4


def test_shared_statistics_remove_the_tone_shift_between_tiles():
    """With the real (attention) decoder, each tile's mean colour offset from the untiled decode
    varies much less across tiles when the GroupNorms share statistics."""
    m = tiny_model("ldm_sr")
    f, S = 4, 20
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, S * f), torch.linspace(-1, 1, S * f), indexing="ij")
    z = m.encode_first_stage(torch.stack([xx, yy, xx * yy])[None] * 0.8)     # a smooth picture
    full = m.decode_first_stage(z).float()
    tiles = core_tiles(S, S, 10, 6)

    def tone_spread(out):
        offsets = torch.stack([(out - full)[..., t.cy0 * f:t.cy1 * f, t.cx0 * f:t.cx1 * f].mean((0, 2, 3))
                               for t in tiles])                                # (tiles, 3)
        return offsets.std(0).mean().item()

    shared = tiled_apply(m.decode_first_stage, m.first_stage_model.decoder, z, (f, 1), 10, 6)
    local = tiled_apply(m.decode_first_stage, torch.nn.Module(), z, (f, 1), 10, 6)
    assert tone_spread(shared) < 0.6 * tone_spread(local)


# ---------------------------------------------------------------------------------------------
# The seam test and memory bounds of tiled upscaling
# ---------------------------------------------------------------------------------------------

def test_seam_tiled_upscale_agrees_with_untiled_and_shows_no_grid():
    m = tiny_model("ldm_sr")
    lr = _smooth_lr(32)
    whole = np.asarray(P.upscale(m, lr, tile=32, steps=3, seed=0, vae_tile=0), np.float32)
    tiled_image = P.upscale(m, lr, tile=16, overlap=8, steps=3, seed=0, vae_tile=0)
    tiled = np.asarray(tiled_image, np.float32)
    assert tiled_image.info["ldm_studio"]["tile"] == 16
    # 1. Agreement: the tiles' context is cut, so not identical, but close (mean |diff| ~ 1% of range).
    assert np.abs(whole - tiled).mean() < 0.02 * 255
    assert np.linalg.norm(whole - tiled) / np.linalg.norm(whole - whole.mean()) < 0.2
    # 2. No grid: the jump across a tile edge is no larger than across other latent-pixel edges.
    f = 4
    edges = sorted({t.x0 for t in overlapping_tiles(32, 32, 16, 8, 2)} - {0}
                   | {t.x1 for t in overlapping_tiles(32, 32, 16, 8, 2)} - {32})
    for axis in (0, 1):
        jumps = np.abs(np.diff(tiled, axis=axis)).mean(axis=(1 - axis, 2))  # jump between px j and j+1
        at_tile_edges = jumps[[e * f - 1 for e in edges]].mean()
        at_other_latent_edges = np.delete(jumps, [e * f - 1 for e in edges])[f - 1::f].mean()
        assert at_tile_edges < 1.15 * at_other_latent_edges, (axis, at_tile_edges, at_other_latent_edges)


def test_peak_work_is_bounded_by_the_tile_not_the_image():
    """The largest tensor the UNet and the decoder make is the same for a small and a large image:
    it depends on the tile only (hooks record every output)."""
    m = tiny_model("ldm_sr")
    largest = {}

    def record(name):
        def hook(module, args, out):
            largest[name] = max(largest.get(name, 0), out.numel())
        return hook

    hooks = [m.model.diffusion_model.register_forward_hook(record("unet"))]
    hooks += [mod.register_forward_hook(record("vae")) for mod in m.first_stage_model.decoder.modules()
              if isinstance(mod, torch.nn.Conv2d)]
    unet, vae = [], []
    for side in (16, 32):                                    # the tiled UNet through the pipeline
        largest.clear()
        out = P.upscale(m, _smooth_lr(side), tile=8, overlap=2, steps=1, seed=0, vae_tile=0, tile_batch=1)
        assert out.size == (side * 4, side * 4)
        unet.append(largest["unet"])
    for side in (24, 32):                                    # the tiled decoder: 8 + 2 x 2 context
        largest.clear()
        z = torch.randn(1, 3, side, side)
        tiled_apply(m.decode_first_stage, m.first_stage_model.decoder, z, (4, 1), 8, 2, stat_tiles=1)
        vae.append(largest["vae"])
    largest.clear()
    m.decode_first_stage(torch.randn(1, 3, 32, 32))
    untiled = largest["vae"]
    for h in hooks:
        h.remove()
    assert unet[0] == unet[1] == 3 * 8 * 8                   # one 8x8 tile per UNet call
    assert vae[0] == vae[1] < untiled / 4                    # (12 * 4)^2 px per channel at most


# ---------------------------------------------------------------------------------------------
# Memory planner and out-of-memory retry
# ---------------------------------------------------------------------------------------------

def test_planner_picks_the_largest_tile_that_fits():
    m = tiny_model("sd2")
    predict = [memory.unet_peak_bytes(m, t, t, 2) for t in (8, 16, 32, 64)]
    assert predict == sorted(predict) and predict[-1] > 10 * predict[0]      # grows with the tile area
    budget = memory.unet_peak_bytes(m, 40, 40, 2)
    chosen = memory.plan_tile(lambda t: memory.unet_peak_bytes(m, t, t, 2), budget, align=8, largest=128)
    fitting = [t for t in range(8, 129, 8) if memory.unet_peak_bytes(m, t, t, 2) <= budget]
    assert chosen == max(fitting) == 40
    assert memory.plan_tile(lambda t: 10 ** 12, 1, align=8, largest=64) == 8     # nothing fits: smallest
    # The documented model, written out: 5 activations of the widest full-size level (32 channels at
    # 512 px for a 64-latent tile of this f=8 VAE) + the mid attention's two 4096^2 float32 matrices.
    assert memory.vae_decode_peak_bytes(m, 64, 64, 1) == 4 * 5 * 32 * 512 * 512 + 2 * 4096 ** 2 * 4
    # The UNet's: skips + 16 x widest + attention (2 heads of 64 tokens at level 1 of the tiny sd2).
    skips = 32 * 64 + 2 * 32 * 64 + 2 * 64 * 16
    assert memory.unet_peak_bytes(m, 8, 8, 2) == 4 * 2 * (skips + 16 * 32 * 64) + 2 * 2 * 2 * 64 ** 2 * 4
    assert memory.available_memory("cpu") > 0


def test_out_of_memory_retries_with_smaller_tiles():
    calls = []

    def work(tile):
        calls.append(tile)
        if tile > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return tile

    with pytest.warns(UserWarning, match="retrying with"):
        assert memory.run_with_oom_retry(work, 64, align=8) == 16
    assert calls == [64, 32, 16]
    with pytest.raises(MemoryError, match="even with tile size 8"), pytest.warns(UserWarning):
        memory.run_with_oom_retry(lambda t: (_ for _ in ()).throw(RuntimeError(
            "DefaultCPUAllocator: can't allocate memory")), 16, align=8)
    with pytest.raises(RuntimeError, match="shape mismatch"):                # other errors pass through
        memory.run_with_oom_retry(lambda t: (_ for _ in ()).throw(RuntimeError("shape mismatch")), 16, 8)


def test_tiled_unet_shrinks_its_tile_on_out_of_memory():
    m = tiny_model("ldm_sr")
    real = m.apply_model

    def limited(x, t, cond):
        if x.shape[-1] > 8:
            raise torch.OutOfMemoryError("out of memory")
        return real(x, t, cond)

    m.apply_model = limited
    x, t = torch.randn(1, 3, 24, 24), torch.tensor([500])
    cond = {"c_concat": [torch.randn(1, 3, 24, 24)]}
    state = TileState(16)
    with pytest.warns(UserWarning, match="out of memory"):
        out = tiled(16, 4, 2, state)(limited)(x, t, cond)
    assert state.tile == 8 and state.max_tile == (8, 8) and out.shape == (1, 3, 24, 24)
