"""LDM Studio core: models, checkpoints, samplers, pipelines, training (DESIGN.md).

`load_model` and `save_model` are imported on first use, so `import core.world` (numpy only) does not
pay for importing torch.
"""

__all__ = ["load_model", "save_model"]


def __getattr__(name):
    if name in __all__:
        from core import checkpoints
        return getattr(checkpoints, name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
