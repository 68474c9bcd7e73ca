"""Attention layers of the LDM / Stable Diffusion UNet.

Module and attribute names equal the CompVis checkpoint keys (`ldm/modules/attention.py` and the
legacy `AttentionBlock` of `ldm/modules/diffusionmodules/openaimodel.py`, CompVis/stable-diffusion and
Stability-AI/stablediffusion), so `load_state_dict(strict=True)` needs no renaming:

    SpatialTransformer              norm, proj_in, transformer_blocks.{i}, proj_out
      BasicTransformerBlock         norm1, attn1, norm2, attn2, norm3, ff
        CrossAttention              to_q, to_k, to_v (no bias), to_out.0 (Linear), to_out.1 (Dropout)
        FeedForward                 net.0.proj (GEGLU), net.1 (Dropout), net.2 (Linear)
    AttentionBlock (legacy LDM)     norm, qkv (Conv1d 1x1), proj_out (Conv1d 1x1)

Every attention product goes through `F.scaled_dot_product_attention`, which picks a fused kernel
(flash / memory-efficient) on GPU; its default scale d_head^-0.5 is the reference's. On the CPU, a
packed model (core.speed) computes long bfloat16 self-attention in blocks instead (`attend` is the hook).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) computed in float32 and rounded once to the input's dtype.

    The reference (`openaimodel.normalization`) upcasts: `GroupNorm(x.float()).type(x.dtype)`.
    For float16/bfloat16 inputs torch's own group_norm kernels (CPU and CUDA) already accumulate the
    statistics and apply the affine map in float32 ("opmath") and round once at the end, which is the
    same function up to float32 rounding order (tests/test_unet.py checks <= 1 ulp). Calling the
    kernel on the low-precision tensor directly saves two full-tensor casts per norm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, ...) -> (B, C, ...)
        if x.dtype in (torch.float16, torch.bfloat16) and self.weight.dtype != x.dtype:
            # Mixed precision (e.g. fp32 norm weights with a half input): do it the reference's way.
            return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                                self.eps).to(x.dtype)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: the reference's `zero_module`, used on every `proj_out`."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class CrossAttention(nn.Module):
    """Multi-head attention of queries x over a context (self-attention when context is None)."""

    def __init__(
        self,
        query_dim: int,                  # Dq, width of the tokens x
        context_dim: int | None = None,  # Dc, width of the context tokens (None: = query_dim)
        heads: int = 8,                  # h
        dim_head: int = 64,              # d; inner width = h * d
        dropout: float = 0.0,            # on the output projection (to_out.1)
    ):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, N, Dq); context: (B, L, Dc), or None for self-attention (L = N, Dc = Dq)
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)   # (B, h, N, d)
        k = self.to_k(context).view(b, -1, self.heads, self.dim_head).transpose(1, 2)  # (B, h, L, d)
        v = self.to_v(context).view(b, -1, self.heads, self.dim_head).transpose(1, 2)  # (B, h, L, d)
        return self.to_out(self.attend(q, k, v))                           # (B, N, Dq)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: (B, h, N, d), k and v: (B, h, L, d) -> softmax(q k^T * d^-0.5) v as (B, N, h*d).
        # SDPA's default scale is d^-0.5, as in the reference (core.speed.BlockedCrossAttention
        # computes the same in blocks for long bfloat16 self-attention on the CPU).
        b, h, n, d = q.shape
        out = F.scaled_dot_product_attention(q, k, v)                      # (B, h, N, d)
        return out.transpose(1, 2).reshape(b, n, h * d)                    # (B, N, h*d)


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): proj(x) = [value, gate]; out = value * GELU(gate), exact erf GELU.

    The FIRST half of the projection is the value and the SECOND the gate (reference order).
    """

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., Din) -> (..., Dout)
        value, gate = self.proj(x).chunk(2, dim=-1)      # (..., Dout) each
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer MLP: `net.0` (GEGLU, or Linear+GELU), `net.1` Dropout, `net.2` Linear."""

    def __init__(self, dim: int, mult: int = 4, glu: bool = True, dropout: float = 0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: x += attn1(norm1 x); x += attn2(norm2 x, context); x += ff(norm3 x).

    attn1 is self-attention, unless `disable_self_attn` (x4 upscaler levels), where it attends to
    the context too and its to_k / to_v take context_dim inputs.
    """

    def __init__(
        self,
        dim: int,                        # token width (= n_heads * d_head)
        n_heads: int,
        d_head: int,
        context_dim: int | None = None,  # None: attn2 is a second self-attention
        disable_self_attn: bool = False,
        dropout: float = 0.0,
        gated_ff: bool = True,
    ):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(dim, context_dim if disable_self_attn else None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, glu=gated_ff, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = nn.LayerNorm(dim)  # eps 1e-5 (torch default), as in the reference
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, N, D); context: (B, L, Dc) or None
        x = self.attn1(self.norm1(x), context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context) + x
        x = self.ff(self.norm3(x)) + x
        return x  # (B, N, D)


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, with cross-attention to a context.

    norm -> proj_in -> tokens -> transformer_blocks -> proj_out -> image, plus a residual. proj_in /
    proj_out are 1x1 convs (SD1, LDM: flatten to tokens after proj_in) or Linear layers
    (SD2 `use_linear_in_transformer`: flatten before proj_in); the weights differ only by a
    [C, C] <-> [C, C, 1, 1] reshape. proj_out starts at zero, so the block starts as the identity.
    """

    def __init__(
        self,
        in_channels: int,                # C
        n_heads: int,
        d_head: int,                     # inner width = n_heads * d_head
        depth: int = 1,                  # number of transformer_blocks
        context_dim: int | None = None,  # Dc
        disable_self_attn: bool = False,
        use_linear: bool = False,        # Linear proj_in/proj_out (SD2) instead of 1x1 convs
        dropout: float = 0.0,
        use_checkpoint: bool = False,    # gradient checkpointing of each block, in training only
    ):
        super().__init__()
        inner_dim = n_heads * d_head
        self.use_linear = use_linear
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(32, in_channels, eps=1e-6)  # eps 1e-6 here (FACTS 5), unlike ResBlocks
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, context_dim, disable_self_attn, dropout)
            for _ in range(depth)
        )
        # The SD2 reference builds the Linear as (in_channels -> inner_dim), which only works when the
        # two are equal (they are in every released model); we write the direction the data flows.
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        # x: (B, C, H, W); context: (B, L, Dc), or a list with one per block (as the SD2 code allows)
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)                              # (B, inner, H, W)
        # permute + reshape is a free view for channels_last inputs and one copy otherwise.
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, x.shape[1])  # (B, HW, C or inner)
        if self.use_linear:
            x = self.proj_in(x)                              # (B, HW, inner)
        for i, block in enumerate(self.transformer_blocks):
            ctx = context[i] if isinstance(context, (list, tuple)) else context
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, ctx, use_reentrant=False)
            else:
                x = block(x, ctx)                            # (B, HW, inner)
        if self.use_linear:
            x = self.proj_out(x)                             # (B, HW, C)
        x = x.reshape(b, h, w, x.shape[-1]).permute(0, 3, 1, 2)  # (B, C|inner, H, W), channels_last strides
        if not self.use_linear:
            x = self.proj_out(x)                             # (B, C, H, W)
        # x_in first: the sum takes the input's memory format (NCHW in, NCHW out; NHWC in, NHWC out).
        return x_in + x


class AttentionBlock(nn.Module):
    """Legacy self-attention over pixels (LDM unconditional / SR / inpainting models).

    norm -> qkv (1x1 Conv1d, C -> 3C) -> per-head softmax attention -> proj_out (zero-init) + x.
    Channel layout of qkv: "legacy" order splits heads first, i.e. [h0: q,k,v][h1: q,k,v]...;
    `use_new_attention_order` splits q/k/v first, i.e. [q: h0,h1..][k: ...][v: ...]. The reference
    scales q and k each by ch^-1/4, i.e. the logits by ch^-1/2, which is SDPA's default scale.
    The 1x1 Conv1d weights [., C, 1] are applied as Linear layers on (B, HW, C) tokens.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,     # if != -1, it sets the head width and heads = C / width
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels != 0:
                raise ValueError(f"AttentionBlock: channels {channels} are not divisible by "
                                 f"num_head_channels {num_head_channels}; choose a head width that divides them")
            self.num_heads = channels // num_head_channels
        if self.num_heads < 1 or channels % self.num_heads != 0:
            raise ValueError(f"AttentionBlock: channels {channels} cannot be split into {self.num_heads} heads")
        self.channels = channels
        self.use_new_attention_order = use_new_attention_order
        self.norm = GroupNorm32(32, channels)  # eps 1e-5
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape                                 # (B, C, H, W)
        t = h * w
        ch = c // self.num_heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, t, c)        # (B, T, C)
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)  # (B, T, 3C)
        if self.use_new_attention_order:
            qkv = qkv.view(b, t, 3, self.num_heads, ch).permute(2, 0, 3, 1, 4)  # (3, B, heads, T, ch)
        else:
            qkv = qkv.view(b, t, self.num_heads, 3, ch).permute(3, 0, 2, 1, 4)  # (3, B, heads, T, ch)
        q, k, v = qkv.unbind(0)                              # (B, heads, T, ch) each
        a = F.scaled_dot_product_attention(q, k, v)          # (B, heads, T, ch)
        a = a.transpose(1, 2).reshape(b, t, c)               # (B, T, C), channel = head * ch + i
        out = F.linear(a, self.proj_out.weight.squeeze(-1), self.proj_out.bias)  # (B, T, C)
        return x + out.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
