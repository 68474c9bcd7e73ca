"""LDM Studio core: models, checkpoints, samplers, pipelines, training (DESIGN.md).

`load_model` and `save_model` are imported on first use, so `import core.world` (numpy only) does not
pay for importing torch.
"""

__all__ = ["load_model", "save_model"]


def inference_dtype(device: str) -> str:
    """The precision the app, the CLI and the benches run in unless told: "float16" on CUDA,
    "float32" on the CPU (where float16 runs many times slower: 23.1 s vs 1.43 s per 64x64 image)."""
    return "float16" if str(device).startswith("cuda") else "float32"


def __getattr__(name):
    if name in __all__:
        from core import checkpoints
        return getattr(checkpoints, name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
