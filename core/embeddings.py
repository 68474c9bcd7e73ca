"""Textual-inversion embeddings (Gal et al. 2022) in AUTOMATIC1111's format, used by name in prompts.

A file `<folder>/<name>.safetensors|.pt|.bin` holds n learned token vectors (n, D):
    A1111 .pt          {"string_to_param": {"*": (n, D)}, "name": ..., "step": ...}
    A1111 .safetensors {"emb_params": (n, D)}
    SDXL pair          {"clip_l": (n, 768), "clip_g": (n, 1280)}   clip_l -> CLIP ViT-L, clip_g -> OpenCLIP bigG
    diffusers .bin     {"<token>": (D,) or (n, D)}
`.pt` / `.bin` files are read with torch.load(weights_only=True) only (core.checkpoints.read_checkpoint).

Writing the name in a prompt uses it, as in A1111: the name's BPE tokens, wherever that token
sequence occurs in a prompt piece, are replaced by the file's n vectors (`replace_in`); the
encoder looks those up as ids vocab_size + k (core.models.clip_text.run_text_tower's extra_vectors).
Used embeddings are recorded as `TI hashes: "name: shorthash"` (SHA-256 of the file, 12 hex digits).
"""

import hashlib
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from core.checkpoints.files import CheckpointError, read_checkpoint
from core.models.clip_text import clip_bpe

EXTENSIONS = (".safetensors", ".pt", ".bin")


@dataclass(frozen=True)
class Embedding:
    name: str
    vectors: dict[str, Tensor]            # "" (one encoder) or "clip_l" / "clip_g" -> (n, D)
    ids: tuple[int, ...]                  # the name's BPE tokens
    path: Path

    @property
    def shorthash(self) -> str:
        return _sha256(self.path)[:12]

    def for_width(self, width: int, part: str | None = None) -> Tensor | None:
        """The vectors for an encoder of this width, or None when the file has none. part: "clip_l" or
        "clip_g", the SDXL tower asking: that entry of an SDXL pair when the file has it."""
        if part is not None and part in self.vectors:
            v = self.vectors[part]
            return v if v.shape[-1] == width else None
        for v in self.vectors.values():
            if v.shape[-1] == width:
                return v
        return None


def _vectors(sd: dict, path: Path) -> dict[str, Tensor]:
    if "string_to_param" in sd:
        params = sd["string_to_param"]
        return {"": next(iter(params.values())).detach()}
    if "emb_params" in sd:
        return {"": sd["emb_params"]}
    if "clip_l" in sd or "clip_g" in sd:
        return {k: sd[k] for k in ("clip_l", "clip_g") if k in sd}
    tensors = [v for v in sd.values() if isinstance(v, Tensor)]
    if len(tensors) == 1:                                          # diffusers learned_embeds.bin
        return {"": tensors[0]}
    raise ValueError(f"{path.name} is not a textual-inversion embedding (no string_to_param, emb_params, "
                     f"clip_l/clip_g or single token vector; keys: {sorted(sd)[:10]})")


def read_embedding(path) -> Embedding:
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        sd = read_checkpoint(path)[0]
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    vectors = {k: (v[None] if v.ndim == 1 else v).float() for k, v in _vectors(sd, path).items()}
    return Embedding(path.stem, vectors, tuple(clip_bpe().encode(path.stem)), path)


_FOLDERS: dict[str, tuple[tuple, dict[str, Embedding]]] = {}


def load_embeddings(folder) -> dict[str, Embedding]:
    """The embeddings of a folder by name, read again only when its files change."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS) if folder.is_dir() else []
    key = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    cached = _FOLDERS.get(str(folder.resolve()))
    if cached is None or cached[0] != key:
        found = {}
        for p in files:
            try:
                found[p.stem] = read_embedding(p)
            except (CheckpointError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
                # one bad file must not hide the others
                warnings.warn(f"embedding {p} was skipped: {err}", stacklevel=2)
        cached = _FOLDERS[str(folder.resolve())] = (key, found)
    return cached[1]


def replace_in(ids: list[int], embeddings: dict[str, Embedding], width: int, vocab_size: int,
               extra: list[Tensor], part: str | None = None) -> tuple[list[int], list[str]]:
    """ids with every embedding's name tokens replaced by its n vectors, as ids vocab_size + k;
    their vectors are appended to `extra` (k counts over the whole list). part: the SDXL tower
    ("clip_l" / "clip_g"), see Embedding.for_width. Returns (ids, names used)."""
    by_first: dict[int, list[Embedding]] = {}
    for e in sorted(embeddings.values(), key=lambda e: -len(e.ids)):            # longest name first
        if e.ids:
            by_first.setdefault(e.ids[0], []).append(e)
    out, used, i = [], [], 0
    while i < len(ids):
        match = next((e for e in by_first.get(ids[i], ()) if tuple(ids[i:i + len(e.ids)]) == e.ids), None)
        vectors = match.for_width(width, part) if match is not None else None
        if vectors is None:
            if match is not None:
                warnings.warn(f"embedding {match.name!r} has no vectors of width {width} (this text encoder's); "
                              "its name is read as text", stacklevel=4)
            out.append(ids[i])
            i += 1
            continue
        start = vocab_size + sum(v.shape[0] for v in extra)
        extra.append(vectors)
        out.extend(range(start, start + vectors.shape[0]))
        used.append(match.name)
        i += len(match.ids)
    return out, used


def used_embeddings(texts: list[str], embeddings: dict[str, Embedding]) -> list[str]:
    """Names of the embeddings the texts use, in order of first use."""
    bpe, used = clip_bpe(), []
    for text in texts:
        ids = bpe.encode(text or "")
        for e in embeddings.values():
            n = len(e.ids)
            if n and e.name not in used and any(tuple(ids[i:i + n]) == e.ids for i in range(len(ids) - n + 1)):
                used.append(e.name)
    return used


def ti_hashes(folder, texts: list[str]) -> str | None:
    """A1111's `TI hashes` value for the embeddings the texts use ("name: shorthash, ..."), or None."""
    if folder is None:
        return None
    embeddings = load_embeddings(folder)
    names = used_embeddings(texts, embeddings)
    return ", ".join(f"{n}: {embeddings[n].shorthash}" for n in names) or None


_HASHES: dict[tuple, str] = {}


def _sha256(path: Path) -> str:
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]
