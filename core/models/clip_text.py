"""CLIP text encoders tau_theta of Stable Diffusion: OpenCLIP ViT-H/14 (SD 2.x) and CLIP ViT-L/14 (SD 1.x).

Both run open_clip's own text tower (`open_clip.transformer.TextTransformer`, batch-first) with
random init; the weights always come from the checkpoint (no `pretrained=`, no download).

* `FrozenOpenCLIPEmbedder` (Stability-AI/stablediffusion `ldm/modules/encoders/modules.py`):
  `self.model` is the text tower plus CLIP's `logit_scale`, so the state_dict is exactly SD2's
  `cond_stage_model.model.*` (FACTS.md section 4). Layer "penultimate" runs every resblock but the
  last and THEN STILL applies `ln_final` (trap 2). The reference permutes to (L, B, D) for
  open_clip <= 2.7; current open_clip is batch-first, so there is no permute here.
* `FrozenCLIPEmbedder` (CompVis/stable-diffusion, HF `CLIPTextModel`): the same tower under
  `self.transformer`. SD1 files store HF key names (`transformer.text_model.encoder.layers...`);
  `core.checkpoints.clip_keys.hf_clip_text_to_ours` maps them. The math is HF's: pre-LN, QuickGELU,
  causal mask, `last_hidden_state` = after final_layer_norm, all 77 positions, no padding mask.

Tokenisation (FACTS.md section 4, trap 1): the same OpenAI BPE for both (vocab 49408, BOS 49406,
EOS 49407, 77 tokens, the 77th forced to EOS on truncation), but SD1's HF tokenizer pads with 49407
and SD2's `open_clip.tokenize` pads with 0.
"""

import functools
import math
import warnings
from dataclasses import dataclass, fields

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer
from torch import Tensor

BOS_ID = 49406           # <start_of_text>
EOS_ID = 49407           # <end_of_text>
SD1_PAD_ID = EOS_ID      # HF CLIPTokenizer (openai/clip-vit-large-patch14) pads with EOS
SD2_PAD_ID = 0           # open_clip.tokenize pads with 0
TEXT_LAYERS = ("last", "penultimate")


# --------------------------------------------------------------------------------------------
# Tokeniser: open_clip's bundled BPE (works offline), padded the way each family expects.
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def clip_bpe() -> SimpleTokenizer:
    """The OpenAI CLIP BPE shipped inside open_clip (`bpe_simple_vocab_16e6.txt.gz`); built once."""
    return SimpleTokenizer()


def excerpt(text: str, limit: int = 120) -> str:
    """`text` cut to `limit` characters for a log line (a prompt may be megabytes long)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def tokenize_clip(texts: list[str] | str, length: int, pad_id: int) -> Tensor:
    """[BOS] + BPE(text) + [EOS], padded with `pad_id` to `length` -> LongTensor (B, length).

    Text is cleaned as CLIP does (ftfy, whitespace collapse, lower case). An over-long prompt is cut
    to BOS + (length - 2) tokens + EOS (the last position is forced to EOS, as both references do)
    and a warning says how many tokens were dropped. "" is valid: [BOS, EOS, pad, ...], the CFG
    unconditional prompt.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not all(isinstance(t, str) for t in texts):
        raise TypeError(f"expected a list of strings, got {[type(t).__name__ for t in texts]}")
    if length < 2:
        raise ValueError(f"a token length must hold at least BOS and EOS, got {length}")
    bpe = clip_bpe()
    tokens = torch.full((len(texts), length), pad_id, dtype=torch.long)     # (B, L)
    for i, text in enumerate(texts):
        ids = [bpe.sot_token_id] + bpe.encode(text) + [bpe.eot_token_id]
        if len(ids) > length:
            warnings.warn(f"prompt {i} is {len(ids) - 2} tokens long; the text encoder reads at most "
                          f"{length - 2}, so the last {len(ids) - length} tokens were dropped: "
                          f"{excerpt(bpe.decode(ids[length - 1:-1][:200]).strip())!r}", stacklevel=3)
            ids = ids[:length - 1] + [bpe.eot_token_id]
        tokens[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return tokens


# --------------------------------------------------------------------------------------------
# open_clip's text tower, built from a CLIPTextCfg (random init) and run block by block.
# --------------------------------------------------------------------------------------------

def build_text_tower(cfg: CLIPTextCfg, embed_dim: int | None, quick_gelu: bool,
                     layer_norm_eps: float = 1e-5) -> TextTransformer:
    """open_clip's TextTransformer for `cfg`; `embed_dim` None -> no `text_projection` (HF CLIPTextModel)."""
    if cfg.hf_model_name:
        raise ValueError(f"text_cfg.hf_model_name={cfg.hf_model_name!r} is a HuggingFace text tower; "
                         "only open_clip's own TextTransformer is supported here")
    if cfg.embed_cls:
        raise ValueError("text_cfg.embed_cls=True (CoCa) appends a CLS token; SD text encoders have none")
    act_layer = QuickGELU if quick_gelu else nn.GELU          # exact GELU unless told otherwise
    if cfg.act_kwargs:
        act_layer = functools.partial(act_layer, **cfg.act_kwargs)
    norm_kwargs = {"eps": layer_norm_eps, **(cfg.norm_kwargs or {})}
    return TextTransformer(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.width,
        heads=cfg.heads,
        layers=cfg.layers,
        mlp_ratio=cfg.mlp_ratio,
        ls_init_value=cfg.ls_init_value,
        output_dim=embed_dim,
        no_causal_mask=cfg.no_causal_mask,
        pad_id=cfg.pad_id,
        pool_type=cfg.pool_type,
        proj_type="none" if embed_dim is None else cfg.proj_type,
        proj_bias=cfg.proj_bias,
        act_layer=act_layer,
        norm_layer=functools.partial(LayerNorm, **norm_kwargs),
        block_type=cfg.block_type,
        qk_norm=cfg.qk_norm,
        scaled_cosine_attn=cfg.scaled_cosine_attn,
        scale_heads=cfg.scale_heads,
        scale_attn_inner=cfg.scale_attn_inner,
        scale_attn=cfg.scale_attn,
        scale_fc=cfg.scale_fc,
    )


def run_text_tower(tower: TextTransformer, tokens: Tensor, n_blocks: int,
                   extra_vectors: Tensor | None = None) -> Tensor:
    """Embeddings + the first `n_blocks` resblocks (no final norm): (B, L) ids -> (B, L, width).

    extra_vectors (n, width): token vectors for ids vocab_size .. vocab_size + n - 1 (textual-inversion
    embeddings, core/embeddings.py), looked up as if appended to the token embedding table."""
    weight = tower.token_embedding.weight
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (B, L), got shape {tuple(tokens.shape)}")
    L = tokens.shape[1]
    if L > tower.context_length:
        raise ValueError(f"{L} tokens exceed the text encoder's context length {tower.context_length}")
    tokens = tokens.to(device=weight.device, dtype=torch.long)
    if extra_vectors is None:
        x = tower.token_embedding(tokens)                                   # (B, L, D)
    else:
        x = F.embedding(tokens, torch.cat([weight, extra_vectors.to(weight)]))  # (B, L, D)
    x = x + tower.positional_embedding[:L]                                  # (B, L, D)
    mask = tower.attn_mask[:L, :L] if tower.attn_mask is not None else None  # (L, L) additive causal
    for block in tower.transformer.resblocks[:n_blocks]:
        x = block(x, attn_mask=mask)                                        # (B, L, D), batch-first
    return x


def _skipped(n_blocks: int, clip_skip: int) -> int:
    """The blocks run with clip skip N (1 = all n_blocks): n_blocks - (N - 1), at least 1."""
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= n_blocks:
        raise ValueError(f"clip_skip must be a whole number in [1, {n_blocks}] (1 = the usual layer); "
                         f"got {clip_skip!r}.")
    return n_blocks - (clip_skip - 1)


def _check_max_length(max_length: int, context_length: int) -> None:
    if not 2 <= max_length <= context_length:
        raise ValueError(f"max_length must be in [2, {context_length}] (the positional embedding's "
                         f"length), got {max_length}")


# --------------------------------------------------------------------------------------------
# SD 2.x: FrozenOpenCLIPEmbedder
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrozenOpenCLIPEmbedderConfig:
    """SD2's text encoder. Shape from open_clip's bundled `model_configs/<arch>.json` (read offline),
    or from `text_cfg` (CLIPTextCfg fields: width, heads, layers, context_length, vocab_size, ...),
    which wins over `arch` when given."""
    arch: str = "ViT-H-14"                 # open_clip model name; its JSON gives text_cfg/embed_dim
    text_cfg: dict | None = None           # explicit CLIPTextCfg fields (tiny test models, ours)
    embed_dim: int | None = None           # text_projection output dim; None: JSON's, else width
    quick_gelu: bool | None = None         # None: the arch JSON's "quick_gelu" (ViT-H-14: exact GELU)
    layer: str = "last"                    # "last" | "penultimate" (SD2 YAMLs: "penultimate")
    max_length: int = 77                   # tokens per prompt

    def __post_init__(self):
        if self.layer not in TEXT_LAYERS:
            raise ValueError(f"layer must be one of {TEXT_LAYERS}, got {self.layer!r}")
        if self.text_cfg is not None:
            self.clip_text_cfg()          # fail now, with a clear message, on unknown fields
        elif self.arch not in open_clip.list_models():
            raise ValueError(f"unknown open_clip arch {self.arch!r}; give text_cfg explicitly or "
                             f"one of open_clip.list_models(), e.g. 'ViT-H-14'")
        _check_max_length(self.max_length, self.clip_text_cfg().context_length)

    def _arch_json(self) -> dict:
        return open_clip.get_model_config(self.arch) or {}

    def clip_text_cfg(self) -> CLIPTextCfg:
        raw = self.text_cfg if self.text_cfg is not None else self._arch_json()["text_cfg"]
        known = {f.name for f in fields(CLIPTextCfg)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"text_cfg has fields open_clip's CLIPTextCfg does not know: {unknown}")
        return CLIPTextCfg(**raw)

    def resolved_embed_dim(self) -> int:
        if self.embed_dim is not None:
            return self.embed_dim
        if self.text_cfg is None:
            return self._arch_json()["embed_dim"]
        return self.clip_text_cfg().width

    def resolved_quick_gelu(self) -> bool:
        if self.quick_gelu is not None:
            return self.quick_gelu
        return False if self.text_cfg is not None else bool(self._arch_json().get("quick_gelu", False))

    @property
    def n_blocks(self) -> int:
        """The resblocks run for the configured layer (and the largest clip skip)."""
        return self.clip_text_cfg().layers - (1 if self.layer == "penultimate" else 0)


class FrozenOpenCLIPEmbedder(nn.Module):
    """Prompts -> OpenCLIP text tokens (B, max_length, width) for SD 2.x cross-attention."""

    pad_id = SD2_PAD_ID

    def __init__(self, cfg: FrozenOpenCLIPEmbedderConfig = FrozenOpenCLIPEmbedderConfig()):
        super().__init__()
        self.cfg = cfg
        self.model = build_text_tower(cfg.clip_text_cfg(), cfg.resolved_embed_dim(),
                                      cfg.resolved_quick_gelu())
        # The reference keeps the whole CLIP model minus `visual`, so CLIP's logit_scale (0-d) is
        # stored in the checkpoint although text encoding never reads it.
        self.model.logit_scale = nn.Parameter(torch.full((), math.log(1 / 0.07)))
        self.requires_grad_(False)        # frozen, as the reference's freeze()

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    def tokenize(self, texts: list[str]) -> Tensor:
        return tokenize_clip(texts, self.cfg.max_length, pad_id=self.pad_id)   # (B, L), pad 0

    @property
    def n_blocks(self) -> int:
        """The resblocks run for the configured layer (and the largest clip skip)."""
        return self.cfg.n_blocks

    def encode_tokens(self, tokens: Tensor, clip_skip: int = 1, extra_vectors: Tensor | None = None) -> Tensor:
        """clip_skip N > 1 stops N - 1 blocks earlier than the configured layer (SD2: counted from
        the penultimate block), still followed by ln_final. extra_vectors: see run_text_tower."""
        x = run_text_tower(self.model, tokens, _skipped(self.n_blocks, clip_skip), extra_vectors)  # (B, L, D)
        return self.model.ln_final(x)      # ln_final also after "penultimate" (FACTS.md trap 2)

    def forward(self, texts: list[str]) -> Tensor:
        return self.encode_tokens(self.tokenize(texts))                        # (B, L, D)

    def encode(self, texts: list[str]) -> Tensor:
        return self(texts)


# --------------------------------------------------------------------------------------------
# SD 1.x: FrozenCLIPEmbedder (HF CLIPTextModel math on open_clip's tower)
# --------------------------------------------------------------------------------------------

# HF CLIPTextConfig shapes of the text towers SD-family configs name by `version`.
KNOWN_CLIP_VERSIONS: dict[str, dict] = {
    "openai/clip-vit-large-patch14": dict(hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12),
    "openai/clip-vit-base-patch32": dict(hidden_size=512, intermediate_size=2048,
                                         num_hidden_layers=12, num_attention_heads=8),
    "openai/clip-vit-base-patch16": dict(hidden_size=512, intermediate_size=2048,
                                         num_hidden_layers=12, num_attention_heads=8),
}
HIDDEN_ACTS = ("quick_gelu", "gelu")
CLIP_LAYERS = ("last", "hidden")


@dataclass(frozen=True)
class FrozenCLIPEmbedderConfig:
    """SD1's text encoder, with HF CLIPTextConfig field names; defaults = openai/clip-vit-large-patch14.
    `from_version(name, **overrides)` fills the shape of another known version."""
    version: str = "openai/clip-vit-large-patch14"
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"         # x * sigmoid(1.702 x); "gelu" = exact erf GELU
    layer_norm_eps: float = 1e-5
    layer: str = "last"                    # "last" = last_hidden_state (after final_layer_norm)
    layer_idx: int | None = None           # layer "hidden": HF hidden_states[layer_idx] (no final LN)
    max_length: int = 77                   # tokens per prompt

    @property
    def n_blocks(self) -> int:
        """The blocks run for the configured layer (and the largest clip skip): HF hidden_states =
        (embeddings, block 1 out, ..., block n out), index i = i blocks run."""
        n = self.num_hidden_layers
        return n if self.layer == "last" else self.layer_idx % (n + 1)

    def __post_init__(self):
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act must be one of {HIDDEN_ACTS}, got {self.hidden_act!r}")
        if self.layer not in CLIP_LAYERS:
            raise ValueError(f"layer must be one of {CLIP_LAYERS} ('pooled' is not a cross-attention "
                             f"context), got {self.layer!r}")
        n = self.num_hidden_layers
        if self.layer == "hidden" and (self.layer_idx is None or not -(n + 1) <= self.layer_idx <= n):
            raise ValueError(f"layer 'hidden' needs layer_idx in [{-(n + 1)}, {n}] (an index into HF "
                             f"hidden_states: 0 = embeddings, {n} or -1 = last block), got {self.layer_idx}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if int(self.hidden_size * self.mlp_ratio) != self.intermediate_size:
            raise ValueError(f"intermediate_size {self.intermediate_size} is not representable as "
                             f"hidden_size * mlp_ratio in open_clip")
        _check_max_length(self.max_length, self.max_position_embeddings)

    @property
    def mlp_ratio(self) -> float:
        return self.intermediate_size / self.hidden_size

    @classmethod
    def from_version(cls, version: str, **overrides) -> "FrozenCLIPEmbedderConfig":
        if version not in KNOWN_CLIP_VERSIONS:
            raise ValueError(f"unknown CLIP version {version!r}; known: {sorted(KNOWN_CLIP_VERSIONS)}. "
                             "For another shape, give the HF CLIPTextConfig fields explicitly.")
        return cls(version=version, **{**KNOWN_CLIP_VERSIONS[version], **overrides})

    def clip_text_cfg(self) -> CLIPTextCfg:
        return CLIPTextCfg(context_length=self.max_position_embeddings, vocab_size=self.vocab_size,
                           width=self.hidden_size, heads=self.num_attention_heads,
                           layers=self.num_hidden_layers, mlp_ratio=self.mlp_ratio)


class FrozenCLIPEmbedder(nn.Module):
    """Prompts -> CLIP ViT-L/14 text tokens (B, max_length, 768) for SD 1.x cross-attention."""

    pad_id = SD1_PAD_ID

    def __init__(self, cfg: FrozenCLIPEmbedderConfig = FrozenCLIPEmbedderConfig()):
        super().__init__()
        self.cfg = cfg
        # HF CLIPTextModel has no text projection; its layers map 1:1 onto open_clip's (clip_keys.py).
        self.transformer = build_text_tower(cfg.clip_text_cfg(), embed_dim=None,
                                            quick_gelu=cfg.hidden_act == "quick_gelu",
                                            layer_norm_eps=cfg.layer_norm_eps)
        self.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.transformer.token_embedding.weight.device

    def tokenize(self, texts: list[str]) -> Tensor:
        return tokenize_clip(texts, self.cfg.max_length, pad_id=self.pad_id)   # (B, L), pad 49407

    @property
    def n_blocks(self) -> int:
        """The blocks run for the configured layer (and the largest clip skip). HF hidden_states =
        (embeddings, block 1 out, ..., block n out): index i = i blocks run."""
        return self.cfg.n_blocks

    def encode_tokens(self, tokens: Tensor, clip_skip: int = 1, extra_vectors: Tensor | None = None) -> Tensor:
        """clip_skip N > 1 (AUTOMATIC1111's "Clip skip"): HF hidden_states[-N], i.e. N - 1 blocks
        fewer, then final_layer_norm, as A1111 does for SD1. extra_vectors: see run_text_tower."""
        x = run_text_tower(self.transformer, tokens, _skipped(self.n_blocks, clip_skip),
                           extra_vectors)                                                  # (B, L, D)
        if self.cfg.layer == "last":
            return self.transformer.ln_final(x)                                 # last_hidden_state
        return x                    # layer "hidden": the reference returns it without final_layer_norm

    def forward(self, texts: list[str]) -> Tensor:
        return self.encode_tokens(self.tokenize(texts))                        # (B, L, D)

    def encode(self, texts: list[str]) -> Tensor:
        return self(texts)
