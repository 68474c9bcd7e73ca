"""LDM Studio core: models, checkpoints, samplers, pipelines, training (DESIGN.md)."""

from core.checkpoints import load_model, save_model

__all__ = ["load_model", "save_model"]
