"""CPU inference speed: convolutions and linear layers on oneDNN with prepacked weights.

torch's eager `F.conv2d` / `F.linear` on the CPU hand a plain (OIHW / OI) weight to oneDNN, which
reorders it into its blocked layout on EVERY call, and an NCHW activation into and out of that layout
around every convolution. `torch.compile`'s freezing pass avoids both by prepacking each weight once
(`mkldnn._reorder_convolution_weight`, `_reorder_linear_weight`) and calling
`mkldnn._convolution_pointwise` / `_linear_pointwise` on channels-last activations; this module does
the same in eager mode, with no compile step:

    PackedConv2d, PackedLinear   nn.Conv2d / nn.Linear subclasses; same parameters, same state_dict
                                 keys; on the CPU, in inference (no autograd), in float32 or bfloat16
                                 (bfloat16 only where oneDNN has native bf16), they run the packed
                                 kernel, and the plain torch forward otherwise; a float32 layer under
                                 CPU autocast to bf16 runs a bf16 packed copy (cpu_bf16_autocast).
    WinogradConv2d               a PackedConv2d for 3x3 convolutions of >= 256 channels in and out: in
                                 float32, Winograd F(2x2, 3x3), 16 oneDNN matrix products on transformed
                                 tiles instead of the direct convolution (2.25x fewer multiplications).
    PackedGEGLU                  the transformers' gated feed-forward (GEGLU) as two packed linears,
                                 GELU and the product fused into them as oneDNN post-ops.
    BlockedFeedForward           a feed-forward over more than FEED_FORWARD_BLOCK tokens in blocks of rows,
                                 so its 4x-wide inner activations stay in cache (bit-identical).
    BlockedCrossAttention        bfloat16 self-attention over >= BLOCKED_ATTENTION_MIN_TOKENS tokens as
                                 blocks of oneDNN bf16 matrix products and a softmax, logits in bf16 (torch's
                                 CPU flash kernel runs bf16 no faster than float32 without AMX).
    pack_for_cpu(model)          swaps every Conv2d / Linear / GEGLU / FeedForward / CrossAttention of
                                 `model` to those classes in place, and hooks the UNet so that its input
                                 goes channels-last before conv_in and its output leaves contiguous:
                                 channels-last activations throughout, inside only.

Measured on a 2-core AMD EPYC (AVX512-BF16, no AMX), SD 2.1 UNet and KL-f8 decoder: bench/README.md.
The packed weight is made at the first forward and remade whenever the weight changes (LoRA merges
write the weight in place, which bumps its version), so the numbers computed are always those of the
current weights; it is a second copy of the weight (memory: weights x 2 while packed; a Winograd
convolution's 16 transformed kernels: 16/9 of its weight). Results equal the
plain forward's up to float rounding (oneDNN picks another summation order: relative error ~1e-6 in
float32 per layer; tests/test_speed.py).

`CPU_PACKED` is the one switch: `load_model` packs every CPU model when it is true and the copies fit
in a third of the available memory (`pack_as_it_fits`: with Winograd's copies where they fit, else with
the direct convolutions', else only the copy-free classes; the app, the CLI, the pipelines and the
benches all load through it; super-resolution models pack every layer, min_packed_weight). `LDM_CPU_PACKED=0`
in the environment turns it off. `CPU_BF16` (`LDM_CPU_BF16=0` off) lets the upscaler run float32
models under bf16 autocast where the CPU has native bf16.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from core.models.attention import GEGLU, CrossAttention, FeedForward

CPU_PACKED = os.environ.get("LDM_CPU_PACKED", "1") != "0"
# Layers with smaller weights stay plain: there the per-call weight reorder that packing saves is
# small, while channels-last GroupNorm (~3-9x slower than NCHW at 64-128 channels, 4x4-16x16) and the
# packed linear's fixed cost (16 vs 27 us at 154x64x64) lose more (1 thread, 2-core AMD EPYC). At
# 2**16 the shapes models stay plain and every SD layer but conv_in / out.2 is packed.
MIN_PACKED_WEIGHT = 2 ** 16


def min_packed_weight(model: nn.Module) -> int:
    """The packing threshold for `model`: MIN_PACKED_WEIGHT, or 0 (every layer) for a super-resolution
    model. Those run on the upscaler's large tiles (64-256 latent pixels a side), where the reasons above
    do not hold and channels-last throughout wins: shapes-sr4x at a 256x256 latent, 1 thread, UNet step
    2.27 -> 1.98 s in float32 and 1.60 -> 1.43 s under bf16 autocast; decode 9.3 -> 7.3 s and 5.8 -> 4.2 s."""
    from core.capabilities import capabilities      # here: core.capabilities imports the model configs
    try:
        upscaler = capabilities(model).serves("upscale")
    except TypeError:                                 # not a LatentDiffusion / autoencoder
        return MIN_PACKED_WEIGHT
    return 0 if upscaler else MIN_PACKED_WEIGHT


def packed_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes the packed kernels run here: float32 when torch has oneDNN, plus bfloat16 when the
    CPU computes bf16 natively (AVX512-BF16 or AMX; emulated bf16 would be slower than plain)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return ()
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (torch.float32, torch.bfloat16)
    return (torch.float32,)


_DTYPES = packed_dtypes()
# bfloat16 autocast for float32 models on CPUs with native bf16 (cpu_bf16_autocast); LDM_CPU_BF16=0 turns it off.
CPU_BF16 = os.environ.get("LDM_CPU_BF16", "1") != "0"


def cpu_bf16_autocast(device, dtype: torch.dtype, enabled: bool = True):
    """torch.autocast to bfloat16 for a float32 model on a CPU that computes bf16 natively (AVX512-BF16
    or AMX, packed_dtypes), else a no-op context: convolutions, linear layers and attention run in bf16,
    normalisations and the caller's arithmetic outside the model in float32. For the steps whose
    quality was measured in bf16: `enabled` is the model's `cpu_bf16` default (its file says so:
    shapes-sr4x's denoising, bench/README.md); CPU_BF16 False turns it off everywhere."""
    if (enabled and CPU_BF16 and torch.device(device).type == "cpu" and dtype == torch.float32
            and torch.bfloat16 in _DTYPES):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


_plain = threading.local()  # plain_kernels() sets .on for the calling thread


@contextlib.contextmanager
def plain_kernels():
    """Run packed models with torch's plain kernels inside the block (comparisons in tests and benches);
    the packed weights are kept for afterwards."""
    before = getattr(_plain, "on", False)
    _plain.on = True
    try:
        yield
    finally:
        _plain.on = before


def _run_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype a packed kernel runs this call in, or None for torch's plain forward: inference on the
    CPU in a packed dtype, input and weight alike; under CPU autocast to bfloat16 (cpu_bf16_autocast),
    a float32 layer runs in bf16 as autocast's convolution would, from a bf16 packed copy."""
    if getattr(_plain, "on", False) or x.device.type != "cpu" or weight.device.type != "cpu":
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        ok = dtype == torch.bfloat16 and dtype in _DTYPES and weight.dtype == torch.float32
        return dtype if ok and x.dtype in (torch.float32, dtype) else None
    return x.dtype if x.dtype == weight.dtype and x.dtype in _DTYPES else None


# module -> {part: (key, packed weight, bias in the run dtype)} (part None: the whole weight). Outside the
# module, so that copy.deepcopy and state_dict never see the opaque oneDNN tensors; a copy has new storage,
# so it packs its own at its first forward.
_PACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HOOKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # boundary module -> its hook handles


def _version_key(t: torch.Tensor) -> tuple:
    return t.data_ptr(), 0 if t.is_inference() else t._version, t.dtype


def _packed_weight(module: nn.Module, pack, dtype: torch.dtype,
                   part: tuple[int, int] | str | None = None) -> tuple:
    """(packed weight, bias) in `dtype`, the weight made by pack(weight in dtype) now if it changed since
    the last one (or was packed in another dtype). `part`, packed and cached apart: (start, stop) only
    those output features (GEGLU's value and gate halves); a name: another packing of the whole weight
    (WinogradConv2d's transformed kernels beside PackedConv2d's).

    A new tensor, a move, a cast or an in-place write (weight._version) all change the key, and a repack
    drops the module's packs of the old key (a float32 Winograd copy once the layer runs in bf16). Inference
    tensors (made under torch.inference_mode) have no version counter; they can only be written inside
    inference_mode, which nothing here does."""
    weight, bias = module.weight, module.bias
    key = (_version_key(weight), dtype, None if bias is None else _version_key(bias))
    packs = _PACKS.setdefault(module, {})
    cached = packs.get(part)
    if cached is None or cached[0] != key:
        for stale in [p for p, c in packs.items() if c[0] != key]:   # packs of an earlier weight or dtype
            del packs[stale]
        if isinstance(part, tuple):
            weight, bias = weight[part[0]:part[1]], None if bias is None else bias[part[0]:part[1]]
        cached = (key, pack(weight.detach().to(dtype).contiguous()),
                  None if bias is None else bias.detach().to(dtype).contiguous())
        packs[part] = cached
    return cached[1], cached[2]


class PackedConv2d(nn.Conv2d):
    """nn.Conv2d whose CPU inference runs oneDNN on a prepacked weight and channels-last activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H', W')
        dtype = _run_dtype(x, self.weight)
        if dtype is None or x.dim() != 4 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        # The input size is only a hint for the blocked layout; any size runs on the result.
        packed, bias = _packed_weight(self, lambda w: torch.ops.mkldnn._reorder_convolution_weight(
            w, list(self.padding), list(self.stride), list(self.dilation), self.groups, list(x.shape)), dtype)
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)  # a no-op after the first packed conv
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed, bias, list(self.padding), list(self.stride), list(self.dilation),
            self.groups, "none", [], "")


# 3x3 convolutions (stride 1, padding 1) with at least this many input and output channels run as Winograd
# F(2x2, 3x3) (WinogradConv2d): 2.25x fewer multiplications, measured faster from 256 channels up (at 128
# the transforms cost as much as they save).
WINOGRAD_MIN_CHANNELS = 256
WINOGRAD_BLOCK_BYTES = 16 * 2 ** 20   # transformed input tiles per block of tile rows
# The one dtype Winograd runs in: in bf16 it rounds 4x more than the direct convolution (bench/README.md).
WINOGRAD_DTYPE = torch.float32
# F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): a 4x4 input tile d
# and a 3x3 kernel g give the 2x2 output tile A^T [(G g G^T) * (B^T d B)] A.
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _winograd_in(d: list[torch.Tensor], out: list[torch.Tensor]) -> None:
    """B^T d along one axis: four strided views of the input rows (or columns) -> four transformed ones."""
    torch.sub(d[0], d[2], out=out[0])
    torch.add(d[1], d[2], out=out[1])
    torch.sub(d[2], d[1], out=out[2])
    torch.sub(d[1], d[3], out=out[3])


def _winograd_out(m: list[torch.Tensor], out: list[torch.Tensor]) -> None:
    """A^T m along one axis: four transformed products -> the two outputs of a tile."""
    torch.add(m[0], m[1], out=out[0])
    out[0] += m[2]
    torch.sub(m[1], m[2], out=out[1])
    out[1] -= m[3]


def _winograd_pack(weight: torch.Tensor, rows: int) -> list[torch.Tensor]:
    """(Cout, Cin, 3, 3) -> the 16 transformed kernels G g G^T (component (i, j) at 4i + j), each a
    (Cout, Cin) linear weight prepacked for oneDNN. Summed in float64 and rounded once, one component at
    a time: besides the result, one (Cout, Cin) float64 matrix at a time (SD 2.1's largest kernel: 25 MiB;
    all 16 at once took 930 MiB)."""
    g = _WINOGRAD_G
    kernels = []
    for i in range(4):
        for j in range(4):
            u = torch.zeros(weight.shape[:2], dtype=torch.float64)
            for k in range(3):
                for l in range(3):
                    if g[i][k] * g[j][l]:                          # 0, +-1/4, +-1/2 or 1: exact in float64
                        u.add_(weight[:, :, k, l], alpha=g[i][k] * g[j][l])
            kernels.append(torch.ops.mkldnn._reorder_linear_weight(u.to(weight.dtype), rows))
    return kernels


def _view(buffer: torch.Tensor, *shape: int) -> torch.Tensor:
    """The first elements of a flat buffer as a contiguous tensor of `shape`."""
    return buffer[:torch.Size(shape).numel()].view(shape)


class WinogradConv2d(PackedConv2d):
    """A PackedConv2d (3x3, stride 1, padding 1, at least WINOGRAD_MIN_CHANNELS in and out) whose float32
    CPU inference on even-sized inputs runs as Winograd F(2x2, 3x3): the padded input is cut into 4x4 tiles
    overlapping by 2, each transformed (B^T d B, additions only), the 16 components multiplied by the
    transformed kernels as 16 oneDNN matrix products of (tiles, Cin) x (Cin, Cout), and transformed back
    (A^T m A) into the 2x2 output tiles, written channels-last. It goes in blocks of tile rows, each padded
    on its own (no padded copy of the whole input), whose transformed tiles take about WINOGRAD_BLOCK_BYTES.
    SD 2.1 sizes, 2 threads: 0.55-0.73 of the direct convolution's time; relative error to float64 5e-7 to
    9e-7 against the direct convolution's 1e-6 (bench/README.md).
    Anything else (bfloat16, odd sizes, autograd, other devices) runs PackedConv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        if (_run_dtype(x, self.weight) != WINOGRAD_DTYPE or x.dim() != 4 or x.shape[2] % 2 or x.shape[3] % 2):
            return super().forward(x)
        b, c, h, w = x.shape
        co, th, tw = self.out_channels, h // 2, w // 2
        k = max(1, min(th, WINOGRAD_BLOCK_BYTES // (16 * b * tw * c * x.element_size())))  # tile rows per block
        kernels, bias = _packed_weight(self, lambda u: _winograd_pack(u, b * k * tw), x.dtype, part="winograd")
        pixels = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)   # (B, H, W, Cin) view
        out = x.new_empty(b, th, 2, tw, 2, co)                      # (B, H, W, Cout): channels-last
        rows_buf, tiles_buf = x.new_empty(4 * b * k * (w + 2) * c), x.new_empty(16 * b * k * tw * c)
        half_buf = x.new_empty(8 * b * k * tw * co)
        for r0 in range(0, th, k):
            n = min(k, th - r0)
            rows, tiles = _view(rows_buf, 4, b, n, w + 2, c), _view(tiles_buf, 4, 4, b, n, tw, c)
            lo, hi = 2 * r0 - 1, 2 * (r0 + n) + 1                     # the block's input rows, padding included
            padded = F.pad(pixels[:, max(lo, 0):min(hi, h)], (0, 0, 1, 1, max(-lo, 0), max(hi - h, 0)))
            _winograd_in([padded[:, i:i + 2 * n:2] for i in range(4)], list(rows))
            _winograd_in([rows[:, :, :, i:i + 2 * tw:2] for i in range(4)], list(tiles.unbind(1)))
            flat = tiles.view(16, b * n * tw, c)
            # The bias goes into component (1, 1): it enters each of the four outputs once, with sign +.
            m = [torch.ops.mkldnn._linear_pointwise(flat[i], kernels[i], bias if i == 5 else None, "none", [], "")
                 .view(b, n, tw, co) for i in range(16)]
            half = _view(half_buf, 2, 4, b, n, tw, co)
            for j in range(4):
                _winograd_out(m[j::4], [half[0, j], half[1, j]])
            block = out[:, r0:r0 + n]
            for i in range(2):
                _winograd_out(list(half[i]), [block[:, :, i, :, 0], block[:, :, i, :, 1]])
        return out.view(b, h, w, co).permute(0, 3, 1, 2)


class PackedLinear(nn.Linear):
    """nn.Linear whose CPU inference runs oneDNN on a prepacked weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., Din) -> (..., Dout)
        dtype = _run_dtype(x, self.weight)
        if dtype is None or x.dim() < 2:
            return super().forward(x)
        rows = x.numel() // x.shape[-1]  # a hint for the layout, as for the convolution
        packed, bias = _packed_weight(self, lambda w: torch.ops.mkldnn._reorder_linear_weight(w, rows), dtype)
        return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, bias, "none", [], "")


class PackedGEGLU(GEGLU):
    """GEGLU whose CPU inference runs its projection's two halves as packed linears with the rest fused in:
    GELU(gate) as the gate's post-op, value * that as the value's, so the output is written once instead of
    a projection twice as wide, a GELU and a product over it (SD 2.1, 2x4096 tokens, 320 -> 2x1280,
    2 threads: 150 -> 108 ms in float32, 41 -> 36 ms in bf16; tests/test_speed.py checks the numbers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., Din) -> (..., Dout)
        proj = self.proj
        dtype = _run_dtype(x, proj.weight)
        if dtype is None or x.dim() < 2:
            return super().forward(x)
        rows, half = x.numel() // x.shape[-1], proj.out_features // 2
        pack = lambda w: torch.ops.mkldnn._reorder_linear_weight(w, rows)  # noqa: E731
        value_w, value_b = _packed_weight(proj, pack, dtype, part=(0, half))
        gate_w, gate_b = _packed_weight(proj, pack, dtype, part=(half, 2 * half))
        x = x.to(dtype)
        gate = torch.ops.mkldnn._linear_pointwise(x, gate_w, gate_b, "gelu", [], "none")   # exact erf GELU
        return torch.ops.mkldnn._linear_pointwise.binary(x, gate, value_w, value_b, "mul")


# Self-attention over at least this many tokens runs in blocks in bfloat16 (BlockedCrossAttention):
# SD 2.1, 2 threads, 2x5 heads x 4096 tokens 293 -> 167 ms, 2x10 x 1024 36 -> 23 ms; at 256 tokens and
# for the 77-token cross-attention torch's kernel is as fast or faster (bench/README.md).
BLOCKED_ATTENTION_MIN_TOKENS = 1024


class BlockedCrossAttention(CrossAttention):
    """CrossAttention whose long bfloat16 self-attention on the CPU runs as blocks of matrix products.

    torch's CPU flash-attention kernel computes bfloat16 attention no faster than float32 on a CPU without
    AMX. Here each head's queries go in blocks of `rows` (about 2 MiB of logits): logits = q k^T as one
    oneDNN bf16 product, softmax, then times v, every product on native bf16 dot products. The logits
    are rounded to bfloat16 before the softmax, as the CompVis SD1 attention computes them in the model's
    dtype (torch's kernel keeps them in float32): relative error of the attention to float64 1.3e-2
    against 5.6e-3 (logits of std 2), and of a whole SD 2.1 UNet forward in bf16 to float32 see
    bench/README.md. Everything else (float32, autograd, cross-attention, short sequences, other
    devices, plain_kernels()) runs the plain CrossAttention."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: (B, h, N, d), k and v: (B, h, L, d) -> (B, N, h*d)
        b, h, n, d = q.shape
        length = k.shape[2]
        if length < BLOCKED_ATTENTION_MIN_TOKENS or _run_dtype(q, self.to_q.weight) != torch.bfloat16:
            return super().attend(q, k, v)
        out = q.new_empty(b, n, h, d)                    # written head by head: (B, N, h*d) is a view
        q = q * d ** -0.5                                # exact for d = 64 (a power of two)
        rows = max(128, min(n, 2 ** 20 // length))       # 256 rows x 4096 keys: 2 MiB of bf16 logits
        for i in range(b):
            for j in range(h):
                keys_t, values = k[i, j].t(), v[i, j]    # (d, L), (L, d)
                for r in range(0, n, rows):
                    logits = torch.mm(q[i, j, r:r + rows], keys_t)             # (rows, L)
                    torch.mm(torch.softmax(logits, -1), values, out=out[i, r:r + rows, j])
        return out.view(b, n, h * d)


# Feed-forwards over more tokens than this run in blocks of FEED_FORWARD_BLOCK (BlockedFeedForward).
FEED_FORWARD_BLOCK = 1024


class BlockedFeedForward(FeedForward):
    """FeedForward whose CPU inference over many tokens runs in blocks of FEED_FORWARD_BLOCK rows, so that its
    inner activations (4x the width: SD 2.1 at 64x64 latents, 8192 x 1280 values) stay in cache between its
    two layers instead of going through memory. Every row is computed as before (bit-identical): SD 2.1,
    2x4096 tokens of 320, 2 threads, 122 -> 99 ms in float32, 58 -> 50 ms in bf16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        rows = x.numel() // x.shape[-1]
        if rows <= FEED_FORWARD_BLOCK or _run_dtype(x, self.net[2].weight) is None:
            return super().forward(x)
        flat = x.reshape(rows, x.shape[-1])
        out = flat.new_empty(rows, self.net[2].out_features)
        for r in range(0, rows, FEED_FORWARD_BLOCK):
            out[r:r + FEED_FORWARD_BLOCK] = self.net(flat[r:r + FEED_FORWARD_BLOCK])
        return out.view(*x.shape[:-1], out.shape[-1])


_PACKED = {nn.Conv2d: PackedConv2d, nn.Linear: PackedLinear, GEGLU: PackedGEGLU,
           CrossAttention: BlockedCrossAttention, FeedForward: BlockedFeedForward}
_COPY_FREE = (CrossAttention, FeedForward)   # their swaps hold no packed copy of any weight
_PLAIN = {packed: plain for plain, packed in _PACKED.items()} | {WinogradConv2d: nn.Conv2d}


def _winograd_shape(module: nn.Module) -> bool:
    """Whether a Conv2d is one WinogradConv2d computes: 3x3, stride 1, padding 1, no groups or dilation,
    at least WINOGRAD_MIN_CHANNELS in and out."""
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.padding == (1, 1) and module.dilation == (1, 1) and module.groups == 1
            and module.padding_mode == "zeros"
            and min(module.in_channels, module.out_channels) >= WINOGRAD_MIN_CHANNELS)


def _winograd_runs(module: nn.Module) -> bool:
    """Whether WinogradConv2d would compute `module` as it is now: its shape, in WINOGRAD_DTYPE."""
    return _winograd_shape(module) and module.weight.dtype == WINOGRAD_DTYPE


def _packed_class(module: nn.Module, winograd: bool = True) -> type | None:
    """The class pack_for_cpu swaps `module` to (None: none): WinogradConv2d for the convolutions it
    computes, unless `winograd` is False."""
    packed = _PACKED.get(type(module))
    return WinogradConv2d if winograd and packed is PackedConv2d and _winograd_shape(module) else packed


def _packed_size(module: nn.Module) -> int:
    """The weight elements that decide whether a layer is packed (a GEGLU: its projection's; a
    FeedForward: its output layer's; an attention: its query projection's)."""
    if isinstance(module, CrossAttention):
        return module.to_q.weight.numel()
    if isinstance(module, FeedForward):
        return module.net[2].weight.numel()
    return (module.proj if isinstance(module, GEGLU) else module).weight.numel()


def _channels_last_input(module: nn.Module, args):
    # The UNet's input goes channels-last before its first layer, so that every activation is (conv_in
    # and the skips it feeds included): an NCHW residual stream costs a layout copy at each packed
    # convolution that reads it and a slow one at each concatenation of the decoder (2x960x64x64 bf16:
    # ~50 ms, 2 threads). Only when the packed kernels run; a no-op for an input that already is.
    x = args[0] if args else None
    if (isinstance(x, torch.Tensor) and x.dim() == 4 and not torch.is_grad_enabled()
            and _run_dtype(x, x) is not None):
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def _contiguous_output(module: nn.Module, args, output):
    # Inside the model activations are channels-last; callers get the usual NCHW-contiguous tensor.
    if isinstance(output, torch.Tensor):
        return output.contiguous()
    return output


def _boundaries(model: nn.Module) -> list[nn.Module]:
    """The UNets in model: their outputs leave for the samplers NCHW-contiguous, as with plain kernels
    (a caller's .view() must keep working). The VAE needs no such care: with plain kernels its encoder
    and decoder already return channels-last tensors (the attention's reshape is a channels-last view)."""
    from core.models.unet import UNetModel
    return [m for m in model.modules() if isinstance(m, UNetModel)]


def pack_for_cpu(model: nn.Module, min_weight: int = MIN_PACKED_WEIGHT, copies: bool = True,
                 winograd: bool = True) -> int:
    """Swap model's nn.Conv2d / nn.Linear / GEGLU / FeedForward / CrossAttention (exact classes, not
    subclasses) with at least min_weight weight elements (a GEGLU: its projection's; a FeedForward: its
    output layer's; an attention: its query projection's) to the classes above in place; returns how many
    were swapped (0 where oneDNN is missing: the model is left as it was). `winograd` False: the 3x3
    convolutions WinogradConv2d computes become PackedConv2d (their copy is 9/16 as large). `copies`
    False (the packed copies would not fit, packing_fits): only the blocked feed-forward and attention,
    which hold no copy; their layers stay plain and so do the activations' layouts.
    Parameters, buffers and state_dict keys are untouched; on any other device, dtype, or with
    autograd recording, each layer runs the plain torch forward."""
    if not _DTYPES:
        return 0
    swapped = 0
    for module in model.modules():
        packed = _packed_class(module, winograd)
        if (packed is not None and _packed_size(module) >= min_weight
                and (copies or isinstance(module, _COPY_FREE))):
            module.__class__ = packed
            swapped += 1
    if swapped and copies:
        for boundary in _boundaries(model):
            if boundary not in _HOOKS:
                _HOOKS[boundary] = (boundary.register_forward_pre_hook(_channels_last_input),
                                    boundary.register_forward_hook(_contiguous_output))
    return swapped


def packing_fits(model: nn.Module, min_weight: int = MIN_PACKED_WEIGHT, winograd: bool = True) -> bool:
    """Whether the packed copies fit in a third of the memory available now. They are as large as the
    packed layers' weights, and 16/9 of them for the Winograd convolutions' 4x4 transformed kernels
    (float32 only; `winograd` False: as PackedConv2d). SD 2.1's UNet in float32: +4.8 GiB with
    Winograd, +3.2 GiB without; SDXL's in bfloat16: +4.8 GiB."""
    from core.pipelines.memory import available_memory         # here: core.pipelines imports the loader
    extra = sum(m.weight.numel() * m.weight.element_size() * (16 / 9 if winograd and _winograd_runs(m) else 1)
                for m in model.modules()                        # GEGLUs: their proj's
                if type(m) in (nn.Conv2d, nn.Linear) and m.weight.numel() >= min_weight)
    return 3 * extra <= available_memory("cpu")


def pack_as_it_fits(model: nn.Module, min_weight: int = MIN_PACKED_WEIGHT) -> bool:
    """What load_model does to a CPU model: pack_for_cpu with the Winograd convolutions' copies where
    they fit, else with the direct convolutions' (packing_fits), else the copy-free blocked classes
    alone; nothing with CPU_PACKED off. Returns whether the packed copies are used."""
    if not CPU_PACKED:
        return False
    winograd = packing_fits(model, min_weight)
    fits = winograd or packing_fits(model, min_weight, winograd=False)
    return pack_for_cpu(model, min_weight, copies=fits, winograd=winograd) > 0 and fits


def unpack(model: nn.Module) -> None:
    """Undo pack_for_cpu: plain classes again, packed copies dropped."""
    for module in model.modules():
        plain = _PLAIN.get(type(module))
        if plain is not None:
            module.__class__ = plain
            _PACKS.pop(module, None)
        for hook in _HOOKS.pop(module, ()):
            hook.remove()
