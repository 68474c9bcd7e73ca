"""LoRA (Hu et al. 2021) and LyCORIS LoHa / LoKr, merged into a model's weights in place.

    W' = W + weight * scale * delta,  scale = alpha / rank (kohya; no alpha: scale 1)
    LoRA / LoCon   delta = up @ down          (conv: up (out, r, 1, 1) x down (r, in, kh, kw))
    LoHa           delta = (w1_a @ w1_b) * (w2_a @ w2_b)           rank = w1_b rows
    LoKr           delta = kron(w1, w2), each given or as a @ b    rank = the b factor's rows (none: scale 1)

delta is computed in float32 whatever the model's dtype, and the sum rounded once to it. Layer names
(kohya's `lora_unet_*` / `lora_te*_`, PEFT's `unet.*` / `text_encoder.*` with lora_A = down and
lora_B = up) are looked up in one table built from the model's config (core/checkpoints/lora_keys.py).
Every touched weight is copied before its first change; `remove_lora(m)` copies them back, so the
model returns bit-exactly to what it was.

In prompts, AUTOMATIC1111's `<lora:name:weight>` tags (`extract_lora_tags`, `use_loras`) pick
`<folder>/name.safetensors`; the set applied last is remembered on the model, so the same set on the
next request costs nothing.
"""

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from core.checkpoints.files import read_checkpoint
from core.checkpoints.lora_keys import Target, lora_targets

# Weight-name suffixes of one LoRA layer in each format -> the role they play.
_SUFFIXES = {
    ".lora_down.weight": "down", ".lora_up.weight": "up",            # kohya / LoCon
    ".lora_A.weight": "down", ".lora_B.weight": "up",                # PEFT / diffusers
    ".alpha": "alpha",
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b",            # LyCORIS LoHa
    ".hada_w2_a": "hada_w2_a", ".hada_w2_b": "hada_w2_b",
    ".lokr_w1": "lokr_w1", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b",  # LyCORIS LoKr
    ".lokr_w2": "lokr_w2", ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b",
}
_KINDS = ({"down", "up"}, {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"})
# diffusers' older attention-processor layout (<= 0.20): `...attn1.processor.to_q_lora.down.weight`,
# text encoders `...q_proj.lora_linear_layer.down.weight`; read as `...attn1.to_q` / `...q_proj` down/up.
_OLD_DIFFUSERS = ((re.compile(r"\.processor\.(to_[qkv])_lora\.(down|up)\.weight$"), r".\1.lora_\2.weight"),
                  (re.compile(r"\.processor\.to_out_lora\.(down|up)\.weight$"), r".to_out.0.lora_\1.weight"),
                  (re.compile(r"\.lora_linear_layer\.(down|up)\.weight$"), r".lora_\1.weight"))


@dataclass
class _Layer:
    """One LoRA layer of a file: its tensors by role, and the weight it patches."""
    name: str
    parts: dict[str, Tensor] = field(default_factory=dict)
    target: Target | None = None


@dataclass
class LoraState:
    """What is merged into a model: the original of every touched weight, and the applied set."""
    originals: dict[str, Tensor] = field(default_factory=dict)   # "module.param" -> copy
    applied: tuple = ()                                            # use_loras' key of the merged set
    hashes: str | None = None                                      # its `Lora hashes` value


def _split(key: str) -> tuple[str, str] | None:
    """(layer name, role) of a LoRA file's key, or None for a key of no known format."""
    for pattern, replacement in _OLD_DIFFUSERS:
        key = pattern.sub(replacement, key)
    for suffix, role in _SUFFIXES.items():
        if key.endswith(suffix):
            return key[:-len(suffix)], role
    return None


def read_lora(path_or_state_dict) -> dict[str, Tensor]:
    """A LoRA file's tensors (safetensors, or a pickle read with weights_only) or the dict itself."""
    if isinstance(path_or_state_dict, dict):
        return path_or_state_dict
    return read_checkpoint(path_or_state_dict)[0]


def _delta(layer: _Layer, device: torch.device) -> tuple[Tensor, float]:
    """The layer's float32 update delta on `device` (before weight * scale) and its scale alpha / rank."""
    p = {k: v.to(device, torch.float32) for k, v in layer.parts.items()}
    if "down" in p:
        down, up = p["down"], p["up"]                                  # (r, in[, kh, kw]), (out, r[, 1, 1])
        if up.ndim == 4 and up.shape[2:] != (1, 1):
            raise ValueError(f"LoRA layer {layer.name}: an up weight with a {tuple(up.shape[2:])} kernel "
                             "is not supported (LoCon's up is 1x1)")
        delta = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])  # (out, in[, kh, kw])
        rank = down.shape[0]
    elif "hada_w1_a" in p:
        delta = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])   # (out, in*kh*kw)
        rank = p["hada_w1_b"].shape[0]
    else:
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"].flatten(1) @ p["lokr_w2_b"].flatten(1)
        delta = torch.kron(w1, w2.flatten(1) if w2.ndim > 2 else w2)
        rank = (p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p else p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p
                else None)
        if rank is None:
            return delta, 1.0                                         # LyCORIS: full factors, no alpha scale
    alpha = layer.parts.get("alpha")
    return delta, (float(alpha) / rank if alpha is not None else 1.0)


def _parameter(m, target: Target) -> Tensor:
    return getattr(m.get_submodule(target.module), target.param)


def _fit(delta: Tensor, shape: torch.Size) -> Tensor | None:
    """delta reshaped to the weight's shape where only 1x1 kernels / flattening differ, else None."""
    if delta.shape == shape:
        return delta
    if delta.numel() == shape.numel() and delta.shape[0] == shape[0] and (
            len(shape) == 2 or len(delta.shape) == 2 or shape[2:] == (1, 1) or delta.shape[2:] == (1, 1)):
        return delta.reshape(shape)
    return None


def _layers(m, sd: dict[str, Tensor], source: str) -> list[_Layer]:
    """The file's layers matched to m's weights; unknown names warned about; a shape that does not
    fit the model (a LoRA for another base) refused before anything is changed."""
    table = lora_targets(m)
    layers: dict[str, _Layer] = {}
    unknown = []
    for key, value in sd.items():
        split = _split(key)
        if split is None:
            unknown.append(key)
            continue
        name, role = split
        layers.setdefault(name, _Layer(name)).parts[role] = value
    matched = []
    for name, layer in layers.items():
        roles = set(layer.parts) - {"alpha"}
        complete = roles in _KINDS or ({"lokr_w1", "lokr_w1_a"} & roles and {"lokr_w2", "lokr_w2_a"} & roles)
        if name not in table or not complete:
            unknown.extend(f"{name}.{role}" for role in sorted(layer.parts))
            continue
        layer.target = table[name]
        matched.append(layer)
    if unknown:
        warnings.warn(f"{source}: {len(unknown)} LoRA keys match no layer of this model and were not applied: "
                      f"{sorted(unknown)[:20]}{' ...' if len(unknown) > 20 else ''}", stacklevel=3)
    for layer in matched:                                    # refuse before changing anything
        w = _parameter(m, layer.target)
        shape = w[slice(*layer.target.rows)].shape if layer.target.rows else w.shape
        delta, _ = _delta(layer, w.device)
        if _fit(delta, shape) is None:
            raise ValueError(f"{source} does not fit this model: layer {layer.name} ({layer.target.name}) has "
                             f"shape {tuple(shape)}, the LoRA's update is {tuple(delta.shape)}. It was trained "
                             "for another base model; pick a LoRA made for this one.")
    return matched


@torch.no_grad()
def apply_lora(m, path_or_state_dict, weight: float = 1.0, *, unet_weight: float | None = None) -> int:
    """Merge a LoRA into m in place: W += weight * alpha / rank * delta (float32, rounded once).

    weight multiplies the text-encoder layers and, unless `unet_weight` is given, the UNet's too
    (A1111's `<lora:name:te:unet>`). Returns the number of weights patched. Undo with remove_lora.
    """
    source = str(path_or_state_dict) if not isinstance(path_or_state_dict, dict) else "the LoRA"
    layers = _layers(m, read_lora(path_or_state_dict), source)
    state = m.__dict__.setdefault("lora_state", LoraState())
    for layer in layers:
        target = layer.target
        multiplier = (unet_weight if unet_weight is not None and target.module.startswith("model.")
                      else weight)
        w = _parameter(m, target)
        key = f"{target.module}.{target.param}"
        if key not in state.originals:
            state.originals[key] = w.detach().clone()
        part = w[slice(*target.rows)] if target.rows else w
        delta, scale = _delta(layer, w.device)
        delta = _fit(delta, part.shape)
        part.copy_((part.float() + (multiplier * scale) * delta).to(w.dtype))
    return len(layers)


@torch.no_grad()
def remove_lora(m) -> None:
    """Restore every weight a LoRA touched from its saved copy (bit-exact; nothing is subtracted)."""
    state = m.__dict__.get("lora_state")
    if state is None:
        return
    for key, original in state.originals.items():
        module, param = key.rsplit(".", 1)
        getattr(m.get_submodule(module), param).copy_(original)
    state.originals.clear()
    state.applied, state.hashes = (), None


# ---------------------------------------------------------------------------------------------
# <lora:name:weight> in prompts (AUTOMATIC1111's extra-network syntax)
# ---------------------------------------------------------------------------------------------

_TAG = re.compile(r"<(\w+):([^>]+)>")          # A1111's re_extra_net
LORA_TAGS = ("lora", "lyco")
# Under the weights folder (A1111: models/Lora and embeddings/); not models, so no model picker lists them.
NETWORK_FOLDERS = {"lora_dir": "lora", "embeddings_dir": "embeddings"}


def network_folders(weights_dir) -> dict[str, Path]:
    """The pipelines' lora_dir / embeddings_dir for a weights folder: weights/lora, weights/embeddings."""
    return {option: Path(weights_dir) / name for option, name in NETWORK_FOLDERS.items()}


@dataclass(frozen=True)
class LoraTag:
    name: str
    weight: float = 1.0                       # text encoder (and UNet unless unet_weight)
    unet_weight: float | None = None


def extract_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """(the prompt without its `<lora:name[:weight[:unet weight]]>` tags, the tags in order).

    Other extra-network tags (`<hypernet:...>`) are removed too, with a warning; a malformed weight
    keeps the tag's default 1.0, with a warning."""
    tags = []

    def take(match):
        kind, args = match[1], match[2].split(":")
        if kind not in LORA_TAGS:
            warnings.warn(f"prompt tag <{kind}:...> is not supported (only <lora:name:weight>); it was removed",
                          stacklevel=4)
            return ""
        try:
            numbers = [float(a) for a in args[1:3]]
        except ValueError:
            warnings.warn(f"<{match[2]}>: the weight is not a number; using 1.0", stacklevel=4)
            numbers = []
        tags.append(LoraTag(args[0].strip(), *numbers))
        return ""

    return _TAG.sub(take, prompt), tags


def addnet_hash(path) -> str:
    """A1111's hash of a .safetensors LoRA (kohya's "addnet" hash): SHA-256 of the file after its
    header; other files: SHA-256 of the whole file. Hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if str(path).endswith(".safetensors"):
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _find(folder: Path, name: str) -> Path | None:
    """<folder>/name.safetensors (or .pt / .ckpt), also in subfolders as A1111 lists them; a name
    with a path in it (`../x`) is never looked up."""
    if not name or any(c in name for c in "/\\*?[") or name.startswith("."):
        return None
    for ext in (".safetensors", ".pt", ".ckpt"):
        found = sorted(p for p in folder.rglob(name + ext) if p.is_file())
        if found:
            return found[0]
    return None


def use_loras(m, tags: list[LoraTag], folder) -> str | None:
    """Make exactly `tags` the LoRAs merged into m (cached: the same set again does nothing; another
    set removes the old one first). Names missing from `folder` are warned about and skipped.
    Returns A1111's `Lora hashes` value ("name: shorthash, ...") or None when none applies."""
    found = []
    for tag in tags:
        path = _find(Path(folder), tag.name) if folder is not None else None
        if path is None:
            warnings.warn(f"LoRA {tag.name!r} not found in {folder} (looked for {tag.name}.safetensors); "
                          "the tag was ignored", stacklevel=3)
            continue
        stat = path.stat()
        found.append((tag, path, (str(path.resolve()), stat.st_size, stat.st_mtime_ns, tag.weight, tag.unet_weight)))
    key = tuple(k for _, _, k in found)
    state = m.__dict__.get("lora_state")
    if state is None or state.applied != key:
        remove_lora(m)
        try:
            for tag, path, _ in found:
                apply_lora(m, path, tag.weight, unet_weight=tag.unet_weight)
        except Exception:
            remove_lora(m)                       # none of the set, rather than part of it
            raise
        state = m.__dict__.setdefault("lora_state", LoraState())
        state.applied = key
        state.hashes = ", ".join(f"{tag.name}: {_short_hash(path, k)}" for tag, path, k in found) or None
    return state.hashes


def prompt_loras(m, prompt: str, folder) -> str:
    """The prompt without its LoRA tags, the tagged LoRAs made the ones merged into m (use_loras).
    folder None: tags are removed with a warning and m's weights are left as they are."""
    text, tags = extract_lora_tags(prompt)
    if folder is None:
        if tags:
            warnings.warn(f"no LoRA folder was given, so {', '.join(f'<lora:{t.name}>' for t in tags)} "
                          "were removed from the prompt and not applied", stacklevel=3)
        return text
    use_loras(m, tags, folder)
    return text


def lora_hashes(m) -> str | None:
    """`Lora hashes` of the set use_loras merged into m ("name: shorthash, ..."), None if none."""
    state = m.__dict__.get("lora_state")
    return state.hashes if state is not None else None


_HASHES: dict[tuple, str] = {}


def _short_hash(path: Path, key: tuple) -> str:
    """A1111's shorthash: the first 12 hex digits, computed once per (file, size, mtime)."""
    if key[:3] not in _HASHES:
        _HASHES[key[:3]] = addnet_hash(path)[:12]
    return _HASHES[key[:3]]
