"""The Text to image tab's "Refiner" group (AUTOMATIC1111's): a second text-to-image model, e.g. the
SDXL refiner, takes over the sampling at a fraction of the steps (core/pipelines/refiner.py)."""
from dataclasses import dataclass

import gradio as gr

from core.pipelines.refiner import DEFAULT_SWITCH_AT
from ui.studio import Studio

NO_REFINER = "None"                     # A1111's value for "no refiner" (its API's refiner_checkpoint too)


@dataclass
class RefinerControls:
    refiner: gr.Dropdown
    refiner_switch_at: gr.Slider

    def inputs(self) -> dict:
        return dict(vars(self))


def refiner_choices(studio: Studio) -> list[tuple[str, str]]:
    """None, then every model the picker lists for text to image (capabilities decide): refiners
    (caps.refiner: the SDXL refiner) first; any model of the same latent space and schedule can
    continue the sampling, as in A1111."""
    entries = sorted(studio.models.for_tab("txt2img"), key=lambda e: (not e.caps.refiner, e.name))
    return [(NO_REFINER, NO_REFINER)] + [(e.label if e.label == e.name else f"{e.label} ({e.name})", e.name)
                                         for e in entries]


def refiner_controls(studio: Studio) -> RefinerControls:
    with gr.Accordion("Refiner", open=False, elem_classes=["ldm-refiner"]):
        with gr.Row():
            refiner = gr.Dropdown(refiner_choices(studio), value=NO_REFINER, label="Refiner model", scale=2)
            switch_at = gr.Slider(0.01, 1.0, value=DEFAULT_SWITCH_AT, step=0.01, label="Switch at (fraction of "
                                  "the steps the base model samples)", scale=2)
    return RefinerControls(refiner, switch_at)


def refiner_entry(studio: Studio, refiner: str | None):
    """The refiner's picker entry, or None for no refiner; ValueError naming the choices."""
    if not refiner or refiner == NO_REFINER:
        return None
    return studio.models.entry("txt2img", refiner)
