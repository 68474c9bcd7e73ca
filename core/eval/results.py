"""What every evaluation's result carries (the model file and its hash), and its JSON form."""

import json
import math
from pathlib import Path

from core.checkpoints import model_hash


def model_info(m) -> dict:
    """The evaluated file: its path, the name in its metadata and (for a file on disk) its hash."""
    path = getattr(m, "checkpoint_path", None)
    info = {"model": path, "model_name": getattr(m, "metadata", {}).get("ldm_studio_name")}
    if path and Path(path).is_file():
        info["model_hash"] = model_hash(path)
    return info


def mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else 0.0


def _finite(obj):
    """JSON has no infinity: an infinite PSNR (identical images) is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(result: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(result), indent=1, allow_nan=False) + "\n")
