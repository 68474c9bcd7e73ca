"""Upscale speed (issue 20 section 2): the planner picks the fastest UNet tile that fits, the
decoder's attention runs in windows so a large latent decodes in one pass, and the Upscale tab's
time estimate counts the decode (issue 19 item 9). Structure only; the timings are bench/upscale.py's."""
from types import SimpleNamespace

import pytest
import torch

from core import pipelines as P
from core.models.autoencoder import AttnBlock
from core.pipelines import memory
from core.pipelines.tiled_vae import SharedGroupNorms
from core.pipelines.tiles import core_tiles, overlapping_tiles
from core.pipelines.upscale import VAE_WINDOW
from core.pipelines.vae import decode_work
from tests.tiny_models import tiny_model
from ui.upscale import _seconds

SETTINGS = P.SamplingSettings("ddim", False, 10, 1.0, 0.0)


def test_the_planned_tile_is_the_cheapest_that_fits():
    m = tiny_model("ldm_sr")
    plan = P.plan_upscale(m.config, 96, 64, SETTINGS)
    costs = {}
    for t in range(8, 97, 4):                                 # every candidate the planner weighs
        n = len(overlapping_tiles(64, 96, t, t // 4 // 4 * 4, 4)) if t < 96 else 1
        costs[t] = memory.tile_cost(m.config, min(t, 64), min(t, 96), n)
    assert costs[plan.tile] == min(costs.values())
    assert plan.unet_work == memory.tile_cost(m.config, min(plan.tile, 64), min(plan.tile, 96), plan.tiles,
                                              plan.tile_batch)
    # A tight memory budget: the tile shrinks to what fits, and so does the batch of tiles per call.
    budget = memory.unet_peak_bytes(m.config, 16, 16, 1, torch.float32)
    tight = P.plan_upscale(m.config, 96, 64, SETTINGS, memory_budget=budget)
    assert tight.tile <= 16 and tight.tile_batch == 1 and tight.tiles > plan.tiles


def test_the_cost_model_charges_attention_and_calls():
    m = tiny_model("ldm_sr")
    per_px = [memory.unet_macs(m, t, t) / t ** 2 for t in (16, 64, 256)]
    assert per_px[0] < per_px[1] < per_px[2]                 # self-attention is quadratic in the tokens
    assert memory.tile_cost(m, 16, 16, 8, batch=4) < memory.tile_cost(m, 16, 16, 8, batch=1)


def test_windowed_attention_is_exact_for_one_window_and_close_for_many():
    m = tiny_model("ldm_sr")
    decoder = m.first_stage_model.decoder
    assert any(isinstance(mod, AttnBlock) for mod in decoder.modules())
    z = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    full = m.decode_first_stage(z)
    with SharedGroupNorms(decoder, window=24):
        one = m.decode_first_stage(z)
    with SharedGroupNorms(decoder, window=8, margin=2):
        windows = m.decode_first_stage(z)
    assert not any("forward" in mod.__dict__ for mod in decoder.modules())           # patches removed
    assert torch.equal(one, full)
    assert not torch.equal(windows, full)          # (on shapes-sr4x: 47-53 dB from `full`, weights/README.md)
    # Inside each window the attention's GroupNorm normalises with the statistics of its WHOLE input
    # (a window's own would shift its tone against its neighbours': seams).
    attn = decoder.mid.attn_1
    h = torch.randn(1, attn.norm.num_channels, 24, 24) + torch.linspace(-3, 3, 24)   # a ramp across
    seen = []
    hook = attn.norm.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    with SharedGroupNorms(decoder, window=8, margin=2):
        attn(h)
    hook.remove()
    whole = torch.nn.functional.group_norm(h, attn.norm.num_groups, attn.norm.weight, attn.norm.bias, attn.norm.eps)
    boxes = core_tiles(24, 24, 8, 2)
    assert len(seen) == len(boxes) == 9
    for t, (x, out) in zip(boxes, seen):
        assert torch.equal(x, h[..., t.y0:t.y1, t.x0:t.x1])
        assert torch.allclose(out, whole[..., t.y0:t.y1, t.x0:t.x1], atol=1e-5)


def test_the_plan_decodes_untiled_when_it_fits_and_counts_the_tiled_decode_dearer():
    m = tiny_model("ldm_sr")
    plan = P.plan_upscale(m.config, 64, 64, SETTINGS)
    assert plan.vae_tile == 0 and plan.vae_window == VAE_WINDOW
    assert plan.decode_work == plan.decoded_pixels
    budget = memory.vae_decode_peak_bytes(m.config, 40, 40, 1, torch.float32, plan.vae_window + 16)
    tiled = P.plan_upscale(m.config, 64, 64, SETTINGS, memory_budget=budget)
    assert 0 < tiled.vae_tile < 64
    # context margins plus one statistics pass per GroupNorm pair: several times the pixels
    assert tiled.decode_work > 3 * tiled.decoded_pixels
    assert decode_work(m, 64, 64, tiled.vae_tile, stat_tiles=1) < tiled.decode_work


@pytest.mark.parametrize("tile_batch", [1, 3])
def test_batched_tiles_give_the_same_image(tile_batch):
    m = tiny_model("ldm_sr")
    lr = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(2)).mul(255).byte().numpy()
    one = P.upscale(m, lr, tile=16, overlap=4, steps=2, seed=0, tile_batch=1)
    out = P.upscale(m, lr, tile=16, overlap=4, steps=2, seed=0, tile_batch=tile_batch)
    diff = torch.tensor(bytearray(one.tobytes())).int() - torch.tensor(bytearray(out.tobytes())).int()
    assert diff.abs().max() <= 1


def test_the_estimate_counts_sampling_and_decoding():
    m = tiny_model("ldm_sr")
    small = P.plan_upscale(m.config, 32, 32, SETTINGS)
    large = P.plan_upscale(m.config, 64, 64, SETTINGS)
    assert _seconds(None, small) is None                                    # before the first upscale
    last = SimpleNamespace(extra={"seconds_per_sampling_work": 2e-9, "seconds_per_decode_work": 3e-6})
    assert _seconds(last, large) == pytest.approx(2e-9 * large.sampling_work + 3e-6 * large.decode_work)
    only_decode = SimpleNamespace(extra={"seconds_per_sampling_work": 0.0, "seconds_per_decode_work": 1e-6})
    assert _seconds(only_decode, large) == pytest.approx(4 * _seconds(only_decode, small))
    assert large.sampling_work == large.steps * large.unet_work                # LDM-SR: no CFG halves
