"""The LDM / Stable Diffusion denoiser eps_theta(z_t, t, c): CompVis `openaimodel.UNetModel`.

Ho et al. 2020 / Dhariwal & Nichol 2021's UNet with the cross-attention of Rombach et al. 2022.
The module tree equals the reference's, so the original checkpoint keys (minus the
`model.diffusion_model.` prefix) load with `strict=True`:

    time_embed.{0,2}        Linear(mc -> 4mc), SiLU, Linear(4mc -> 4mc)
    label_emb               Embedding(num_classes, 4mc), or `.0.{0,2}` for num_classes="sequential"
    input_blocks.{k}        conv_in; per level nrb x [ResBlock, (attention)], then [Downsample]
    middle_block.{0,1,2}    ResBlock, attention, ResBlock
    output_blocks.{k}       per level (reversed) nrb+1 x [ResBlock(ch + skip), (attention), (Upsample)]
    out.{0,2}               GroupNorm32, SiLU, conv3x3(mc -> out_channels), zero-init

"attention" is a SpatialTransformer (cross-attention, `use_spatial_transformer`) or the legacy
AttentionBlock. See shared/FACTS.md section 2 for the full layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.models.attention import AttentionBlock, GroupNorm32, SpatialTransformer, zero_module


@dataclass(frozen=True)
class UNetConfig:
    """`unet_config.params` of the CompVis / Stability YAMLs, with `openaimodel.UNetModel`'s defaults.

    Field names are the YAML's, so a config translates one to one. Lists from YAML are stored as tuples.
    """

    image_size: int                                # training latent size; informational only
    in_channels: int                               # z channels (+ c_concat channels)
    model_channels: int                            # mc, width of level 0
    out_channels: int
    num_res_blocks: int | tuple[int, ...]          # nrb, per model or per level
    attention_resolutions: tuple[int, ...]         # DOWNSAMPLING FACTORS (1, 2, 4, ...) with attention
    dropout: float = 0.0
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)   # level widths = mc * mult
    conv_resample: bool = True                     # conv (True) or avg-pool / no-conv resampling
    dims: int = 2                                  # only 2 (images) is supported
    num_classes: int | str | None = None           # int: Embedding for y; "sequential": MLP on y (adm_in_channels)
    use_checkpoint: bool = False                   # gradient checkpointing, training only
    use_fp16: bool = False                         # ignored: the UNet computes in its input's dtype
    num_heads: int = -1                            # fixed head count (SD1: 8) ...
    num_head_channels: int = -1                    # ... or fixed head width (SD2: 64)
    num_heads_upsample: int = -1                   # legacy AttentionBlock heads in output_blocks (-1: num_heads)
    use_scale_shift_norm: bool = False             # FiLM: norm(h) * (1 + scale) + shift
    resblock_updown: bool = False                  # ResBlocks with down/up=True instead of Downsample/Upsample
    use_new_attention_order: bool = False          # AttentionBlock qkv split order (False: legacy, heads first)
    use_spatial_transformer: bool = False          # SpatialTransformer (cross-attention) instead of AttentionBlock
    transformer_depth: int | tuple[int, ...] = 1   # SpatialTransformer blocks, per model or per level (SDXL)
    context_dim: int | None = None                 # Dc of the cross-attention context
    n_embed: int | None = None                     # codebook-id prediction head: not supported
    legacy: bool = True                            # see _attention_heads
    disable_self_attentions: tuple[bool, ...] | None = None  # per level: attn1 attends to the context too
    num_attention_blocks: tuple[int, ...] | None = None      # per level: attention only in the first n ResBlocks
    adm_in_channels: int | None = None             # width of y for num_classes="sequential"
    use_linear_in_transformer: bool = False        # Linear proj_in/proj_out (SD2) instead of 1x1 convs

    def __post_init__(self):
        def as_tuple(name, cast):
            value = getattr(self, name)
            if value is None or (name == "num_res_blocks" and isinstance(value, int)):
                return
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"UNetConfig.{name} must be a list or tuple, got {value!r}")
            object.__setattr__(self, name, tuple(cast(v) for v in value))

        as_tuple("attention_resolutions", int)
        as_tuple("channel_mult", int)
        as_tuple("num_res_blocks", int)
        if not isinstance(self.transformer_depth, int):
            as_tuple("transformer_depth", int)
        as_tuple("disable_self_attentions", bool)
        as_tuple("num_attention_blocks", int)

        levels = len(self.channel_mult)
        if self.dims != 2:
            raise ValueError(f"UNetConfig.dims={self.dims}: only 2-D UNets (dims=2) are supported")
        if self.n_embed is not None:
            raise ValueError("UNetConfig.n_embed (codebook-id prediction) is not supported; set it to None")
        if levels == 0:
            raise ValueError("UNetConfig.channel_mult must list at least one level")
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ValueError("UNetConfig: set num_heads (fixed head count) or num_head_channels "
                             "(fixed head width); both are -1")
        for name in ("num_heads", "num_head_channels"):
            if getattr(self, name) != -1 and getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be -1 (unset) or >= 1, got {getattr(self, name)}")
        if self.use_spatial_transformer and self.context_dim is None:
            raise ValueError("UNetConfig: use_spatial_transformer=True needs context_dim "
                             "(the width of the cross-attention context)")
        if self.context_dim is not None and not self.use_spatial_transformer:
            raise ValueError(f"UNetConfig: context_dim={self.context_dim} is set but "
                             "use_spatial_transformer=False; enable it or drop context_dim")
        if self.context_dim is not None and not isinstance(self.context_dim, int):
            raise ValueError(f"UNetConfig.context_dim must be one int, got {self.context_dim!r}")
        if isinstance(self.transformer_depth, tuple) and len(self.transformer_depth) != levels:
            raise ValueError(f"UNetConfig.transformer_depth {self.transformer_depth} must be an int or have "
                             f"one entry per level of channel_mult ({levels})")
        if min(self.transformer_depth_per_level) < 1:
            raise ValueError(f"UNetConfig.transformer_depth must be >= 1, got {self.transformer_depth}")
        if isinstance(self.num_res_blocks, tuple) and len(self.num_res_blocks) != levels:
            raise ValueError(f"UNetConfig.num_res_blocks {self.num_res_blocks} must be an int or have "
                             f"one entry per level of channel_mult ({levels})")
        if min(self.res_blocks_per_level) < 1:
            raise ValueError(f"UNetConfig.num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.disable_self_attentions is not None and len(self.disable_self_attentions) != levels:
            raise ValueError(f"UNetConfig.disable_self_attentions needs one entry per level ({levels}), "
                             f"got {self.disable_self_attentions}")
        if self.num_attention_blocks is not None:
            if len(self.num_attention_blocks) != levels:
                raise ValueError(f"UNetConfig.num_attention_blocks needs one entry per level ({levels}), "
                                 f"got {self.num_attention_blocks}")
            if any(n > r for n, r in zip(self.num_attention_blocks, self.res_blocks_per_level)):
                raise ValueError(f"UNetConfig.num_attention_blocks {self.num_attention_blocks} exceeds "
                                 f"num_res_blocks {self.res_blocks_per_level} at some level")
        if self.num_classes is not None:
            if isinstance(self.num_classes, bool) or not (
                isinstance(self.num_classes, int) and self.num_classes > 0 or self.num_classes == "sequential"
            ):
                raise ValueError(f"UNetConfig.num_classes must be None, a positive int or 'sequential', "
                                 f"got {self.num_classes!r}")
            if self.num_classes == "sequential" and self.adm_in_channels is None:
                raise ValueError("UNetConfig: num_classes='sequential' needs adm_in_channels (the width of y)")
        for mult in self.channel_mult:
            if mult < 1 or (mult * self.model_channels) % 32 != 0:
                raise ValueError(f"UNetConfig: level width model_channels*mult = {self.model_channels}*{mult} "
                                 "must be a positive multiple of 32 (GroupNorm uses 32 groups)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def transformer_depth_per_level(self) -> tuple[int, ...]:
        """Blocks per SpatialTransformer at each level; the middle block takes the deepest level's
        (sgm's `transformer_depth_middle = transformer_depth[-1]`; SDXL base: (1, 2, 10))."""
        if isinstance(self.transformer_depth, int):
            return (self.transformer_depth,) * len(self.channel_mult)
        return self.transformer_depth

    @property
    def res_blocks_per_level(self) -> tuple[int, ...]:
        if isinstance(self.num_res_blocks, int):
            return (self.num_res_blocks,) * len(self.channel_mult)
        return self.num_res_blocks


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (integer or real) timesteps, float32, COSINE FIRST (FACTS 5, trap 4).

    freq_i = exp(-ln(max_period) * i / half), i = 0..half-1 (denominator half, not half-1);
    out = [cos(t * freq), sin(t * freq)], zero-padded by one column when dim is odd.
    timesteps: (B,) -> (B, dim)
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )                                                         # (half,)
    args = timesteps[:, None].float() * freqs[None]            # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))                               # (B, dim)
    return emb


class Downsample(nn.Module):
    """Halve H and W: `op` = conv3x3 stride 2 with symmetric padding 1, or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour, then `conv` (conv3x3) when use_conv."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding emb = time_embed(t) (+ label_emb(y)).

    h = in_layers(x) [norm, SiLU, (up/down), conv]; h += Linear(SiLU(emb)) broadcast over H, W
    (or FiLM: norm(h) * (1 + scale) + shift); h = out_layers(h) [norm, SiLU, Dropout, zero conv];
    return skip_connection(x) + h, where skip is a 1x1 conv only when the width changes.
    """

    def __init__(
        self,
        channels: int,                   # C_in
        emb_channels: int,               # 4 mc
        dropout: float,
        out_channels: int | None = None,  # C_out (default C_in)
        use_scale_shift_norm: bool = False,
        use_checkpoint: bool = False,
        up: bool = False,                # nearest x2 of h and x between in_layers' SiLU and conv
        down: bool = False,              # 2x2 avg-pool of h and x, likewise
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, H, W); emb: (B, 4mc)
        if self.updown:
            h = self.in_layers[1](self.in_layers[0](x))    # norm, SiLU at the input size
            h, x = self.h_upd(h), self.x_upd(x)             # resample h and the skip path
            h = self.in_layers[2](h)                        # (B, C_out, H', W')
        else:
            h = self.in_layers(x)                           # (B, C_out, H, W)
        emb_out = self.emb_layers(emb)[:, :, None, None]    # (B, C_out or 2 C_out, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)          # (B, C_out, 1, 1) each
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h                  # (B, C_out, H', W')


class TimestepEmbedSequential(nn.Sequential):
    """nn.Sequential that hands emb to ResBlocks and the context to SpatialTransformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context=None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


def _attention_heads(cfg: UNetConfig, ch: int) -> tuple[int, int]:
    """(num_heads, dim_head) at width ch, exactly as openaimodel computes them.

    num_head_channels = d fixes the width (heads = ch / d); otherwise num_heads fixes the count
    (d = ch / heads). With `legacy` (the default), dim_head is recomputed as ch // num_heads for
    SpatialTransformers and is num_head_channels (possibly -1, "use num_heads") for AttentionBlocks.
    """
    if cfg.num_head_channels == -1:
        num_heads, dim_head = cfg.num_heads, ch // cfg.num_heads
    else:
        num_heads, dim_head = ch // cfg.num_head_channels, cfg.num_head_channels
    if cfg.legacy:
        dim_head = ch // num_heads if cfg.use_spatial_transformer else cfg.num_head_channels
    return num_heads, dim_head


class UNetModel(nn.Module):
    """eps_theta / v_theta(x_t, t, context, y) -> (B, out_channels, H, W); H and W divisible by 2^(levels-1)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, nrb = cfg.model_channels, cfg.res_blocks_per_level
        time_embed_dim = 4 * mc
        heads_upsample = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample

        def res_block(ch_in, ch_out, **updown):
            return ResBlock(ch_in, time_embed_dim, cfg.dropout, ch_out, cfg.use_scale_shift_norm,
                            cfg.use_checkpoint, **updown)

        def attention(ch, level, heads_for_attention_block):
            num_heads, dim_head = _attention_heads(cfg, ch)
            if not cfg.use_spatial_transformer:
                return AttentionBlock(ch, heads_for_attention_block, dim_head, cfg.use_new_attention_order)
            disable_sa = bool(cfg.disable_self_attentions[level]) if cfg.disable_self_attentions else False
            return SpatialTransformer(ch, num_heads, dim_head, cfg.transformer_depth_per_level[level],
                                      cfg.context_dim,
                                      disable_sa, cfg.use_linear_in_transformer,
                                      use_checkpoint=cfg.use_checkpoint)

        def has_attention(ds, level, i):
            # attention_resolutions wins over num_attention_blocks, as in the reference
            return ds in cfg.attention_resolutions and (
                cfg.num_attention_blocks is None or i < cfg.num_attention_blocks[level])

        self.time_embed = nn.Sequential(
            nn.Linear(mc, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        if cfg.num_classes == "sequential":  # unCLIP / SDXL-style vector conditioning
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(cfg.adm_in_channels, time_embed_dim), nn.SiLU(),
                nn.Linear(time_embed_dim, time_embed_dim),
            ))
        elif cfg.num_classes is not None:
            self.label_emb = nn.Embedding(cfg.num_classes, time_embed_dim)

        # Encoder: conv_in, then per level nrb x [ResBlock, (attention)] and a Downsample.
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))]
        )
        skip_chans = [mc]  # width of every skip tensor, popped LIFO by the decoder
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for i in range(nrb[level]):
                layers = [res_block(ch, mult * mc)]
                ch = mult * mc
                if has_attention(ds, level, i):
                    layers.append(attention(ch, level, cfg.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = res_block(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        # Middle: ResBlock, attention (always, with self-attention), ResBlock at the deepest width.
        num_heads, dim_head = _attention_heads(cfg, ch)
        if cfg.use_spatial_transformer:
            middle_attention = SpatialTransformer(ch, num_heads, dim_head, cfg.transformer_depth_per_level[-1],
                                                  cfg.context_dim, False, cfg.use_linear_in_transformer,
                                                  use_checkpoint=cfg.use_checkpoint)
        else:
            middle_attention = AttentionBlock(ch, num_heads, dim_head, cfg.use_new_attention_order)
        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), middle_attention, res_block(ch, ch))

        # Decoder: levels reversed, nrb+1 x [ResBlock(ch + skip), (attention), (Upsample on the last)].
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(nrb[level] + 1):
                layers = [res_block(ch + skip_chans.pop(), mult * mc)]
                ch = mult * mc
                if has_attention(ds, level, i):
                    layers.append(attention(ch, level, heads_upsample))
                if level and i == nrb[level]:
                    layers.append(res_block(ch, ch, up=True) if cfg.resblock_updown
                                  else Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(32, ch), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        )

    def forward(
        self,
        x: torch.Tensor,                      # (B, in_channels, H, W): z_t, with c_concat appended
        timesteps: torch.Tensor,              # (B,) or () integer / real timesteps
        context: torch.Tensor | list[torch.Tensor] | None = None,  # (B, L, context_dim) c_crossattn
        y: torch.Tensor | None = None,        # (B,) class ids, or (B, adm_in_channels) for "sequential"
    ) -> torch.Tensor:
        cfg = self.cfg
        b = x.shape[0]
        if (y is None) != (cfg.num_classes is None):
            raise ValueError(
                f"UNetModel: y is required if and only if the model is class-conditional "
                f"(num_classes={cfg.num_classes!r}); got y={'None' if y is None else tuple(y.shape)}")
        if cfg.use_spatial_transformer and context is None:
            raise ValueError(f"UNetModel: this UNet cross-attends to a context; pass context of shape "
                             f"(B, L, {cfg.context_dim})")
        if not cfg.use_spatial_transformer and context is not None:
            raise ValueError("UNetModel: this UNet has no cross-attention (use_spatial_transformer=False); "
                             "pass context=None (concat conditioning goes into x's channels)")
        if x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNetModel: x has {x.shape[1]} channels, the model expects {cfg.in_channels} "
                             "(latent channels plus any c_concat channels)")
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"UNetModel: H and W ({x.shape[-2]}x{x.shape[-1]}) must be multiples of {factor} "
                             f"(2^(levels-1) for {len(cfg.channel_mult)} levels); pad or crop the latent")

        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        # The embedding is float32 (as in the reference); the network then runs in x's dtype.
        emb = self.time_embed(timestep_embedding(timesteps, cfg.model_channels).to(x.dtype))  # (B, 4mc)
        if cfg.num_classes is not None:
            if y.shape[0] != b:
                raise ValueError(f"UNetModel: y has batch {y.shape[0]}, x has batch {b}")
            emb = emb + self.label_emb(y if cfg.num_classes != "sequential" else y.to(x.dtype))
        if context is not None:
            context = [c.to(x.dtype) for c in context] if isinstance(context, (list, tuple)) else context.to(x.dtype)

        skips = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            # Rebind h before the call: the block's input (held by the call for the whole block) is
            # then only the concatenation, not also the old h beside it (peak memory, bench/unet.py).
            h = torch.cat([h, skips.pop()], dim=1)   # (B, ch + skip ch, H, W)
            h = module(h, emb, context)
        return self.out(h)  # (B, out_channels, H, W)
