"""The Inpaint tab: upload an image, paint over what to redraw, describe it -> the result beside it.

The mask is drawn in the browser on gr.ImageMask; its handler value is {"background", "layers",
"composite"} with the strokes in the alpha channel of the layers. A mask can also be uploaded
(white = repaint). Works with a dedicated inpainting model and with any text-to-image model
(latent blending); the `/inpaint` API endpoint. "Soft inpainting" keeps the mask fractional (an
uploaded grey mask = a partial change, the blur a real transition); the Outpaint accordion
(ui/outpaint.py) grows the picture.
"""
from functools import partial
from types import SimpleNamespace

import gradio as gr
from PIL import Image, UnidentifiedImageError

from core import pipelines
from core.lora import network_folders
from ui.controls import (check_batch, interrupt, model_picker, optional_int, prompt_row, results_panel,
                         sampling_controls, sampling_options, wire_model_controls)
from ui.errors import user_errors
from ui.follow import pipeline_progress, resume, run_job
from ui.images import (image_input, image_mask_input, mask_from_layers, mask_from_upload, open_image, refusal,
                       run_and_save)
from core.samplers import check_strength
from ui.studio import Studio
from ui import outpaint


TAB = "inpaint"
INPAINT_AREAS = [("Whole picture", "whole"), ("Only masked", "only_masked")]
MASKED_CONTENT = [("original", "original"), ("fill", "fill"), ("latent noise", "latent_noise"),
                  ("latent nothing", "latent_nothing")]


def image_and_mask(editor: dict | None, mask: str | None, max_side: int, soft: bool = False):
    """(RGB image, "L" mask, white = repaint) from the editor value and an optional uploaded mask
    (kept grey for soft inpainting, else binarised)."""
    if not editor or editor.get("background") is None:
        raise ValueError("Upload an image to inpaint first.")
    image = open_image(editor["background"], max_side)
    if mask:
        painted = mask_from_upload(_open_mask(mask, max_side), image.size, binary=not soft)
    else:
        painted = mask_from_layers(editor.get("layers") or [], image.size)
    if painted.getextrema()[1] == 0:
        raise ValueError("The mask is empty: paint over the part of the image to redraw "
                         "(or upload a mask, white = repaint).")
    return image, painted


def _open_mask(path: str, max_side: int) -> Image.Image:
    """An uploaded mask, keeping its alpha channel (a transparent PNG painted elsewhere)."""
    try:
        with Image.open(path) as im:
            if im.width > max_side or im.height > max_side:
                raise ValueError(f"The mask is {im.width}x{im.height} pixels; at most {max_side} on a side.")
            im.load()
            return im.convert("RGBA") if "A" in im.getbands() or "transparency" in im.info else im.convert("L")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(refusal(err, "mask")) from None


@user_errors
def inpaint(studio: Studio, prompt: str, image: dict | None = None, mask: str | None = None,
            negative_prompt: str = "", model: str | None = None, mask_blur: int = 4, inpaint_area: str = "whole",
            padding: int = 32, masked_content: str = "original", strength: float = 1.0,
            sampler: str | None = None, karras: bool = False, steps: int | None = None,
            guidance_scale: float | None = None, seed: int = -1, batch_count: int = 1, width: int | None = None,
            height: int | None = None, batch_size: int = 1, soft_inpainting: bool = False,
            scheduler: str | None = None, clip_skip: int = 1,
            progress=gr.Progress()):
    """Redraw the masked part of an image following a prompt. `image` is the editor value
    {"background": image, "layers": [strokes], "composite": ...}; `mask` (optional) an uploaded
    mask, white = repaint, used instead of the strokes. width/height: the processing size (the tab
    fills in the model's, as other web UIs do; None: the picture's own size, or the model's for
    "only masked"); the result keeps the picture's size. soft_inpainting: the mask stays fractional.
    scheduler, clip_skip: as /txt2img. Returns the images and their parameters."""
    entry = studio.models.entry(TAB, model)
    init, painted = image_and_mask(image, mask, studio.settings.max_side, soft=bool(soft_inpainting))
    options = sampling_options(sampler, karras, steps, guidance_scale, seed, scheduler, clip_skip)
    (n, batch_size), strength = check_batch(batch_count, batch_size), check_strength(float(strength))
    size = dict(width=optional_int(width, "Width"), height=optional_int(height, "Height"))

    def work(job):
        m = studio.models.load(entry)
        return run_and_save(lambda: pipelines.inpaint(m, init, painted, prompt or "",
                                                      negative_prompt=negative_prompt or "", mask_blur=int(mask_blur),
                                                      inpaint_area=inpaint_area, padding=int(padding),
                                                      masked_content=masked_content, strength=strength, n=n,
                                                      soft_inpainting=bool(soft_inpainting),
                                                      batch_size=batch_size, **size, **options,
                                                      callback=pipeline_progress(job),
                                                      should_stop=job.should_stop,
                                                      **network_folders(studio.settings.weights_dir)),
                            studio.settings.outputs_dir, job.folder)

    yield from run_job(studio.jobs, TAB, work, progress)


def build(studio: Studio, demo: gr.Blocks, job: gr.BrowserState) -> SimpleNamespace:
    row = prompt_row(button="Inpaint")
    with gr.Row():
        with gr.Column(scale=1):
            editor = image_mask_input(type="pil", format="png", image_mode="RGBA", label="Image: paint what to redraw",
                                      sources=["upload", "clipboard"], height=420, layers=False, transforms=(),
                                      brush=gr.Brush(default_size=24, colors=["#ffffff"], color_mode="fixed"),
                                      eraser=gr.Eraser(default_size=24), elem_classes=["ldm-inpaint-editor"])
            with gr.Accordion("Upload a mask instead (white = repaint)", open=False):
                mask = image_input(type="filepath", image_mode=None, label="Mask", sources=["upload"], height=200,
                                   elem_classes=["ldm-inpaint-mask"])
            picker, refresh = model_picker(studio, TAB)
            with gr.Row():
                mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur")
                strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Denoising strength")
            with gr.Row():
                inpaint_area = gr.Radio(INPAINT_AREAS, value="whole", label="Inpaint area")
                padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels")
            with gr.Row():
                masked_content = gr.Radio(MASKED_CONTENT, value="original", label="Masked content", scale=3)
                soft = gr.Checkbox(False, label="Soft inpainting", scale=1, elem_classes=["ldm-soft-inpainting"],
                                   info="grey mask = partial change; blur = a transition")
            grow = outpaint.build_controls()
            controls = sampling_controls(size_zero="the picture's size", schedule_type=True, clip_skip=True)
        with gr.Column(scale=1):
            results = results_panel(label="Result")

    gr.on([row.generate.click], partial(inpaint, studio),
          inputs_kwargs=controls.newest_last({"prompt": row.prompt, "image": editor, "mask": mask,
                                              "negative_prompt": row.negative_prompt, "model": picker,
                                              "mask_blur": mask_blur, "inpaint_area": inpaint_area, "padding": padding,
                                              "masked_content": masked_content, "strength": strength,
                                              **controls.inputs(), "soft_inpainting": soft}),
          outputs=[results.gallery, results.info, job], api_name="inpaint",
          concurrency_id="device", concurrency_limit=1)
    outpaint.wire(studio, grow, {"prompt": row.prompt, "image": editor, "negative_prompt": row.negative_prompt,
                                 "model": picker}, {"soft_inpainting": soft, "inpaint_area": inpaint_area,
                                                    "padding": padding, "strength": strength, **controls.inputs()},
                  editor, results, job)
    row.interrupt.click(partial(interrupt, studio), inputs=[job], outputs=None, api_visibility="private",
                        queue=False)
    wire_model_controls(studio, demo, TAB, picker, refresh, controls, job)
    demo.load(partial(resume, studio.jobs), inputs=[job], outputs=[results.gallery, results.info],
              api_visibility="private")
    receives = dict(prompt=row.prompt, negative_prompt=row.negative_prompt, model=picker, **controls.receives(),
                    strength=strength)
    return SimpleNamespace(picker=picker, editor=editor, results=results, receives=receives)
