"""LDM Studio core: models, checkpoints, samplers, pipelines, training (DESIGN.md).

`load_model` and `save_model` are imported on first use, so `import core.world` (numpy only) does not
pay for importing torch.
"""

__all__ = ["load_model", "save_model"]          # (inference_dtype, default_device: below)


def inference_dtype(device) -> str:
    """The precision everything runs in unless told — the app, the CLI, the benches and `load_model`
    (a file's stored dtype is not its run dtype): "float16" on CUDA, "float32" on the CPU (where
    float16 runs many times slower: 23.1 s vs 1.43 s per 64x64 image)."""
    return "float16" if str(device).startswith("cuda") else "float32"


def default_device() -> str:
    """Where the app and the CLI run unless told: "cuda" when a GPU is there, else "cpu"."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def __getattr__(name):
    if name in __all__:
        from core import checkpoints
        return getattr(checkpoints, name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
