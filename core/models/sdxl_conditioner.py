"""SDXL's conditioner (Podell et al. 2023, Sec. 2.1-2.2): sgm's `GeneralConditioner`.

Stability-AI/generative-models `sgm/modules/encoders/modules.py`. Every embedder reads one key of a
batch dict and returns tensors; a 3-D output (B, L, D) is a cross-attention context, concatenated
along D ("crossattn"), a 2-D one (B, D) is part of the ADM vector y, concatenated along D ("vector").
The module tree is the checkpoint's `conditioner.embedders.N.*`:

    SDXL base     0 txt  CLIP ViT-L/14 (HF keys under `transformer.`), hidden layer 11 of 12  (B, 77, 768)
                  1 txt  OpenCLIP ViT-bigG/14 (`model.*`): penultimate layer          (B, 77, 1280)
                         and the pooled output through text_projection             (B, 1280)
                  2 original_size_as_tuple  (h, w)  Fourier features, 256 each    (B, 512)
                  3 crop_coords_top_left    (top, left)                            (B, 512)
                  4 target_size_as_tuple    (h, w)                                 (B, 512)
                  -> context (B, 77, 2048), y (B, 2816)
    SDXL refiner  0 txt bigG; 1 original size; 2 crop; 3 aesthetic_score (B, 256) -> (B, 77, 1280), y (B, 2560)

Traps (read from the reference, not guessed):
* legacy=False OpenCLIP (`FrozenOpenCLIPEmbedder2`): the penultimate hidden state is returned
  WITHOUT ln_final (unlike SD2's penultimate, FACTS trap 2); only the pooled vector goes through
  ln_final, taken at the EOS position (the argmax of the token ids), then `@ text_projection`.
* Padding: the CLIP-L embedder pads with 49407 (HF tokenizer), the OpenCLIP one with 0.
* Sizes are (height, width), each number embedded on its own with the UNet's cos-first sinusoid.
* Unconditional branch of the reference scripts: base zeroes every output of the `txt` embedders
  (`force_zero_embeddings=["txt"]`), sizes kept; the refiner encodes "" with a low aesthetic score.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from core.models.clip_text import (SD2_PAD_ID, FrozenCLIPEmbedder, FrozenCLIPEmbedderConfig,
                                   FrozenOpenCLIPEmbedder, FrozenOpenCLIPEmbedderConfig, run_text_tower,
                                   tokenize_clip)
from core.models.unet import timestep_embedding

TXT = "txt"
SIZE_KEYS = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple", "aesthetic_score")


# --------------------------------------------------------------------------------------------
# OpenCLIP ViT-bigG/14 with a pooled output (`FrozenOpenCLIPEmbedder2`)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrozenOpenCLIPEmbedder2Config(FrozenOpenCLIPEmbedderConfig):
    """SDXL's OpenCLIP text encoder: SD2's config plus sgm's `legacy` and `always_return_pooled`."""
    arch: str = "ViT-bigG-14"
    layer: str = "penultimate"
    legacy: bool = False                   # False: hidden state without ln_final, plus the pooled vector
    always_return_pooled: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.always_return_pooled and self.legacy:
            raise ValueError("always_return_pooled needs legacy=False (as the reference asserts)")


class FrozenOpenCLIPEmbedder2(FrozenOpenCLIPEmbedder):
    """Prompts -> hidden (B, L, width) [, pooled (B, embed_dim)]; same keys as SD2's embedder."""

    def encode_tokens(self, tokens: Tensor, clip_skip: int = 1, extra_vectors: Tensor | None = None):
        """extra_vectors: textual-inversion vectors for ids past the vocabulary (run_text_tower); the
        pooled output is read at the EOS, the largest id of the vocabulary (those ids excluded)."""
        if self.cfg.legacy:
            return super().encode_tokens(tokens, clip_skip, extra_vectors)   # ln_final applied
        tower = self.model
        n = len(tower.transformer.resblocks)
        penultimate = run_text_tower(tower, tokens, n - 1, extra_vectors)      # (B, L, D)
        L = penultimate.shape[1]
        mask = tower.attn_mask[:L, :L] if tower.attn_mask is not None else None
        last = tower.transformer.resblocks[n - 1](penultimate, attn_mask=mask)  # (B, L, D)
        hidden = penultimate if self.cfg.layer == "penultimate" else last     # no ln_final here
        tokens = tokens.to(last.device)
        vocab = tower.token_embedding.weight.shape[0]
        eos = tokens.masked_fill(tokens >= vocab, 0).argmax(dim=-1)           # (B,) EOS is the largest id
        pooled = tower.ln_final(last)[torch.arange(last.shape[0], device=last.device), eos]  # (B, D)
        pooled = pooled @ tower.text_projection                               # (B, embed_dim)
        return (hidden, pooled) if self.cfg.always_return_pooled else hidden

    def tokenize(self, texts: list[str]) -> Tensor:
        return tokenize_clip(texts, self.cfg.max_length, pad_id=SD2_PAD_ID)  # open_clip.tokenize: pad 0


# --------------------------------------------------------------------------------------------
# Fourier embedding of sizes, crops and scores (`ConcatTimestepEmbedderND`)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConcatTimestepEmbedderNDConfig:
    outdim: int = 256                      # sinusoid width per number

    def __post_init__(self):
        if self.outdim < 1:
            raise ValueError(f"ConcatTimestepEmbedderND outdim must be >= 1, got {self.outdim}")


class ConcatTimestepEmbedderND(nn.Module):
    """(B, d) numbers -> (B, d * outdim): each number through the cos-first sinusoid, concatenated
    in input order. No weights."""

    def __init__(self, cfg: ConcatTimestepEmbedderNDConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, x) -> Tensor:
        x = torch.as_tensor(x)
        if x.ndim == 1:
            x = x[:, None]                                                     # (B, 1): a score
        if x.ndim != 2:
            raise ValueError(f"size/crop/score conditioning must be (B,) or (B, d), got {tuple(x.shape)}")
        b, d = x.shape
        emb = timestep_embedding(x.reshape(b * d), self.cfg.outdim)           # (B*d, outdim)
        return emb.reshape(b, d * self.cfg.outdim)                             # (B, d*outdim)


# --------------------------------------------------------------------------------------------
# GeneralConditioner
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EmbedderSpec:
    """One entry of `conditioner_config.params.emb_models`: which batch key feeds which embedder."""
    input_key: str                         # "txt", "original_size_as_tuple", ...
    embedder: Any                          # FrozenCLIPEmbedderConfig | FrozenOpenCLIPEmbedder2Config | ...


# The embedder module each config builds: an explicit table (no import strings).
EMBEDDERS: dict[type, type[nn.Module]] = {
    FrozenCLIPEmbedderConfig: FrozenCLIPEmbedder,
    FrozenOpenCLIPEmbedder2Config: FrozenOpenCLIPEmbedder2,
    ConcatTimestepEmbedderNDConfig: ConcatTimestepEmbedderND,
}


@dataclass(frozen=True)
class GeneralConditionerConfig:
    embedders: tuple[EmbedderSpec, ...]
    native_size: int = 1024                # pixels; the default original/target size of prompts

    def __post_init__(self):
        specs = tuple(EmbedderSpec(**e) if isinstance(e, dict) else e for e in self.embedders)
        object.__setattr__(self, "embedders", specs)
        for spec in specs:
            if type(spec.embedder) not in EMBEDDERS:
                raise ValueError(f"no SDXL embedder for {type(spec.embedder).__name__}; known: "
                                 f"{', '.join(c.__name__ for c in EMBEDDERS)}")

    @property
    def input_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(spec.input_key for spec in self.embedders))


class GeneralConditioner(nn.Module):
    """batch dict -> {"crossattn": (B, L, sum D), "vector": (B, sum D)} (sgm's output keys)."""

    def __init__(self, cfg: GeneralConditionerConfig):
        super().__init__()
        self.cfg = cfg
        self.input_keys = [spec.input_key for spec in cfg.embedders]
        self.embedders = nn.ModuleList(EMBEDDERS[type(spec.embedder)](spec.embedder) for spec in cfg.embedders)
        self.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, batch: dict, force_zero_embeddings=(), text_outputs: dict | None = None) -> dict[str, Tensor]:
        """text_outputs: {embedder index: its output (hidden (B, L, D), or (hidden, pooled (B, E)))} used
        instead of running those embedders on batch["txt"]: A1111's prompt syntax (chunks, emphasis,
        embeddings) is encoded outside, by core/pipelines/conditioning.py."""
        missing = [k for k in self.cfg.input_keys if k not in batch]
        if missing:
            raise ValueError(f"the conditioning batch lacks {missing}; this model reads {list(self.cfg.input_keys)}")
        unknown = sorted(set(force_zero_embeddings) - set(self.cfg.input_keys))
        if unknown:
            raise ValueError(f"force_zero_embeddings names {unknown}, which no embedder reads "
                             f"({list(self.cfg.input_keys)})")
        dtype = next(self.parameters()).dtype
        out: dict[str, Tensor] = {}
        for index, (key, embedder) in enumerate(zip(self.input_keys, self.embedders)):
            value = batch[key]
            if isinstance(embedder, ConcatTimestepEmbedderND):
                value = torch.as_tensor(value, device=self.device)
            if text_outputs and index in text_outputs:
                embs = text_outputs[index]
            else:
                embs = embedder(value)
            for emb in embs if isinstance(embs, tuple) else (embs,):
                emb = emb.to(dtype)
                if key in force_zero_embeddings:
                    emb = torch.zeros_like(emb)
                name = {3: "crossattn", 2: "vector"}[emb.ndim]
                out[name] = emb if name not in out else torch.cat([out[name], emb], dim=-1)
        return out

    def reference_uncond(self, batch: dict, negative_prompts=None,
                         negative_aesthetic_score: float = 2.5) -> tuple[dict, tuple[str, ...]]:
        """(batch_uc, force_zero_embeddings) as the reference scripts (scripts/demo/sampling.py) build
        the unconditional branch. Base (no aesthetic score, is_legacy False there): the same batch with
        every `txt` output zeroed; a negative prompt is not read. Refiner (is_legacy True): the
        negative prompts ("" by default) with `negative_aesthetic_score`, sizes kept."""
        if "aesthetic_score" not in self.cfg.input_keys:
            return dict(batch), (TXT,)
        n = len(batch[TXT])
        negatives = [""] * n if negative_prompts is None else (
            [negative_prompts] * n if isinstance(negative_prompts, str) else list(negative_prompts))
        if len(negatives) != n:
            raise ValueError(f"{len(negatives)} negative prompts for {n} prompts")
        return {**batch, TXT: negatives, "aesthetic_score": torch.full((n, 1), float(negative_aesthetic_score))}, ()

    def make_batch(self, prompts, original_size=None, crop_coords=(0, 0), target_size=None,
                   aesthetic_score: float = 6.0) -> dict:
        """The reference's batch dict from prompts: sizes as (height, width) in pixels (default the
        native size), crop as (top, left), the refiner's aesthetic score (reference default 6.0; its
        scripts use 2.5 for the negative prompt)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        n = len(prompts)
        native = (self.cfg.native_size, self.cfg.native_size)

        def pairs(value, name):
            t = torch.as_tensor(value, dtype=torch.long)
            if t.shape == (2,):
                t = t.expand(n, 2)
            if t.shape != (n, 2):
                raise ValueError(f"{name} must be (h, w) / (top, left) or one pair per prompt ({n}), "
                                 f"got shape {tuple(t.shape)}")
            return t.clone()

        values = {TXT: prompts,
                  "original_size_as_tuple": pairs(native if original_size is None else original_size, "original_size"),
                  "crop_coords_top_left": pairs(crop_coords, "crop_coords"),
                  "target_size_as_tuple": pairs(native if target_size is None else target_size, "target_size"),
                  "aesthetic_score": torch.full((n, 1), float(aesthetic_score))}
        return {k: values[k] for k in self.cfg.input_keys}
