"""The Train tab's LoRA choice: a base text-to-image model, rank, alpha and layers; the run is a
background `python -m core.train lora` like the others, and "Use this model" writes its kohya-format
file to weights/lora/NAME.safetensors, where `<lora:NAME:1>` in a prompt picks it."""
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from core.lora import NETWORK_FOLDERS
from core.train.lora import make_lora_config
from core.train.lora_network import LAYER_GROUPS
from ui.studio import Studio

BASE_LABEL = "Base model (LoRA)"
LAYER_LABELS = {"attn": "Attention (to_q, to_k, to_v, to_out)", "ff": "Feed-forward",
                "proj": "Transformer proj_in / proj_out", "conv": "Resblock convolutions (LoCon)",
                "text": "Text encoder (CLIP / OpenCLIP)"}
LAYER_CHOICES = [(LAYER_LABELS.get(group, group), group) for group in LAYER_GROUPS]     # core's list of groups


def lora_path(studio: Studio, name: str) -> Path:
    """Where "Use this model" puts LoRA run `name`: weights/lora/NAME.safetensors."""
    return Path(studio.settings.weights_dir) / NETWORK_FOLDERS["lora_dir"] / f"{name}.safetensors"


def lora_config(studio: Studio, base: str | None, source: str, rank, alpha, layers, steps: int, batch_size: int,
                learning_rate) -> dict:
    """The run's config for the LoRA choice; `source` from the tab's dataset fields."""
    if not base:
        raise ValueError(f"Choose the text-to-image model the LoRA is for in the field '{BASE_LABEL}' (API base).")
    entry = studio.models.entry("txt2img", base)               # ValueError: not a text-to-image model
    try:
        rank = int(rank)
    except (TypeError, ValueError):
        raise ValueError(f"The LoRA rank must be a whole number of at least 1; got {rank!r}.") from None
    if rank < 1:
        raise ValueError(f"The LoRA rank must be at least 1; got {rank}.")
    data_name = Path(source).name if source != "shapes" else "shapes"
    return make_lora_config(str(entry.path.resolve()), source, rank=rank, alpha=float(alpha) if alpha else None,
                            layers=list(layers or ["attn"]), steps=steps, batch_size=batch_size,
                            lr=float(learning_rate) if learning_rate else None, base_config=entry.config,
                            name=f"{data_name}-{Path(entry.name).stem}-lora")


def base_update(studio: Studio, current: str | None) -> dict:
    """The base picker's choices and value: `current` while offered, else the first text-to-image model."""
    choices = studio.models.choices("txt2img")
    values = [v for _, v in choices]
    return {"choices": choices, "value": current if current in values else (values[0] if values else None)}


def build_fields(studio: Studio) -> SimpleNamespace:
    """The LoRA fields, shown while the LoRA choice is picked."""
    with gr.Group(visible=False) as group:
        base = gr.Dropdown(**base_update(studio, None), label=BASE_LABEL,
                           info="the text-to-image model the LoRA is trained for (it stays frozen)")
        with gr.Row():
            rank = gr.Number(4, label="Rank", precision=0, minimum=1)
            alpha = gr.Number(4, label="Alpha (scale = alpha / rank; 0: = rank)", minimum=0)
        layers = gr.CheckboxGroup(LAYER_CHOICES, value=["attn"], label="Layers")
        gr.Markdown("Trains at the base model's own size on your images (**Your own images**); the exported "
                    "file works in other UIs too (kohya format).")
    return SimpleNamespace(group=group, base=base, rank=rank, alpha=alpha, layers=layers)
