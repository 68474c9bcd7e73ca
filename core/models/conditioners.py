"""Conditioning encoders tau_theta for LDM (Rombach et al. 2022, Sec. 3.3): class labels, a jointly
trained text transformer, and box layouts, each mapped to a cross-attention context (B, L, D).

* `ClassEmbedder`: latent-diffusion `ldm/modules/encoders/modules.py` ClassEmbedder; one learned
  vector per class, a length-1 context (FACTS.md section 4).
* `TransformerEmbedder`: the paper's T_theta (BERTEmbedder / TransformerEmbedder of latent-diffusion),
  whose module tree equals the vendored x-transformers `TransformerWrapper(num_tokens, max_seq_len,
  attn_layers=Encoder(dim, depth))` of `ldm/modules/x_transformer.py`, so the released weights load
  with strict=True.
* `LayoutEmbedder`: ours, for the shapes world; no reference weights.
* `SpatialRescaler`: latent-diffusion's, for semantic synthesis (the `semantic_synthesis256/512`
  configs): a one-hot segmentation map resized to the latent grid and mapped to a few channels by a
  1x1 convolution (`channel_mapper`), concatenated to z. Not a cross-attention context: (B, C', h, w).
"""
import math
import operator
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from core.models.clip_text import clip_bpe, excerpt, tokenize_clip

CLIP_VOCAB_SIZE = 49408      # open_clip's BPE, the tokenizer of our own text models


# --------------------------------------------------------------------------------------------
# ClassEmbedder
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassEmbedderConfig:
    embed_dim: int                         # D, the UNet's context_dim (cin256: 512)
    n_classes: int = 1000                  # rows of `embedding` (cin256-v2: 1001 = 1000 + null)
    key: str = "class"                     # batch dict key (the YAMLs say "class_label")
    has_null_class: bool | None = None     # None: True iff n_classes == 1001 (ImageNet + null class)

    def __post_init__(self):
        if self.embed_dim <= 0 or self.n_classes <= 0:
            raise ValueError(f"ClassEmbedder needs positive embed_dim and n_classes, got "
                             f"{self.embed_dim}, {self.n_classes}")

    @property
    def null_class_present(self) -> bool:
        """A null class (the last label) for classifier-free guidance: cin256-v2's 1001st."""
        return self.has_null_class if self.has_null_class is not None else self.n_classes == 1001


class ClassEmbedder(nn.Module):
    """Class labels (B,) -> (B, 1, D). With a null class (the last one, as cin256-v2 was trained with
    for classifier-free guidance), `null_class` is its label; otherwise None."""

    def __init__(self, cfg: ClassEmbedderConfig):
        super().__init__()
        self.cfg = cfg
        self.key = cfg.key
        self.n_classes = cfg.n_classes
        self.embedding = nn.Embedding(cfg.n_classes, cfg.embed_dim)
        self.null_class: int | None = cfg.n_classes - 1 if cfg.null_class_present else None

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def forward(self, batch: Tensor | list[int] | dict) -> Tensor:
        labels = batch[self.key] if isinstance(batch, dict) else batch
        labels = torch.as_tensor(labels, device=self.device)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1:
            raise ValueError(f"class labels must be integers of shape (B,), got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ValueError(f"class labels must be in [0, {self.n_classes - 1}], got "
                             f"{labels.min().item()}..{labels.max().item()}")
        return self.embedding(labels.long()[:, None])                       # (B, 1, D)

    def unconditional(self, batch_size: int) -> Tensor:
        """The CFG unconditional context: the null class's embedding, (B, 1, D)."""
        if self.null_class is None:
            raise ValueError(f"this class-conditional model ({self.n_classes} classes) was trained "
                             "without a null class, so it has no unconditional embedding; sample "
                             "with guidance_scale 1 (no CFG)")
        return self([self.null_class] * batch_size)


# --------------------------------------------------------------------------------------------
# TransformerEmbedder: x-transformers Encoder, module tree as in latent-diffusion's x_transformer.py
# --------------------------------------------------------------------------------------------

class AbsolutePositionalEmbedding(nn.Module):
    """`pos_emb.emb`: one learned vector per position."""

    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)                # (L,)
        return self.emb(positions)[None]                                    # (1, L, D)


class Attention(nn.Module):
    """x-transformers self-attention: bias-free q/k/v of heads * dim_head, softmax(q k^T / sqrt(d)) v."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head              # 8 * 64 = 512 by default, whatever dim is
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, L, _ = x.shape
        q, k, v = (t.view(B, L, self.heads, -1).transpose(1, 2)            # (B, h, L, d)
                   for t in (self.to_q(x), self.to_k(x), self.to_v(x)))
        out = F.scaled_dot_product_attention(q, k, v)                       # scale d^-0.5, no mask
        return self.to_out(out.transpose(1, 2).reshape(B, L, -1))           # (B, L, D)


class FeedForward(nn.Module):
    """`net` = Sequential(Sequential(Linear(D, mult*D), GELU), Dropout, Linear(mult*D, D)): exact GELU."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU()),
                                 nn.Dropout(0.0),
                                 nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """Pre-norm encoder: `layers` alternates attention ('a') and feed-forward ('f') entries, each
    ModuleList([LayerNorm, block, residual]) -> keys `layers.{2i}.0`, `layers.{2i}.1.to_q`, ...,
    `layers.{2i+1}.1.net.0.0`; the residual slot (index 2) has no weights (nn.Identity here)."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), Attention(dim, heads, dim_head), nn.Identity()]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), FeedForward(dim, ff_mult), nn.Identity()]))

    def forward(self, x: Tensor) -> Tensor:
        for norm, block, _residual in self.layers:
            x = x + block(norm(x))                                          # (B, L, D), pre-norm
        return x


class TransformerWrapper(nn.Module):
    """token_emb + pos_emb.emb -> attn_layers -> norm. `to_logits` (the LM head) is in the released
    checkpoints but never used for conditioning (return_embeddings=True)."""

    def __init__(self, num_tokens: int, max_seq_len: int, dim: int, depth: int, heads: int,
                 dim_head: int, ff_mult: int, with_logits: bool):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.pos_emb = AbsolutePositionalEmbedding(dim, max_seq_len)
        self.attn_layers = Encoder(dim, depth, heads, dim_head, ff_mult)
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens) if with_logits else None

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.token_emb(tokens)                                          # (B, L, D)
        x = x + self.pos_emb(x)
        return self.norm(self.attn_layers(x))                               # the embeddings, (B, L, D)


@dataclass(frozen=True)
class TransformerEmbedderConfig:
    """LDM's T_theta. BERTEmbedder (txt2img-f8: n_embed 1280, n_layer 32) reads BERT token ids
    (vocab 30522; the bert-base-uncased tokenizer is not bundled, so pass ids to `encode_tokens`);
    our own models use tokenizer "clip" (open_clip's BPE, vocab 49408, padded with 0)."""
    n_embed: int                           # width D
    n_layer: int                           # depth (attention + feed-forward pairs)
    vocab_size: int = 30522                # BERTEmbedder's default
    max_seq_len: int = 77
    heads: int = 8                         # x-transformers defaults (the reference passes neither)
    dim_head: int = 64
    ff_mult: int = 4
    tokenizer: str = "bert"                # "bert" (ids only) | "clip" (tokenize() works)
    with_logits: bool = True               # keep the unused `to_logits` head (released files have it)
    vocab: tuple[int, ...] | None = None   # ours, "clip" only: the BPE ids kept, in row order (the pad id 0
                                           # first); other ids read row 0. None: all 49408 rows

    def __post_init__(self):
        if self.tokenizer not in ("bert", "clip"):
            raise ValueError(f"tokenizer must be 'bert' or 'clip', got {self.tokenizer!r}")
        if self.vocab is not None:
            object.__setattr__(self, "vocab", tuple(int(i) for i in self.vocab))
            if self.tokenizer != "clip" or len(self.vocab) != self.vocab_size or not self.vocab or self.vocab[0] != 0:
                raise ValueError(f"a compact vocab needs tokenizer 'clip', vocab_size == len(vocab) and the pad "
                                 f"id 0 first; got tokenizer {self.tokenizer!r}, vocab_size {self.vocab_size}, "
                                 f"{len(self.vocab)} ids")
        elif self.tokenizer == "clip" and self.vocab_size < CLIP_VOCAB_SIZE:
            raise ValueError(f"tokenizer 'clip' needs vocab_size >= {CLIP_VOCAB_SIZE}, got {self.vocab_size}")
        if min(self.n_embed, self.n_layer, self.max_seq_len, self.heads, self.dim_head, self.ff_mult) <= 0:
            raise ValueError(f"TransformerEmbedderConfig sizes must be positive: {self}")


class TransformerEmbedder(nn.Module):
    """Token ids (B, L) or texts -> (B, L, n_embed), the UNet's cross-attention context."""

    pad_id = 0                                  # tokenizer "clip": padded with 0 after EOS

    def __init__(self, cfg: TransformerEmbedderConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = TransformerWrapper(cfg.vocab_size, cfg.max_seq_len, cfg.n_embed, cfg.n_layer,
                                              cfg.heads, cfg.dim_head, cfg.ff_mult, cfg.with_logits)
        self._vocab_rows: Tensor | None = None  # compact vocab: BPE id -> row (built on first use, on CPU)

    @property
    def device(self) -> torch.device:
        return self.transformer.token_emb.weight.device

    def tokenize(self, texts: list[str]) -> Tensor:
        if self.cfg.tokenizer != "clip":
            raise ValueError("this text transformer was trained on BERT (bert-base-uncased) token ids, "
                             "and that tokenizer is not bundled; pass token ids to encode_tokens()")
        tokens = tokenize_clip(texts, self.cfg.max_seq_len, pad_id=self.pad_id)  # (B, max_seq_len) BPE ids
        return self.bpe_rows(tokens, stacklevel=3)

    def bpe_rows(self, tokens: Tensor, stacklevel: int = 2) -> Tensor:
        """BPE ids -> rows of token_emb: the same ids with the full vocabulary; with a compact
        vocab, its row of each id, and a warning naming the words read as padding (row 0)."""
        if self.cfg.vocab is None:
            return tokens
        if self._vocab_rows is None:            # ids outside the vocab read row 0 (the pad)
            table = torch.zeros(CLIP_VOCAB_SIZE, dtype=torch.long, device="cpu")
            table[torch.tensor(self.cfg.vocab, device="cpu")] = torch.arange(len(self.cfg.vocab), device="cpu")
            self._vocab_rows = table
        rows = self._vocab_rows[tokens]
        unknown = (rows == 0) & (tokens != 0)
        if unknown.any():
            words = sorted({clip_bpe().decode([int(t)]).strip() for t in tokens[unknown]})
            warnings.warn(f"this model knows {len(self.cfg.vocab)} tokens; these were read as padding: "
                          f"{excerpt(', '.join(words))}", stacklevel=stacklevel)
        return rows

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        if tokens.ndim != 2 or tokens.dtype.is_floating_point:
            raise ValueError(f"token ids must be an integer tensor (B, L), got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"{tokens.shape[1]} tokens exceed max_seq_len {self.cfg.max_seq_len}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size - 1}]")
        return self.transformer(tokens.to(self.device, torch.long))         # (B, L, D)

    def forward(self, batch: Tensor | list[str]) -> Tensor:
        if isinstance(batch, Tensor):
            return self.encode_tokens(batch)
        return self.encode_tokens(self.tokenize(batch))

    def encode(self, batch: Tensor | list[str]) -> Tensor:
        return self(batch)


# --------------------------------------------------------------------------------------------
# LayoutEmbedder (ours): one token per box
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayoutEmbedderConfig:
    embed_dim: int                         # D, the UNet's context_dim
    n_classes: int                         # object classes 0..n_classes-1
    max_objects: int = 8                   # context length L; shorter layouts are padded
    n_freqs: int = 8                       # Fourier frequencies 2^k * pi, k < n_freqs, per coordinate

    def __post_init__(self):
        if min(self.embed_dim, self.n_classes, self.max_objects, self.n_freqs) <= 0:
            raise ValueError(f"LayoutEmbedderConfig sizes must be positive: {self}")


def fourier_features(boxes: Tensor, n_freqs: int) -> Tensor:
    """(..., 4) coords in [0, 1] -> (..., 4 * 2 * n_freqs): sin and cos of 2^k * pi * coord."""
    freqs = math.pi * 2.0 ** torch.arange(n_freqs, device=boxes.device, dtype=boxes.dtype)  # (F,)
    angles = (boxes[..., None] * freqs).flatten(-2)                         # (..., 4F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)                  # (..., 8F)


class LayoutEmbedder(nn.Module):
    """Layouts -> (B, max_objects, D). Object token = class embedding + Linear(Fourier(x0, y0, x1, y1));
    empty slots hold the learned `null_token`, so the empty layout [] is the CFG unconditional."""

    def __init__(self, cfg: LayoutEmbedderConfig):
        super().__init__()
        self.cfg = cfg
        self.class_embedding = nn.Embedding(cfg.n_classes, cfg.embed_dim)
        self.box_proj = nn.Linear(4 * 2 * cfg.n_freqs, cfg.embed_dim)
        self.null_token = nn.Parameter(torch.randn(cfg.embed_dim) * 0.02)

    @property
    def device(self) -> torch.device:
        return self.null_token.device

    def layouts_to_tensors(self, layouts: list) -> tuple[Tensor, Tensor]:
        """Validate a batch of layouts -> classes (B, K) int64 with -1 = empty, boxes (B, K, 4)."""
        B, K = len(layouts), self.cfg.max_objects
        classes = torch.full((B, K), -1, dtype=torch.long)
        boxes = torch.zeros(B, K, 4, dtype=torch.float64)
        for b, layout in enumerate(layouts):
            if len(layout) > K:
                raise ValueError(f"layout {b} has {len(layout)} objects; this model takes at most {K}")
            for i, obj in enumerate(layout):
                if len(obj) != 5:
                    raise ValueError(f"layout {b} object {i} must be (class_id, x0, y0, x1, y1), got {obj!r}")
                c, *xyxy = obj
                try:
                    c = operator.index(c)                                   # int, numpy or 0-d torch int
                except TypeError:
                    c = None
                if c is None or isinstance(obj[0], bool) or not 0 <= c < self.cfg.n_classes:
                    raise ValueError(f"layout {b} object {i}: class id must be an int in "
                                     f"[0, {self.cfg.n_classes - 1}], got {obj[0]!r}")
                try:
                    x0, y0, x1, y1 = (float(v) for v in xyxy)
                except (TypeError, ValueError):
                    x0 = y0 = x1 = y1 = math.nan                            # reported just below
                if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)) or x0 > x1 or y0 > y1:
                    raise ValueError(f"layout {b} object {i}: box must satisfy 0 <= x0 <= x1 <= 1 and "
                                     f"0 <= y0 <= y1 <= 1 (fractions of the image), got {tuple(xyxy)}")
                classes[b, i] = c
                boxes[b, i] = torch.tensor([x0, y0, x1, y1], dtype=torch.float64)
        return classes, boxes

    def encode_tensors(self, classes: Tensor, boxes: Tensor) -> Tensor:
        """classes (B, K) with -1 = no object, boxes (B, K, 4) -> (B, K, D)."""
        weight = self.null_token
        classes = classes.to(weight.device)
        present = classes >= 0                                              # (B, K)
        tokens = self.class_embedding(classes.clamp(min=0))                 # (B, K, D)
        tokens = tokens + self.box_proj(fourier_features(boxes.to(weight), self.cfg.n_freqs))
        return torch.where(present[..., None], tokens, weight.expand_as(tokens))

    def forward(self, layouts: list) -> Tensor:
        classes, boxes = self.layouts_to_tensors(layouts)
        return self.encode_tensors(classes, boxes)                          # (B, max_objects, D)

    def encode(self, layouts: list) -> Tensor:
        return self(layouts)


# --------------------------------------------------------------------------------------------
# SpatialRescaler: latent-diffusion `ldm/modules/encoders/modules.py`, for semantic synthesis
# --------------------------------------------------------------------------------------------

RESCALE_METHODS = ("nearest", "bilinear", "bicubic", "area")   # the reference's, less the 1-D / 3-D modes


@dataclass(frozen=True)
class SpatialRescalerConfig:
    """The reference's constructor arguments (semantic_synthesis256/512: n_stages 2, in_channels 182,
    out_channels 3, the rest default)."""
    n_stages: int = 1                      # resizes by `multiplier`, n_stages times
    method: str = "bilinear"               # F.interpolate mode
    multiplier: float = 0.5                # scale factor of each stage
    in_channels: int = 3                   # the one-hot map's channels: the number of classes (COCO-stuff: 182)
    out_channels: int | None = None        # None: no channel_mapper (the resized map is concatenated as it is)
    bias: bool = False                     # channel_mapper's bias

    def __post_init__(self):
        if self.method not in RESCALE_METHODS:
            raise ValueError(f"SpatialRescaler method must be one of {RESCALE_METHODS} for images, "
                             f"got {self.method!r}")
        if self.n_stages < 0 or not self.multiplier > 0 or self.in_channels <= 0 or \
                (self.out_channels is not None and self.out_channels <= 0):
            raise ValueError(f"SpatialRescalerConfig needs n_stages >= 0, multiplier > 0 and positive channel "
                             f"counts: {self}")

    @property
    def channels(self) -> int:
        """Channels of the output, concatenated to z in front of the UNet."""
        return self.in_channels if self.out_channels is None else self.out_channels

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) that F.interpolate gives for an (height, width) map: floor per stage."""
        for _ in range(self.n_stages):
            height, width = math.floor(height * self.multiplier), math.floor(width * self.multiplier)
        return height, width


class SpatialRescaler(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H * m^n, W * m^n): n_stages interpolations by
    `multiplier`, then the 1x1 `channel_mapper` (the checkpoint key) when out_channels is set."""

    def __init__(self, cfg: SpatialRescalerConfig):
        super().__init__()
        self.cfg = cfg
        self.channel_mapper = (nn.Conv2d(cfg.in_channels, cfg.out_channels, 1, bias=cfg.bias)
                               if cfg.out_channels is not None else None)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"the segmentation map must be (B, {self.cfg.in_channels}, H, W) (one channel per "
                             f"class); got {tuple(x.shape)}")
        if self.channel_mapper is not None:
            x = x.to(self.channel_mapper.weight)                            # the weights' device and dtype
        for _ in range(self.cfg.n_stages):
            x = F.interpolate(x, scale_factor=self.cfg.multiplier, mode=self.cfg.method)   # (B, C, H m, W m)
        return x if self.channel_mapper is None else self.channel_mapper(x)            # (B, C', h, w)

    def encode(self, x: Tensor) -> Tensor:
        return self(x)
