"""First-stage autoencoders of Latent Diffusion (Rombach et al. 2022, Sec. 3.1): KL- and VQ-regularised.

The encoder E maps an image x in [-1, 1], (B, 3, H, W), to a latent of (B, c, H/f, W/f) with
f = 2 ** (len(ch_mult) - 1); the decoder D maps it back. The module tree equals CompVis
latent-diffusion `ldm/modules/diffusionmodules/model.py` (Encoder, Decoder, ResnetBlock, AttnBlock,
Downsample, Upsample) and `ldm/models/autoencoder.py` (AutoencoderKL, VQModelInterface), so the
`first_stage_model.*` weights of every released checkpoint load with strict=True, no renaming.

Facts worth knowing before reading (FACTS.md section 3 and traps 9, 12, 13):
* every GroupNorm is GroupNorm(32, eps=1e-6) (ddconfig.num_groups, ours only, changes the 32); the nonlinearity is x * sigmoid(x) (SiLU);
* Downsample pads right and bottom by one pixel, then a stride-2 conv with padding 0 (asymmetric);
* `attn_resolutions` are PIXEL sizes relative to `ddconfig.resolution` (not downsampling factors);
* the decoder has num_res_blocks + 1 blocks per level, and `up` is indexed by level (up.0 = full
  resolution) but runs from the highest index down;
* the VQ model used by LDM encodes to the PRE-quantisation h; diffusion runs there and `decode`
  quantises first.
The timestep-embedding parts of the reference blocks are dead code here (temb_ch = 0) and are left out.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from core.models.distributions import DiagonalGaussianDistribution
from core.models.quantize import VectorQuantizer

ATTN_TYPES = ("vanilla", "none")


# --------------------------------------------------------------------------------------------
# Configs: the YAML `ddconfig` / first-stage `params`, with the reference field names.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DDConfig:
    """The `ddconfig` block of a CompVis first-stage YAML (shared by encoder and decoder)."""
    z_channels: int                          # channels of the latent before quant_conv
    resolution: int                          # training image size; only decides where attention goes
    double_z: bool = True                    # encoder outputs mean and logvar (KL) -> 2*z_channels
    in_channels: int = 3                     # image channels into the encoder
    out_ch: int = 3                          # image channels out of the decoder
    ch: int = 128                            # base width; level i has ch * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)  # one entry per level; f = 2 ** (len - 1)
    num_res_blocks: int = 2                  # ResnetBlocks per encoder level (decoder: +1)
    attn_resolutions: tuple[int, ...] = ()   # pixel sizes (relative to `resolution`) with attention
    dropout: float = 0.0                     # inside every ResnetBlock
    resamp_with_conv: bool = True            # conv in Down/Upsample (else avg-pool / plain nearest)
    attn_type: str = "vanilla"               # "vanilla" | "none" (vq-f4-noattn: no attention at all)
    give_pre_end: bool = False               # decoder returns features before norm_out/conv_out
    tanh_out: bool = False                   # decoder squashes its output with tanh
    num_groups: int = 32                     # GroupNorm groups (not in the reference's YAML: always 32 there).
                                             # Narrow models want fewer: at ch 32, 32 groups is a per-channel
                                             # instance norm, which erases each channel's amplitude (colour)

    def __post_init__(self):
        # YAML gives lists; a frozen config wants hashable tuples.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.attn_type not in ATTN_TYPES:
            raise ValueError(f"ddconfig.attn_type must be one of {ATTN_TYPES}, got {self.attn_type!r} "
                             "(the reference's 'linear' attention is not used by any released model)")
        if self.num_groups <= 0:
            raise ValueError(f"ddconfig.num_groups must be positive, got {self.num_groups}")
        if self.ch <= 0 or self.ch % self.num_groups != 0:
            raise ValueError(f"ddconfig.ch must be a positive multiple of num_groups (GroupNorm uses "
                             f"{self.num_groups} groups), got {self.ch}")
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ValueError(f"ddconfig.ch_mult must be a non-empty list of positive ints, got {self.ch_mult}")
        if self.num_res_blocks < 1:
            raise ValueError(f"ddconfig.num_res_blocks must be >= 1, got {self.num_res_blocks}")
        for name in ("z_channels", "resolution", "in_channels", "out_ch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ddconfig.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ddconfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def downsample_factor(self) -> int:
        """f: the image is f times larger than the latent along each side."""
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class AutoencoderConfig:
    """A first-stage model: `kind` 'kl' (AutoencoderKL) or 'vq' (VQModelInterface)."""
    kind: str                                # "kl" | "vq"
    embed_dim: int                           # latent channels the diffusion model sees
    ddconfig: DDConfig                       # encoder/decoder shape
    n_embed: int | None = None               # VQ codebook size (required for "vq")
    beta: float = 0.25                       # VQ codebook/commitment weight (taming's beta)

    def __post_init__(self):
        if isinstance(self.ddconfig, dict):
            object.__setattr__(self, "ddconfig", DDConfig(**self.ddconfig))
        if not isinstance(self.ddconfig, DDConfig):
            raise ValueError("AutoencoderConfig.ddconfig must be a DDConfig (or a dict of its fields)")
        if self.kind not in ("kl", "vq"):
            raise ValueError(f"AutoencoderConfig.kind must be 'kl' or 'vq', got {self.kind!r}")
        if self.embed_dim <= 0:
            raise ValueError(f"AutoencoderConfig.embed_dim must be positive, got {self.embed_dim}")
        if self.kind == "kl" and not self.ddconfig.double_z:
            raise ValueError("a KL autoencoder needs ddconfig.double_z=True (the encoder outputs "
                             "mean and logvar)")
        if self.kind == "vq":
            if self.n_embed is None or self.n_embed <= 0:
                raise ValueError("a VQ autoencoder needs n_embed (the codebook size, e.g. 8192)")
            if self.ddconfig.double_z:
                raise ValueError("a VQ autoencoder needs ddconfig.double_z=False (as in the "
                                 "released vq-f* configs)")


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

def _in_place_ok(t: Tensor) -> bool:
    # In-place ops save one full-size activation per block, which matters when the decoder runs on
    # large images (Upscale tab). They are used only on tensors this module just created and only
    # when autograd is not recording them, so training graphs are never affected.
    return not (torch.is_grad_enabled() and t.requires_grad)


def _silu(t: Tensor) -> Tensor:
    """x * sigmoid(x), in place on a fresh tensor when autograd does not need it."""
    return F.silu(t, inplace=_in_place_ok(t))


def _residual(x: Tensor, h: Tensor) -> Tensor:
    """x + h, accumulated into the fresh tensor h when autograd does not need it."""
    return h.add_(x) if _in_place_ok(h) and _in_place_ok(x) else x + h


def Normalize(channels: int, groups: int = 32) -> nn.GroupNorm:
    # Every VAE norm: 32 groups, eps 1e-6 (the UNet uses 1e-5; FACTS.md trap 10).
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm1 -> SiLU -> conv1 -> norm2 -> SiLU -> dropout -> conv2, plus a (1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = Normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = Normalize(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            # The reference's key for this 1x1 conv; present only when the channels change.
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:               # (B, Cin, H, W)
        h = self.conv1(_silu(self.norm1(x)))                # (B, Cout, H, W)
        h = self.conv2(self.dropout(_silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return _residual(x, h)


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W pixels, scale C^-0.5; q, k, v, proj_out are 1x1 convs."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = Normalize(channels, groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:                 # (B, C, H, W)
        b, c, h, w = x.shape
        hn = self.norm(x)
        # (B, C, H, W) -> (B, 1 head, H*W tokens, C), contiguous: on the CPU SDPA takes its flash kernel
        # only for contiguous q/k/v (strided ones go to the math path, which builds the (HW, HW)
        # matrix: 3.2x slower at 6400 tokens x 64 channels, 1 thread, bench/README.md)
        q, k, v = (proj(hn).reshape(b, 1, c, h * w).transpose(2, 3).contiguous()
                   for proj in (self.q, self.k, self.v))
        # softmax(q k^T * C^-0.5) v, through SDPA: fused kernels never build the (HW, HW) matrix
        # when a memory-efficient/flash backend is available.
        out = F.scaled_dot_product_attention(q, k, v, scale=c ** -0.5)   # (B, 1, HW, C)
        out = out.transpose(2, 3).reshape(b, c, h, w)                    # (B, C, H, W)
        return _residual(x, self.proj_out(out))


class Downsample(nn.Module):
    """Halve H and W: pad right/bottom by 1, then conv3x3 stride 2 padding 0 (or 2x2 avg-pool)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:                 # (B, C, H, W) -> (B, C, H/2, W/2)
        if self.with_conv:
            # torch convs only pad symmetrically; the reference pads (left 0, right 1, top 0, bottom 1).
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour x2, then conv3x3 padding 1."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:                 # (B, C, H, W) -> (B, C, 2H, 2W)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


def _make_mid(channels: int, cfg: DDConfig) -> nn.Module:
    # `mid.block_1`, `mid.attn_1`, `mid.block_2`. With attn_type "none" attn_1 is an Identity,
    # which has no parameters, so there is no `mid.attn_1.*` key at all (vq-f4-noattn).
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, cfg.dropout, cfg.num_groups)
    mid.attn_1 = AttnBlock(channels, cfg.num_groups) if cfg.attn_type == "vanilla" else nn.Identity()
    mid.block_2 = ResnetBlock(channels, channels, cfg.dropout, cfg.num_groups)
    return mid


def _run_mid(mid: nn.Module, h: Tensor) -> Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


# --------------------------------------------------------------------------------------------
# Encoder and decoder
# --------------------------------------------------------------------------------------------

class Encoder(nn.Module):
    """x (B, in_channels, H, W) -> moments (B, (2 if double_z else 1) * z_channels, H/f, W/f)."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        self.cfg = cfg
        self.num_resolutions = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, stride=1, padding=1)

        curr_res = cfg.resolution                  # pixel size at this level, for attn_resolutions
        in_ch_mult = (1,) + cfg.ch_mult
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block_in = cfg.ch * in_ch_mult[i_level]
            block_out = cfg.ch * cfg.ch_mult[i_level]
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout, cfg.num_groups))
                block_in = block_out
                if curr_res in cfg.attn_resolutions and cfg.attn_type == "vanilla":
                    level.attn.append(AttnBlock(block_in, cfg.num_groups))
            if i_level != self.num_resolutions - 1:
                level.downsample = Downsample(block_in, cfg.resamp_with_conv)
                curr_res = curr_res // 2
            self.down.append(level)

        self.mid = _make_mid(block_in, cfg)
        self.norm_out = Normalize(block_in, cfg.num_groups)
        z_out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = nn.Conv2d(block_in, z_out, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        f = self.cfg.downsample_factor
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"Encoder expects images of shape (B, {self.cfg.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"image height and width must be multiples of f={f} for this "
                             f"autoencoder, got {x.shape[2]}x{x.shape[3]}; pad or resize the image")
        h = self.conv_in(x)                                 # (B, ch, H, W)
        for i_level, level in enumerate(self.down):
            for i_block, block in enumerate(level.block):
                h = block(h)                                # (B, ch*mult[i], H/2^i, W/2^i)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)                     # (B, C, H/2^(i+1), W/2^(i+1))
        h = _run_mid(self.mid, h)                           # (B, ch*mult[-1], H/f, W/f)
        return self.conv_out(_silu(self.norm_out(h)))       # (B, (2)z, H/f, W/f)


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> image (B, out_ch, h*f, w*f)."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        self.cfg = cfg
        self.num_resolutions = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        # The reference starts from the lowest resolution and doubles on the way up.
        curr_res = cfg.resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _make_mid(block_in, cfg)

        # Built from the deepest level up, but stored by level index: up[0] is full resolution.
        levels: list[nn.Module] = []
        for i_level in reversed(range(self.num_resolutions)):
            block_out = cfg.ch * cfg.ch_mult[i_level]
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout, cfg.num_groups))
                block_in = block_out
                if curr_res in cfg.attn_resolutions and cfg.attn_type == "vanilla":
                    level.attn.append(AttnBlock(block_in, cfg.num_groups))
            if i_level != 0:
                level.upsample = Upsample(block_in, cfg.resamp_with_conv)
                curr_res = curr_res * 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)

        self.norm_out = Normalize(block_in, cfg.num_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 4 or z.shape[1] != self.cfg.z_channels:
            raise ValueError(f"Decoder expects latents of shape (B, {self.cfg.z_channels}, h, w), "
                             f"got {tuple(z.shape)}")
        h = self.conv_in(z)                                 # (B, ch*mult[-1], h, w)
        h = _run_mid(self.mid, h)
        for i_level in reversed(range(self.num_resolutions)):   # deepest level first
            level = self.up[i_level]
            for i_block, block in enumerate(level.block):
                h = block(h)                                # (B, ch*mult[i], ...)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = level.upsample(h)                       # spatial x2
        if self.cfg.give_pre_end:
            return h
        h = self.conv_out(_silu(self.norm_out(h)))          # (B, out_ch, h*f, w*f)
        return torch.tanh(h) if self.cfg.tanh_out else h


# --------------------------------------------------------------------------------------------
# The two first-stage models
# --------------------------------------------------------------------------------------------

class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder: encode -> DiagonalGaussianDistribution over (B, embed_dim, h, w)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.kind != "kl":
            raise ValueError(f"AutoencoderKL needs an AutoencoderConfig with kind='kl', got {cfg.kind!r}")
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        z = cfg.ddconfig.z_channels
        self.encoder = Encoder(cfg.ddconfig)
        self.decoder = Decoder(cfg.ddconfig)
        self.quant_conv = nn.Conv2d(2 * z, 2 * cfg.embed_dim, kernel_size=1)   # moments -> moments
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, z, kernel_size=1)

    def encode(self, x: Tensor) -> DiagonalGaussianDistribution:
        moments = self.quant_conv(self.encoder(x))         # (B, 2*embed_dim, H/f, W/f)
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))       # (B, 3, h*f, w*f)

    def forward(self, x: Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[Tensor, DiagonalGaussianDistribution]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def get_last_layer(self) -> Tensor:
        """Weight whose gradients set the adaptive GAN weight (Esser et al. 2021, eq. 7)."""
        return self.decoder.conv_out.weight


class VQModel(nn.Module):
    """VQ-regularised autoencoder with LDM's VQModelInterface semantics.

    encode(x) returns the continuous pre-quantisation h (the diffusion runs there);
    decode(h) quantises first. forward(x) is the training path (quantise, decode, codebook loss).
    """

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.kind != "vq":
            raise ValueError(f"VQModel needs an AutoencoderConfig with kind='vq', got {cfg.kind!r}")
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        z = cfg.ddconfig.z_channels
        self.encoder = Encoder(cfg.ddconfig)
        self.decoder = Decoder(cfg.ddconfig)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, beta=cfg.beta)
        self.quant_conv = nn.Conv2d(z, cfg.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, z, kernel_size=1)

    def encode(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))            # h: (B, embed_dim, H/f, W/f), not quantised

    def decode(self, h: Tensor, force_not_quantize: bool = False) -> Tensor:
        z_q = h if force_not_quantize else self.quantize(h)[0]   # snap to the nearest codes
        return self.decoder(self.post_quant_conv(z_q))     # (B, 3, h*f, w*f)

    def decode_code(self, indices: Tensor) -> Tensor:
        """Decode integer codes (B, h, w) directly."""
        z_q = self.quantize.embed_code(indices)             # (B, embed_dim, h, w)
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z_q, qloss, _ = self.quantize(self.encode(x))       # straight-through z_q
        return self.decoder(self.post_quant_conv(z_q)), qloss

    def get_last_layer(self) -> Tensor:
        return self.decoder.conv_out.weight


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderKL | VQModel:
    """The first-stage model named by cfg.kind."""
    if cfg.kind == "kl":
        return AutoencoderKL(cfg)
    if cfg.kind == "vq":
        return VQModel(cfg)
    raise ValueError(f"unknown autoencoder kind {cfg.kind!r}; expected 'kl' or 'vq'")
