"""Training checkpoints: a plain dict written atomically, and the random number generator states.

A checkpoint is `{model, ema, opt, step, config, rng, ...}` holding only tensors and plain Python
containers, so it loads with `torch.load(weights_only=True)` (no pickled classes, nothing that can
run code). It is written to a temporary file in the same folder, flushed to disk, then renamed over
`last.pt` with os.replace, which is atomic: a process killed at any moment leaves either the old
checkpoint or the new one, never half of one.
"""

import os
import random
from pathlib import Path

import numpy as np
import torch

from core.checkpoints import read_checkpoint


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"{path} is not a readable training checkpoint ({err}); it was not written by "
                           "core.train, or the disk is damaged. Delete it to start the run again.") from err


def capture_rng() -> dict:
    """The global generators' states (torch CPU and CUDA, NumPy, Python) as tensors and plain values."""
    np_state = np.random.get_state()                   # ('MT19937', uint32[624], pos, has_gauss, gauss)
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def ema_state_dict(ckpt: dict) -> dict:
    """A checkpoint's model weights with the EMA averages in place of the trained ones (what is exported)."""
    sd = dict(ckpt["model"])
    for name, value in ckpt["ema"]["shadow"].items():
        sd[name] = value.to(sd[name].dtype)
    return sd


def trained_state_dict(path) -> dict:
    """The weights of a trained model: an exported .safetensors, or a run folder (its EMA weights)."""
    path = Path(path)
    if path.is_dir():
        return ema_state_dict(load_checkpoint(path / "checkpoints" / "last.pt"))
    return read_checkpoint(path)[0]


def first_stage_state_dict(path) -> dict:
    """An autoencoder's weights (float32) from its file or run folder, or the first stage of a whole LDM's."""
    sd = trained_state_dict(path)
    if any(k.startswith("first_stage_model.") for k in sd):                 # a whole LDM
        sd = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    return {k: v.float() for k, v in sd.items()}
