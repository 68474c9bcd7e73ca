"""The default models' architectures, read from the training configs they are trained with
(scripts/train_configs/), for benchmarks that run without the weights (random initialisation)."""
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "scripts" / "train_configs"


def default_size_config(name: str) -> dict:
    """The CompVis-style model config of scripts/train_configs/NAME.yaml, its first stage (a file path
    there) replaced by shapes-kl-f4.yaml's architecture, scale factor 1: for config_from_yaml."""
    model = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]
    first_stage = yaml.safe_load((CONFIGS / "shapes-kl-f4.yaml").read_text())["model"]
    first_stage["params"].pop("lossconfig", None)
    model["params"]["first_stage_config"] = first_stage
    model["params"]["scale_factor"] = 1.0
    return {"model": model}
