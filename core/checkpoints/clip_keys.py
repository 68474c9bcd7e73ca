"""SD1's HF-transformers CLIP text keys <-> our open_clip text tower (the one foreign key layout).

SD 1.x checkpoints store `cond_stage_model.transformer.text_model.*` (HF `CLIPTextModel`, FACTS.md
section 4); transformers >= 5 drops the `text_model.` level. Our `FrozenCLIPEmbedder.transformer` is
open_clip's TextTransformer, whose attention is one `nn.MultiheadAttention`: its `in_proj_weight`
[3W, W] is HF's q_proj, k_proj and v_proj weights stacked in that order (same for the biases).

Keys here are relative to the embedder (they start at `transformer.`); strip `cond_stage_model.`
first. Everything else maps 1:1:
    embeddings.token_embedding.weight      <-> token_embedding.weight
    embeddings.position_embedding.weight   <-> positional_embedding
    embeddings.position_ids                 -> dropped (always arange; some merged files corrupt it)
    encoder.layers.N.self_attn.out_proj    <-> transformer.resblocks.N.attn.out_proj
    encoder.layers.N.layer_norm1 / 2       <-> transformer.resblocks.N.ln_1 / ln_2
    encoder.layers.N.mlp.fc1 / fc2         <-> transformer.resblocks.N.mlp.c_fc / c_proj
    final_layer_norm                       <-> ln_final
Unknown keys raise (FACTS.md trap 15: a silent mismatch would run random text-encoder weights).
"""

import re
from collections.abc import Iterable

import torch
from torch import Tensor

_HF = re.compile(r"^transformer\.(?:text_model\.)?(?P<rest>embeddings\..+|encoder\.layers\..+|final_layer_norm\..+)$")
_HF_LAYER = re.compile(r"^encoder\.layers\.(?P<n>\d+)\.(?P<rest>.+)$")
_HF_QKV = re.compile(r"^self_attn\.(?P<which>[qkv])_proj\.(?P<kind>weight|bias)$")
_OURS_LAYER = re.compile(r"^transformer\.transformer\.resblocks\.(?P<n>\d+)\.(?P<rest>.+)$")

# HF name (inside a layer or at the top of text_model) -> ours (relative to `transformer.`), 1:1.
_LAYER_RENAMES = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_TOP_RENAMES = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_POSITION_IDS = "embeddings.position_ids"
_PARAMS = ("weight", "bias")


def is_hf_clip_text_keys(keys: Iterable[str]) -> bool:
    """True when some key is an HF CLIPTextModel key, with or without `text_model.`, at any prefix
    (`transformer.text_model.…` or `cond_stage_model.transformer.encoder.layers.…`)."""
    for key in keys:
        i = key.find("transformer.")
        while i != -1:
            if (i == 0 or key[i - 1] == ".") and _HF.match(key[i:]):
                return True
            i = key.find("transformer.", i + 1)
    return False


def _rename(table: dict[str, str], name: str) -> str | None:
    for old, new in table.items():
        if name.startswith(old):
            return new + name[len(old):]
    return None


def hf_clip_text_to_ours(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF CLIP text keys (`transformer.[text_model.]…`) -> `FrozenCLIPEmbedder` state_dict keys."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}     # (layer, weight|bias) -> {q, k, v}
    unknown: list[str] = []
    for key, value in sd.items():
        m = _HF.match(key)
        if m is None:
            unknown.append(key)
            continue
        rest = m["rest"]
        if rest == _POSITION_IDS:
            continue                                        # arange(77); ours builds no such buffer
        if rest in _TOP_RENAMES:
            new = "transformer." + _TOP_RENAMES[rest]
        elif (lm := _HF_LAYER.match(rest)) is not None:
            n, inner = int(lm["n"]), lm["rest"]
            if (qm := _HF_QKV.match(inner)) is not None:
                qkv.setdefault((n, qm["kind"]), {})[qm["which"]] = value
                continue
            renamed = _rename(_LAYER_RENAMES, inner)
            if renamed is None or renamed.rsplit(".", 1)[-1] not in _PARAMS:
                unknown.append(key)
                continue
            new = f"transformer.transformer.resblocks.{n}.{renamed}"
        else:
            unknown.append(key)
            continue
        if new in out:
            raise ValueError(f"two HF keys map to {new!r} (the dict mixes the `text_model.` and "
                             "transformers>=5 layouts?)")
        out[new] = value
    if unknown:
        raise ValueError(f"not HF CLIP text-encoder keys (relative to the embedder, i.e. starting with "
                         f"'transformer.text_model.' or 'transformer.'): {sorted(unknown)}")
    for (n, kind), parts in sorted(qkv.items()):
        missing = [f"self_attn.{w}_proj.{kind}" for w in "qkv" if w not in parts]
        if missing:
            raise ValueError(f"encoder layer {n} lacks {missing}: cannot build attn.in_proj_{kind}")
        # nn.MultiheadAttention's in_proj is [q; k; v] stacked on dim 0: (3W, W) / (3W,)
        out[f"transformer.transformer.resblocks.{n}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def ours_to_hf_clip_text(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Exact inverse of `hf_clip_text_to_ours`, in the original `transformer.text_model.` layout, with
    `embeddings.position_ids` (int64 [1, max_pos]) as SD1 files carry it."""
    top = {v: k for k, v in _TOP_RENAMES.items()}
    layer = {v: k for k, v in _LAYER_RENAMES.items()}
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if (m := _OURS_LAYER.match(key)) is not None:
            n, inner = int(m["n"]), m["rest"]
            prefix = f"transformer.text_model.encoder.layers.{n}."
            if inner in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = inner.rsplit("_", 1)[-1]
                if value.shape[0] % 3:
                    raise ValueError(f"{key} has {value.shape[0]} rows, not a multiple of 3 (q; k; v)")
                for which, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{which}_proj.{kind}"] = part.clone()
                continue
            renamed = _rename(layer, inner)
            if renamed is None or inner.rsplit(".", 1)[-1] not in _PARAMS:
                unknown.append(key)
                continue
            out[prefix + renamed] = value
        elif key.startswith("transformer.") and key[len("transformer."):] in top:
            out["transformer.text_model." + top[key[len("transformer."):]]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"not FrozenCLIPEmbedder (open_clip text tower) keys: {sorted(unknown)}")
    pos_key = "transformer.text_model.embeddings.position_embedding.weight"
    if pos_key not in out:
        raise ValueError("transformer.positional_embedding is missing: cannot write position_ids")
    max_pos = out[pos_key].shape[0]
    out["transformer.text_model.embeddings.position_ids"] = torch.arange(
        max_pos, dtype=torch.int64, device=out[pos_key].device)[None]       # (1, max_pos)
    return out
