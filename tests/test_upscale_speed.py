"""Upscale speed levers (issue 20 section 2) that change what runs by default: the upscaler's UNet
under bfloat16 autocast on CPUs with native bf16 (core.speed.cpu_bf16_autocast), falling back to
plain float32 elsewhere, packed kernels under that autocast and on every layer of a super-resolution
model, and the VAE attention handing SDPA contiguous q/k/v (its fused CPU
kernel; strided ones take the math path, 3x slower). Structure and numerics only; the timings and
the quality (PSNR on the evaluation photos) are bench/README.md's."""

import json

import pytest
import torch
import torch.nn.functional as F

from core import pipelines as P
from core import speed
from core.models.autoencoder import AttnBlock
from tests.tiny_models import tiny_model

native_bf16 = pytest.mark.skipif(torch.bfloat16 not in speed.packed_dtypes(), reason="no native bf16 on this CPU")


def _precisions_seen(m, **kwargs) -> dict[str, set]:
    """The autocast dtype (None: off) each part of m ran under during one small upscale."""
    seen = {"unet": set(), "decoder": set()}
    parts = {"unet": m.model.diffusion_model, "decoder": m.first_stage_model.decoder}

    def hook(name):
        return lambda *_: seen[name].add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                                         else None)
    handles = [part.register_forward_pre_hook(hook(name)) for name, part in parts.items()]
    try:
        lr = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(1)).mul(255).byte().numpy()
        P.upscale(m, lr, steps=2, seed=0, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return seen


@native_bf16
def test_the_upscaler_runs_its_unet_in_bf16_where_the_cpu_has_it(monkeypatch):
    m = tiny_model("ldm_sr")
    assert _precisions_seen(m) == {"unet": {None}, "decoder": {None}}    # a file that does not say so: float32
    m.metadata = {**(getattr(m, "metadata", None) or {}), "ldm_studio_defaults": json.dumps({"cpu_bf16": True})}
    # the decoder stays float32: in bf16 it cost 0.06 dB on a 1024x1024 shapes scene
    assert _precisions_seen(m) == {"unet": {torch.bfloat16}, "decoder": {None}}
    assert _precisions_seen(m, tile=8, overlap=2) == {"unet": {torch.bfloat16}, "decoder": {None}}
    monkeypatch.setattr(speed, "CPU_BF16", False)                   # LDM_CPU_BF16=0
    assert _precisions_seen(m) == {"unet": {None}, "decoder": {None}}


def test_bf16_autocast_only_for_float32_cpu_models_with_native_bf16(monkeypatch):
    def on(device, dtype):
        with speed.cpu_bf16_autocast(device, dtype):
            return torch.is_autocast_enabled("cpu")
    native = torch.bfloat16 in speed.packed_dtypes()
    assert on("cpu", torch.float32) == native
    assert not on("cpu", torch.bfloat16) and not on("cpu", torch.float16)
    assert not on("cuda", torch.float32) and not on(torch.device("cuda", 0), torch.float32)
    monkeypatch.setattr(speed, "_DTYPES", (torch.float32,))          # a CPU without native bf16
    assert not on("cpu", torch.float32)
    monkeypatch.setattr(speed, "_DTYPES", ())                        # torch without oneDNN
    assert not on("cpu", torch.float32)


def test_the_vae_attention_gives_sdpa_contiguous_inputs_and_the_reference_result(monkeypatch):
    torch.manual_seed(0)
    block = AttnBlock(32, groups=8).eval()
    x = torch.randn(2, 32, 6, 5)
    with torch.no_grad():       # the reference: softmax(q k^T / sqrt(C)) v over the H*W pixels
        hn = block.norm(x)
        q, k, v = (p(hn).flatten(2) for p in (block.q, block.k, block.v))                 # (B, C, HW)
        weights = torch.softmax(q.transpose(1, 2) @ k / 32 ** 0.5, dim=-1)                 # (B, HW, HW)
        expected = x + block.proj_out((v @ weights.transpose(1, 2)).reshape(x.shape))
    contiguous, sdpa = [], F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        contiguous.append(all(t.is_contiguous() for t in args[:3]))
        return sdpa(*args, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        out = block(x)
        block(x.contiguous(memory_format=torch.channels_last))       # as the decoder hands it on
    assert contiguous == [True, True]
    assert torch.allclose(out, expected, atol=1e-5)


@native_bf16
def test_packed_layers_under_bf16_autocast_match_autocasts_own_kernels():
    m = tiny_model("ldm_sr")
    speed.pack_for_cpu(m, min_weight=0)
    unet = m.model.diffusion_model
    x = torch.randn(1, 6, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        exact = unet(x, t)                                               # float32, packed
        with torch.autocast("cpu", torch.bfloat16):
            with speed.plain_kernels():
                plain = unet(x, t)                                       # autocast's own bf16 kernels
            packed = unet(x, t)                                          # bf16 packed copies
        again = unet(x, t)                                               # float32 again: repacked
    assert torch.equal(again, exact)
    assert packed.dtype == plain.dtype and not torch.equal(packed, plain)   # other kernels ran: oneDNN's packed
    err = lambda a: ((a.float() - exact).norm() / exact.norm()).item()  # noqa: E731
    assert 0 < err(packed) < 2e-2 and err(packed) < 2 * err(plain) + 1e-3
    assert ((packed.float() - plain.float()).norm() / plain.float().norm()).item() < 2e-2


def test_super_resolution_models_pack_every_layer(tmp_path):
    from core import load_model, save_model
    assert speed.min_packed_weight(tiny_model("ldm_sr")) == 0                # runs on large tiles
    assert speed.min_packed_weight(tiny_model("sd2")) == speed.MIN_PACKED_WEIGHT
    assert speed.min_packed_weight(torch.nn.Linear(2, 2)) == speed.MIN_PACKED_WEIGHT
    if not speed.packed_dtypes() or not speed.CPU_PACKED:
        return
    loaded = load_model(save_model(tiny_model("ldm_sr"), tmp_path / "sr.safetensors", dtype=torch.float32))
    layers = [mod for mod in loaded.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
    assert all(type(mod) in (speed.PackedConv2d, speed.PackedLinear) for mod in layers)
