"""Outpainting in the Inpaint tab: grow the editor's picture left/right/top/bottom and paint the new
area (core.pipelines.outpaint); the `/outpaint` API endpoint. "Use the result" puts the chosen
result back into the editor, so pressing Outpaint again grows the picture further.
"""
from functools import partial
from types import SimpleNamespace

import gradio as gr

from core import pipelines
from core.lora import network_folders
from core.pipelines.outpaint import OUTPAINT_FILLS, check_sides
from core.samplers import check_strength
from ui.controls import check_batch, optional_int, sampling_options
from ui.errors import user_errors
from ui.follow import pipeline_progress, run_job
from ui.images import open_image, run_and_save
from ui.send import gallery_image
from ui.studio import Studio

TAB = "inpaint"
FILLS = [(label, key) for key, label in OUTPAINT_FILLS.items()]


def pixels(value, name: str) -> int:
    """A pixel box -> int (empty: 0); the pipeline checks the grid and the sign."""
    if value is None or value == "":
        return 0
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number of pixels; got {value}.")
    return int(number)


@user_errors
def outpaint(studio: Studio, prompt: str = "", image: dict | None = None, negative_prompt: str = "",
             model: str | None = None, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
             fill: str = "edge", overlap: int | None = None, soft_inpainting: bool = False,
             inpaint_area: str = "whole", padding: int = 32, strength: float = 1.0, sampler: str | None = None,
             karras: bool = False, steps: int | None = None, guidance_scale: float | None = None, seed: int = -1,
             batch_count: int = 1, width: int | None = None, height: int | None = None, batch_size: int = 1,
             scheduler: str | None = None, clip_skip: int = 1, progress=gr.Progress()):
    """Grow the picture of `image` (the editor value {"background": image, ...}; its strokes are not
    used) by left/right/top/bottom pixels, multiples of the model's grid, and paint the new area
    following the prompt. fill: edge, fill, latent noise, latent nothing. overlap: the blended band
    inside the original, px (0 or empty: 4 latent cells). width/height: the processing size of "only
    masked" (the whole canvas runs at its own size). scheduler, clip_skip: as /txt2img. Returns the
    larger images and their parameters."""
    entry = studio.models.entry(TAB, model)
    if not image or image.get("background") is None:
        raise ValueError("Upload an image to outpaint first.")
    init = open_image(image["background"], studio.settings.max_side)
    sides = check_sides(entry.caps, init.size, max_side=studio.settings.max_side,
                        **{name: pixels(value, name.capitalize()) for name, value in
                           (("left", left), ("right", right), ("top", top), ("bottom", bottom))})
    options = sampling_options(sampler, karras, steps, guidance_scale, seed, scheduler, clip_skip)
    (n, batch_size), strength = check_batch(batch_count, batch_size), check_strength(float(strength))
    band = optional_int(overlap, "Overlap band")                     # 0 / empty: 4 latent cells
    size = dict(width=optional_int(width, "Width"), height=optional_int(height, "Height")) \
        if inpaint_area == "only_masked" else {}

    def work(job):
        m = studio.models.load(entry)
        return run_and_save(lambda: pipelines.outpaint(m, init, prompt or "", negative_prompt or "", **sides,
                                                       fill=fill, overlap=band, max_side=studio.settings.max_side,
                                                       soft_inpainting=bool(soft_inpainting),
                                                       inpaint_area=inpaint_area, padding=int(padding),
                                                       strength=strength, n=n, batch_size=batch_size, **size,
                                                       **options, callback=pipeline_progress(job),
                                                       should_stop=job.should_stop,
                                                       **network_folders(studio.settings.weights_dir)),
                            studio.settings.outputs_dir, job.folder)

    yield from run_job(studio.jobs, TAB, work, progress)


@user_errors
def use_result(images, index) -> dict:
    """The chosen result as the editor's picture (no strokes), for the next outpaint or inpaint."""
    path = gallery_image(images, index) if images else None
    if not path:
        raise ValueError("There is no result to use yet: outpaint (or inpaint) first.")
    return {"background": path, "layers": [], "composite": path}


def build_controls() -> SimpleNamespace:
    """The Outpaint accordion: four pixel boxes, the fill, the overlap band and the buttons."""
    with gr.Accordion("Outpaint: grow the picture", open=False, elem_classes=["ldm-outpaint"]):
        with gr.Row():
            boxes = {side: gr.Number(0, label=f"{side.capitalize()}, px", precision=0, step=16,
                                     elem_classes=[f"ldm-outpaint-{side}"])
                     for side in ("left", "right", "top", "bottom")}
        with gr.Row():
            fill = gr.Radio(FILLS, value="edge", label="New area starts from", scale=3)
            overlap = gr.Number(0, label="Overlap band, px (0: 4 latent cells)", precision=0, scale=2)
        gr.Markdown("Sides are multiples of the model's grid (VAE factor x UNet down-sampling: 64 px for "
                    "Stable Diffusion). The band inside the original is repainted and blended; the rest of "
                    "the picture is kept exactly.")
        with gr.Row():
            button = gr.Button("Outpaint", variant="primary", elem_classes=["ldm-outpaint-button"])
            again = gr.Button("Use the result as the image", elem_classes=["ldm-outpaint-use"])
    return SimpleNamespace(fill=fill, overlap=overlap, button=button, again=again, **boxes)


def wire(studio: Studio, controls: SimpleNamespace, first: dict, rest: dict, editor, results, job) -> None:
    """Outpaint -> the tab's results (api_name "outpaint"; its parameters: the `first` fields of the
    tab, the sides, fill and overlap, then the `rest`); "Use the result" -> the editor."""
    sides = {side: getattr(controls, side) for side in ("left", "right", "top", "bottom")}
    gr.on([controls.button.click], partial(outpaint, studio),
          inputs_kwargs={**first, **sides, "fill": controls.fill, "overlap": controls.overlap, **rest},
          outputs=[results.gallery, results.info, job], api_name="outpaint",
          concurrency_id="device", concurrency_limit=1)
    controls.again.click(use_result, inputs=[results.gallery, results.selected], outputs=[editor],
                         api_visibility="private", queue=False)
