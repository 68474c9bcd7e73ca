"""Checkpoint files: safe reading, the CompVis YAML translator, foreign key layouts, load/save."""

from core.checkpoints.compvis_yaml import config_from_yaml
from core.checkpoints.files import CheckpointError, read_checkpoint
from core.checkpoints.loader import load_model, model_hash, save_model

__all__ = ["CheckpointError", "config_from_yaml", "load_model", "model_hash", "read_checkpoint", "save_model"]
