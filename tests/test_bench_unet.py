"""bench/unet.py's SDXL layout without running it (a real run holds 10 GB): the memory guard and the
one-step inputs both implementations get; and its baselines (ours-unfused, ours-unblocked, ours-direct)
on a tiny model."""
import copy

import pytest
import torch

from bench.unet import check_memory, rel
from bench.unet_layouts import forward_fn, step_args, step_inputs
from core import speed
from tests.tiny_models import example_inputs, tiny_model

GIB = 2**30


def test_memory_guard_refuses_two_fp32_sdxl_models_and_allows_the_defaults():
    with pytest.raises(SystemExit, match=r"timing in fp32 \(2 models.*--dtypes bf16"):
        check_memory("sdxl", ["fp32", "bf16"], ["ours", "diffusers"], False, True, available=20 * GIB)
    check_memory("sdxl", ["bf16"], ["ours", "diffusers"], True, True, available=20 * GIB)   # 10.3 GB at most
    with pytest.raises(SystemExit, match="writing the weights"):
        check_memory("sdxl", ["bf16"], ["ours"], True, False, available=8 * GIB)
    check_memory("sd21", ["fp32", "bf16"], ["ours", "ours-plain", "diffusers"], True, True, available=12 * GIB)


def test_sdxl_step_inputs_carry_one_adm_vector_in_both_forms():
    inp = step_inputs("sdxl", "cpu", torch.float32, 8)
    assert inp["context"].shape == (2, 77, 2048) and inp["y"].shape == (2, 2816)
    assert torch.equal(inp["y"][:, :1280], inp["text_embeds"])
    # the crop (0, 0) block: sinusoid of 0, cosine first -> 128 ones then 128 zeros, twice
    crop = inp["y"][:, 1280 + 512:1280 + 1024].reshape(2, 2, 256)
    assert torch.equal(crop, torch.cat([torch.ones(128), torch.zeros(128)]).expand(2, 2, 256))
    assert [len(step_args(impl, inp)) for impl in ("ours", "ours-plain", "diffusers")] == [4, 4, 5]
    assert len(step_args("ours", step_inputs("sd21", "cpu", torch.float32, 8))) == 3


def test_ours_unfused_runs_the_plain_geglu_and_restores_the_fused_one():
    """bench/unet.py --impls ours-unfused: the fused-GEGLU lever's baseline on the same packed model."""
    if not speed.packed_dtypes():
        pytest.skip("torch without oneDNN: nothing is packed")
    m = tiny_model("sd2")
    plain = copy.deepcopy(m.model.diffusion_model)
    unet = m.model.diffusion_model
    speed.pack_for_cpu(unet, min_weight=0)
    fused = [mod for mod in unet.modules() if type(mod) is speed.PackedGEGLU]
    assert fused
    x, t, _ = example_inputs(m, "sd2")
    context = torch.randn(2, 77, m.config.unet.context_dim, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = plain(x, t, context)
        out_fused = forward_fn("ours", unet)(x, t, context)
        out_unfused = forward_fn("ours-unfused", unet)(x, t, context)
    assert all(type(mod) is speed.PackedGEGLU for mod in fused)
    assert rel(out_fused, ref) < 1e-5 and rel(out_unfused, ref) < 1e-5 and not torch.equal(out_fused, out_unfused)


def packed_tiny_unet(*kinds):
    """A packed tiny SD2 UNet, its modules of the packed classes `kinds` (each appending the class it runs
    as to `seen` at every forward), and one step's inputs."""
    m = tiny_model("sd2")
    unet = m.model.diffusion_model
    speed.pack_for_cpu(unet, min_weight=0)
    modules = [mod for mod in unet.modules() if type(mod) in kinds]
    assert modules
    seen = []
    for mod in modules:
        mod.register_forward_pre_hook(lambda mod, args: seen.append(type(mod)))
    x, t, _ = example_inputs(m, "sd2")
    return unet, modules, seen, (x, t, torch.randn(2, 77, m.config.unet.context_dim))


def test_ours_unblocked_runs_attention_and_feed_forwards_in_one_piece_then_restores_them():
    """bench/unet.py --impls ours-unblocked: the blocked attention / feed-forward levers' baseline."""
    if not speed.packed_dtypes():
        pytest.skip("torch without oneDNN: nothing is packed")
    from core.models.attention import CrossAttention, FeedForward
    kinds = (speed.BlockedCrossAttention, speed.BlockedFeedForward)
    unet, blocked, seen, inputs = packed_tiny_unet(*kinds)
    with torch.inference_mode():
        forward_fn("ours-unblocked", unet)(*inputs)
    assert seen and set(seen) <= {CrossAttention, FeedForward}
    assert all(type(mod) in kinds for mod in blocked)


def test_ours_direct_runs_the_winograd_convolutions_direct_then_restores_them(monkeypatch):
    """bench/unet.py --impls ours-direct: the Winograd lever's baseline on the same packed model."""
    if not speed.packed_dtypes():
        pytest.skip("torch without oneDNN: nothing is packed")
    monkeypatch.setattr(speed, "WINOGRAD_MIN_CHANNELS", 0)            # the tiny model's convolutions count
    unet, winograd, seen, inputs = packed_tiny_unet(speed.WinogradConv2d)
    with torch.inference_mode():
        direct = forward_fn("ours-direct", unet)(*inputs)
        assert set(seen) == {speed.PackedConv2d}
        seen.clear()
        assert rel(forward_fn("ours", unet)(*inputs), direct) < 1e-5
    assert set(seen) == {speed.WinogradConv2d}
    assert all(type(mod) is speed.WinogradConv2d for mod in winograd)
