"""Reading checkpoint files safely: .safetensors, and .ckpt/.pt pickles without running their code.

A `.ckpt` is a PyTorch (Lightning) pickle. We never unpickle arbitrary classes: the file is read with
`torch.load(weights_only=True)`, whose unpickler only builds tensors and plain containers. Lightning
training checkpoints also pickle a few harmless objects (callback state, NumPy scalars); those, and
only those, are admitted through an explicit allow-list of inert stand-in classes. Anything else -- a
pickle that names `os.system`, `builtins.eval`, `subprocess.Popen`, ... -- is refused before a single
object of it is built, with a message that names what it asked for.
"""

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit its config; the message says why."""


class _Inert:
    """Stand-in for a harmless pickled object we do not need: it keeps its state and does nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def _inert(name: str) -> tuple[type, str]:
    return type(name.rsplit(".", 1)[-1], (_Inert,), {}), name


def numpy_core(numpy=np):
    """numpy's core package under either major version: numpy 2 names it numpy._core (numpy.core is a
    deprecated alias there); numpy 1.26 has the real one at numpy.core and only a stub numpy._core
    (no `multiarray` until imported), so `getattr(np, "_core", None) or np.core` is not enough.
    Pickles name it the way the numpy that wrote them did, so both names are allowed below."""
    core = getattr(numpy, "_core", None)
    return core if hasattr(core, "multiarray") else numpy.core


# Objects Lightning-era LDM / SD checkpoints are known to hold besides the weights.
_HARMLESS = [
    _inert("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    _inert("lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
    _inert("argparse.Namespace"),
    _inert("omegaconf.dictconfig.DictConfig"),
    _inert("omegaconf.listconfig.ListConfig"),
    _inert("omegaconf.base.ContainerMetadata"),
    _inert("omegaconf.base.Metadata"),
    _inert("omegaconf.nodes.AnyNode"),
    _inert("typing.Any"),
    (np.dtype, "numpy.dtype"),
    (numpy_core().multiarray.scalar, "numpy.core.multiarray.scalar"),
    (numpy_core().multiarray.scalar, "numpy._core.multiarray.scalar"),
    (np.dtypes.Float64DType, "numpy.dtypes.Float64DType"),
    (np.dtypes.Float32DType, "numpy.dtypes.Float32DType"),
    (np.dtypes.Int64DType, "numpy.dtypes.Int64DType"),
]
_HARMLESS_NAMES = {name for _, name in _HARMLESS}


def _load_pickle(path: Path) -> dict:
    """torch.load with weights_only=True, admitting only the allow-listed extras."""
    try:
        asked = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) files cannot be scanned ahead; weights_only still guards them
        asked = set()
    refused = sorted(asked - _HARMLESS_NAMES)
    if refused:
        raise CheckpointError(
            f"{path.name}: refused to load: the pickle asks for {', '.join(refused)}, which could run code. "
            "Only tensors, plain containers and known Lightning extras are allowed. If you trust this file, "
            "convert it to .safetensors in an environment you control.")
    with torch.serialization.safe_globals(_HARMLESS):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # legacy non-zip pickles cannot be memory-mapped
                raise
            return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The flat state dict of a checkpoint file and its metadata (safetensors' `__metadata__`).

    .safetensors tensors are memory-mapped, .ckpt tensors come from a memory-mapped zip, so
    building the model with `assign=True` does not hold a second full copy of the weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes): the download or copy did not finish")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                state_dict = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path.name} is not a readable .safetensors file "
                                  f"(truncated or corrupt?): {err}") from err
        return state_dict, metadata
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        try:
            obj = _load_pickle(path)
        except CheckpointError:
            raise
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
            raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint "
                                  f"(truncated or corrupt?): {err}") from err
        except Exception as err:  # the weights_only unpickler refusing something unexpected
            raise CheckpointError(f"{path.name}: refused to load: {err}") from err
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path.name} holds no state dict of tensors")
        return obj, {}
    raise CheckpointError(f"{path.name}: unknown checkpoint type {suffix!r}; expected .safetensors or .ckpt")
