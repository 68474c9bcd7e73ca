"""core.speed: oneDNN prepacked convolutions and linear layers give the plain forward's numbers.

Tiny models (tests/tiny_models.py), packed in place, against the same model with plain kernels
(`plain_kernels()`), and against an untouched deep copy: float32 within 1e-5 relative error, bfloat16
within bf16 rounding where the CPU has native bf16. Also: same state_dict keys, repacking after an
in-place weight change (a LoRA merge), the plain path under autograd, and unpack.
"""

import copy

import pytest
import torch

from core import speed
from tests.tiny_models import example_inputs, tiny_model

needs_onednn = pytest.mark.skipif(not speed.packed_dtypes(), reason="torch without oneDNN: nothing is packed")


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def packed_sd2():
    plain = tiny_model("sd2")
    packed = copy.deepcopy(plain)
    return plain, packed, speed.pack_for_cpu(packed, min_weight=0)


@needs_onednn
def test_unet_and_decoder_match_plain_float32():
    plain, packed, swapped = packed_sd2()
    assert swapped > 0
    assert list(packed.state_dict()) == list(plain.state_dict())   # checkpoint keys unchanged
    x, t, _ = example_inputs(plain, "sd2")
    with torch.inference_mode():
        context = torch.randn(2, 77, plain.config.unet.context_dim, generator=torch.Generator().manual_seed(3))
        out_plain = plain.model.diffusion_model(x, t, context)
        out_packed = packed.model.diffusion_model(x, t, context)
        with speed.plain_kernels():
            out_switched = packed.model.diffusion_model(x, t, context)
        z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
        img_plain = plain.first_stage_model.decode(z)
        img_packed = packed.first_stage_model.decode(z)
    assert out_packed.is_contiguous()             # channels-last stays inside the UNet
    assert torch.equal(out_switched, out_plain)
    assert 0 < rel(out_packed, out_plain) < 1e-5
    assert rel(img_packed, img_plain) < 1e-5


@needs_onednn
@pytest.mark.skipif(torch.bfloat16 not in speed.packed_dtypes(), reason="no native bf16 on this CPU")
def test_unet_matches_plain_bfloat16():
    plain, packed, _ = packed_sd2()
    plain, packed = plain.to(torch.bfloat16), packed.to(torch.bfloat16)
    x, t, _ = example_inputs(plain, "sd2")
    context = torch.randn(2, 77, plain.config.unet.context_dim, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = tiny_model("sd2").model.diffusion_model(x, t, context)               # float32
        out_plain = plain.model.diffusion_model(x.bfloat16(), t, context.bfloat16())
        out_packed = packed.model.diffusion_model(x.bfloat16(), t, context.bfloat16())
    # bf16 has 8 bits of mantissa: packed and plain differ from float32 alike, and barely from each other.
    assert rel(out_packed, ref) < 1.5 * rel(out_plain, ref) + 1e-3
    assert rel(out_packed, out_plain) < 2e-2


@needs_onednn
def test_in_place_weight_change_repacks_and_autograd_runs_plain():
    layer = torch.nn.Linear(16, 8)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    model = torch.nn.Sequential(conv)
    speed.pack_for_cpu(layer, min_weight=0), speed.pack_for_cpu(model, min_weight=0)
    x, img = torch.randn(5, 16), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = layer(x)
        layer.weight.add_(0.5)                    # what apply_lora does (copy_ under no_grad)
        conv.weight.mul_(2.0)
        after, conv_after = layer(x), model(img)
    torch.testing.assert_close(after, torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(conv_after, torch.nn.functional.conv2d(img, conv.weight, conv.bias, padding=1),
                               rtol=1e-5, atol=1e-5)
    out = layer(x)                                # autograd: the plain torch op, gradients flow
    out.sum().backward()
    assert layer.weight.grad is not None and out.grad_fn is not None


@needs_onednn
def test_small_layers_stay_plain():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(256, 256))
    assert speed.pack_for_cpu(model) == 1                       # 4096 < 2**16 <= 65536 weights
    assert type(model[0]) is torch.nn.Linear and type(model[1]) is speed.PackedLinear


@needs_onednn
def test_unpack_restores_plain_classes_and_other_dtypes_fall_back():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2))
    assert speed.pack_for_cpu(model, min_weight=0) == 2
    assert type(model[0]) is speed.PackedConv2d and isinstance(model[0], torch.nn.Conv2d)
    double = copy.deepcopy(model).double()        # float64: not a packed dtype, the plain forward runs
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(double[0](x), torch.nn.functional.conv2d(x, double[0].weight, double[0].bias))
    speed.unpack(model)
    assert type(model[0]) is torch.nn.Conv2d and type(model[1]) is torch.nn.Linear


def test_packing_is_skipped_where_the_copies_would_not_fit(monkeypatch):
    """The packed copies double the packed weights' memory: only when they fit a third of what is free."""
    import core.pipelines.memory as memory
    model = torch.nn.Sequential(torch.nn.Linear(512, 256))                    # 2**17 weights, 512 KiB
    monkeypatch.setattr(memory, "available_memory", lambda device: 3 * 512 * 1024)
    assert speed.packing_fits(model)
    monkeypatch.setattr(memory, "available_memory", lambda device: 3 * 512 * 1024 - 1)
    assert not speed.packing_fits(model)


@needs_onednn
def test_winograd_copies_where_they_fit_else_direct_else_none(monkeypatch):
    """load_model's tiers (pack_as_it_fits): Winograd's transformed kernels (16/9 of the weight) where they
    fit a third of the free memory, else the direct convolution's packed copy, else no copy at all."""
    import core.pipelines.memory as memory
    weight = 256 * 256 * 9 * 4                                                 # bytes of one float32 kernel
    for free, kind, copies in ((3 * weight * 16 // 9, speed.WinogradConv2d, True),
                               (3 * weight * 16 // 9 - 1, speed.PackedConv2d, True),
                               (3 * weight - 1, torch.nn.Conv2d, False)):
        model = torch.nn.Sequential(torch.nn.Conv2d(256, 256, 3, padding=1))
        monkeypatch.setattr(memory, "available_memory", lambda device, free=free: free)
        assert speed.pack_as_it_fits(model) is copies
        assert type(model[0]) is kind
    bf16 = torch.nn.Sequential(torch.nn.Conv2d(256, 256, 3, padding=1)).bfloat16()
    assert speed.packing_fits(bf16)             # Winograd runs in float32 only: a bf16 copy is 1x


@needs_onednn
def test_geglu_fuses_gelu_and_product_into_its_two_halves():
    """PackedGEGLU runs value * GELU(gate) as two packed linears with oneDNN post-ops: the reference's
    numbers (value = the first half of proj, gate the second) up to float rounding, repacked after an
    in-place change of proj (a LoRA merge), plain under autograd, and GEGLU again after unpack."""
    from core.models.attention import GEGLU
    torch.manual_seed(0)
    geglu = GEGLU(64, 96)
    plain = copy.deepcopy(geglu)
    assert speed.pack_for_cpu(geglu, min_weight=0) == 2                  # the GEGLU and its proj
    assert type(geglu) is speed.PackedGEGLU and type(geglu.proj) is speed.PackedLinear
    x = torch.randn(2, 50, 64)
    value, gate = torch.nn.functional.linear(x.double(), plain.proj.weight.double(),
                                             plain.proj.bias.double()).chunk(2, dim=-1)
    exact = value * torch.nn.functional.gelu(gate)
    with torch.inference_mode():
        out = geglu(x)
    assert out.shape == (2, 50, 96) and rel(out, exact) < 1e-6
    assert rel(plain(x).detach(), exact) < 1e-6
    with torch.no_grad():
        geglu.proj.weight[96:].mul_(-1.0)                                # only the gate half changes
        plain.proj.weight[96:].mul_(-1.0)
    with torch.inference_mode():
        assert rel(geglu(x), plain(x)) < 1e-6
    out = geglu(x.requires_grad_())                                      # autograd: the plain forward
    assert out.grad_fn is not None
    if torch.bfloat16 in speed.packed_dtypes():
        with torch.inference_mode():
            bf16 = copy.deepcopy(geglu).bfloat16()(x.detach().bfloat16())
        assert bf16.dtype == torch.bfloat16 and rel(bf16, plain(x.detach()).detach()) < 1e-2
    speed.unpack(geglu)
    assert type(geglu) is GEGLU and type(geglu.proj) is torch.nn.Linear


class _CountMM(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the matrix products (aten.mm), fused attention kernels, oneDNN linear layers and
    convolutions that run inside the block."""

    def __init__(self):
        super().__init__()
        self.mm = self.sdpa = self.linear = self.conv = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.mm.default or func is torch.ops.aten.mm.out:
            self.mm += 1
        elif "scaled_dot_product" in func.name():
            self.sdpa += 1
        elif "_linear_pointwise" in func.name():
            self.linear += 1
        elif "_convolution_pointwise" in func.name():
            self.conv += 1
        return func(*args, **(kwargs or {}))


@needs_onednn
@pytest.mark.skipif(torch.bfloat16 not in speed.packed_dtypes(), reason="no native bf16 on this CPU")
def test_long_bf16_self_attention_runs_in_blocks_and_everything_else_as_before():
    """BlockedCrossAttention: bf16 self-attention over >= BLOCKED_ATTENTION_MIN_TOKENS tokens as blocks of
    matrix products, within bf16 rounding of the exact attention; float32, a short context, plain_kernels()
    and autograd run torch's SDPA as before (bit-identical to the plain module); unpack restores it."""
    from core.models.attention import CrossAttention
    torch.manual_seed(0)
    attn = CrossAttention(128, heads=2, dim_head=64)                  # self-attention, as attn1
    cross = CrossAttention(128, context_dim=32, heads=2, dim_head=64)  # as attn2
    with torch.no_grad():
        attn.to_q.weight.mul_(4.0)                                   # peaked attention: logits of std ~2
    plain = copy.deepcopy(attn)
    assert speed.pack_for_cpu(attn, min_weight=0) == 5               # the attention and its four linears
    speed.pack_for_cpu(cross, min_weight=0)
    assert type(attn) is speed.BlockedCrossAttention
    n = speed.BLOCKED_ATTENTION_MIN_TOKENS + 200                     # not a multiple of the block
    x, context = torch.randn(2, n, 128), torch.randn(2, 7, 32)
    exact = plain.double()(x.double()).detach()
    plain.float()
    bf16, plain16 = copy.deepcopy(attn).bfloat16(), copy.deepcopy(plain).bfloat16()
    with torch.inference_mode():
        with _CountMM() as count:
            out = bf16(x.bfloat16())
        assert count.sdpa == 0 and count.mm > 0
        reference = plain16(x.bfloat16())                            # torch's kernel, logits in float32
        assert out.dtype == torch.bfloat16 and out.shape == (2, n, 128)
        assert rel(out, exact) < 2e-2 and rel(out, exact) < 3 * rel(reference, exact)
        for run in (lambda: attn(x), lambda: bf16(x[:, :100].bfloat16()),          # float32; short
                    lambda: cross.bfloat16()(x.bfloat16(), context.bfloat16())):  # cross-attention
            with _CountMM() as count:
                run()
            assert count.sdpa == 1 and count.mm == 0
        assert torch.equal(attn(x), plain(x))
        with speed.plain_kernels():
            assert torch.equal(bf16(x.bfloat16()), reference)
    out = bf16(x.bfloat16().requires_grad_())                        # autograd: the plain forward
    assert out.grad_fn is not None
    speed.unpack(attn)
    assert type(attn) is CrossAttention


@needs_onednn
def test_long_feed_forward_runs_in_blocks_with_the_same_numbers():
    """BlockedFeedForward: over more than FEED_FORWARD_BLOCK tokens, blocks of rows through the same layers,
    bit-identical to the whole tensor at once; fewer tokens, autograd and plain_kernels() in one piece."""
    from core.models.attention import FeedForward
    torch.manual_seed(0)
    ff = FeedForward(64)
    speed.pack_for_cpu(ff, min_weight=0)
    assert type(ff) is speed.BlockedFeedForward
    calls = []
    ff.net[2].register_forward_hook(lambda module, args, out: calls.append(args[0].numel() // args[0].shape[-1]))
    x = torch.randn(2, speed.FEED_FORWARD_BLOCK + 300, 64)           # 2648 rows: blocks of 1024, 1024, 600
    with torch.inference_mode():
        out = ff(x)
        assert calls == [1024, 1024, 600]
        whole = ff.net(x)                                            # the same layers, all rows at once
        assert torch.equal(out, whole) and out.shape == x.shape
        calls.clear()
        ff(x[:, :500])                                               # 1000 rows: one piece
        with speed.plain_kernels():
            ff(x)
        assert [len(calls), calls[-1]] == [2, 2 * x.shape[1]]
    speed.unpack(ff)
    assert type(ff) is FeedForward


@needs_onednn
def test_packed_unet_keeps_activations_channels_last_from_its_input():
    """The packed UNet's input goes channels-last before conv_in (so its skips and concatenations are too),
    only in inference with the packed kernels; the output is NCHW-contiguous either way."""
    plain, packed, _ = packed_sd2()
    unet = packed.model.diffusion_model
    seen = []
    unet.input_blocks[0][0].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    x, t, _ = example_inputs(plain, "sd2")
    context = torch.randn(2, 77, plain.config.unet.context_dim)
    with torch.inference_mode():
        out = unet(x, t, context)
        with speed.plain_kernels():
            unet(x, t, context)
    unet(x, t, context)                                              # autograd records: left as it is
    assert seen == [True, False, False]
    assert out.is_contiguous() and x.is_contiguous()                 # the caller's tensor is not touched
    speed.unpack(packed)
    with torch.inference_mode():
        unet(x, t, context)
    assert seen[-1] is False


@needs_onednn
def test_without_room_for_copies_only_the_blocked_classes_are_swapped(monkeypatch, tmp_path):
    """load_model on a machine where the packed copies would not fit (SDXL in 23 GiB): layers stay plain,
    the copy-free blocked attention and feed-forwards still apply, the UNet's layouts are untouched."""
    import core.pipelines.memory as memory
    from core import load_model, save_model
    from core.models.attention import CrossAttention, FeedForward
    model = tiny_model("sd2")
    path = save_model(model, tmp_path / "tiny.safetensors", dtype=None)
    monkeypatch.setattr(memory, "available_memory", lambda device: 0)
    monkeypatch.setattr(speed, "MIN_PACKED_WEIGHT", 0)               # the tiny model's layers count too
    loaded = load_model(path)
    kinds = {type(m) for m in loaded.modules()}
    assert speed.BlockedCrossAttention in kinds and speed.BlockedFeedForward in kinds
    assert not kinds & {speed.PackedConv2d, speed.PackedLinear, speed.PackedGEGLU, CrossAttention, FeedForward}
    assert loaded.model.diffusion_model not in speed._HOOKS
    x, t, _ = example_inputs(model, "sd2")
    context = torch.randn(2, 77, model.config.unet.context_dim)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model.diffusion_model(x, t, context),
                                   model.model.diffusion_model(x, t, context), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_winograd_convolution_matches_float64_and_falls_back_where_it_does_not_apply(monkeypatch):
    """WinogradConv2d (F(2x2, 3x3)): 16 oneDNN products per block of tile rows and no convolution, within
    2e-6 of float64 (as the direct convolution); blocks smaller than the image (a partial last one
    included) give the same numbers. Odd sizes, bf16, autograd and plain_kernels() run the direct
    convolution; an in-place weight change repacks the transformed kernels."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    stride2, small = torch.nn.Conv2d(256, 256, 3, 2, 1), torch.nn.Conv2d(128, 256, 3, padding=1)
    model = torch.nn.Sequential(conv, stride2, small)
    speed.pack_for_cpu(model)
    assert [type(m) for m in model] == [speed.WinogradConv2d, speed.PackedConv2d, speed.PackedConv2d]
    exact = lambda x: torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    x = torch.randn(3, 256, 10, 14)                                  # 5 x 7 tiles of 2x2
    with torch.inference_mode():
        with _CountMM() as count:
            out = conv(x)
        assert (count.linear, count.conv) == (16, 0)
        assert out.shape == (3, 256, 10, 14) and out.is_contiguous(memory_format=torch.channels_last)
        assert rel(out, exact(x)) < 2e-6
        tile_row = 16 * 3 * 7 * 256 * 4                              # bytes of one row of transformed tiles
        monkeypatch.setattr(speed, "WINOGRAD_BLOCK_BYTES", 2 * tile_row)
        with _CountMM() as count:
            blocks = conv(x)                                         # rows 2 + 2 + 1
        assert count.linear == 3 * 16 and rel(blocks, exact(x)) < 2e-6
        for odd in (torch.randn(2, 256, 9, 8), torch.randn(2, 256, 8, 7)):
            with _CountMM() as count:
                out = conv(odd)
            assert (count.linear, count.conv) == (0, 1) and rel(out, exact(odd)) < 2e-6
        with speed.plain_kernels():
            assert torch.equal(conv(x), torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
        with torch.no_grad():
            conv.weight.mul_(2.0)                                    # a LoRA merge writes in place
        assert rel(conv(x), exact(x)) < 2e-6
        if torch.bfloat16 in speed.packed_dtypes():
            bf16 = copy.deepcopy(conv)
            bf16(x)
            with _CountMM() as count:
                bf16.bfloat16()(x.bfloat16())
            assert (count.linear, count.conv) == (0, 1)
            assert list(speed._PACKS[bf16]) == [None]                 # the float32 Winograd copy is dropped
    out = conv(x.requires_grad_())                                   # autograd: torch's convolution
    assert out.grad_fn is not None
    speed.unpack(model)
    assert [type(m) for m in model] == [torch.nn.Conv2d] * 3 and conv not in speed._PACKS


@needs_onednn
def test_unet_with_winograd_everywhere_matches_plain(monkeypatch):
    """The tiny SD2 UNet and decoder with every 3x3 stride-1 convolution as Winograd (the channel floor
    lowered to 0): within 1e-5 of the plain forward, as the direct packed kernels are."""
    monkeypatch.setattr(speed, "WINOGRAD_MIN_CHANNELS", 0)
    plain, packed, _ = packed_sd2()
    assert any(type(m) is speed.WinogradConv2d for m in packed.modules())
    x, t, _ = example_inputs(plain, "sd2")
    context = torch.randn(2, 77, plain.config.unet.context_dim, generator=torch.Generator().manual_seed(3))
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert rel(packed.model.diffusion_model(x, t, context), plain.model.diffusion_model(x, t, context)) < 1e-5
        assert rel(packed.first_stage_model.decode(z), plain.first_stage_model.decode(z)) < 1e-5
