"""The Image to image tab: an image and a prompt -> variations (SDEdit: noise the image's latent
part-way, then denoise with the prompt). The `/img2img` API endpoint."""
from functools import partial
from types import SimpleNamespace

import gradio as gr

from core import pipelines
from core.lora import network_folders
from core.pipelines.images import RESIZE_MODES, resize_mode_key
from core.samplers import check_strength
from ui.controls import (check_batch, interrupt, model_picker, name_dropdown, optional_int, prompt_row,
                         results_panel, sampling_controls, sampling_options, wire_model_controls)
from ui.errors import user_errors
from ui.follow import pipeline_progress, resume, run_job
from ui.images import image_input, open_image, run_and_save
from ui.studio import Studio


TAB = "img2img"


def resize_mode_value(mode) -> str:
    """A resize mode from the field or the API: a name, A1111's label or its number (0, 1, 2; also as
    a string); empty: just_resize."""
    if mode is None or mode == "":
        return "just_resize"
    if isinstance(mode, float) or (isinstance(mode, str) and mode.strip().isdigit()):
        mode = int(float(mode))
    return resize_mode_key(mode)


@user_errors
def img2img(studio: Studio, prompt: str, image: str | None = None, negative_prompt: str = "",
            model: str | None = None, strength: float = 0.75, sampler: str | None = None, karras: bool = False,
            steps: int | None = None, guidance_scale: float | None = None, seed: int = -1,
            batch_count: int = 1, width: int | None = None, height: int | None = None,
            resize_mode: str = "just_resize", batch_size: int = 1, scheduler: str | None = None, clip_skip: int = 1,
            progress=gr.Progress()):
    """Redraw an image following a prompt; strength 0..1 is how much of it is redrawn. width/height
    (0 or None: the picture's size) resize it first, as `resize_mode` says: "just_resize",
    "crop_and_resize" or "resize_and_fill" (A1111's 0, 1, 2). scheduler, clip_skip: as /txt2img.
    Returns the images (PNG files with their parameters), the parameters as text, and the job id."""
    entry = studio.models.entry(TAB, model)
    init = open_image(image, studio.settings.max_side)
    options = sampling_options(sampler, karras, steps, guidance_scale, seed, scheduler, clip_skip)
    strength, (n, batch_size) = check_strength(float(strength)), check_batch(batch_count, batch_size)
    size = dict(width=optional_int(width, "Width"), height=optional_int(height, "Height"),
                resize_mode=resize_mode_value(resize_mode))

    def work(job):
        m = studio.models.load(entry)
        return run_and_save(lambda: pipelines.img2img(m, init, prompt or "", negative_prompt=negative_prompt or "",
                                                      strength=strength, n=n, batch_size=batch_size, **size, **options,
                                                      callback=pipeline_progress(job), should_stop=job.should_stop,
                                                      **network_folders(studio.settings.weights_dir)),
                            studio.settings.outputs_dir, job.folder)

    yield from run_job(studio.jobs, TAB, work, progress)


def build(studio: Studio, demo: gr.Blocks, job: gr.BrowserState) -> SimpleNamespace:
    row = prompt_row()
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input(type="filepath", image_mode=None, label="Image", sources=["upload", "clipboard"],
                                height=320, elem_classes=["ldm-img2img-image"])
            picker, refresh = model_picker(studio, TAB)
            strength = gr.Slider(0.05, 1.0, value=0.75, step=0.05, label="Denoising strength",
                                 info="how much of the image is redrawn")
            controls = sampling_controls(size=False, schedule_type=True, clip_skip=True)
            with gr.Accordion("Resize first", open=False):
                with gr.Row():
                    width = gr.Number(None, label="Width (0: the picture's size)", precision=0, step=8)
                    height = gr.Number(None, label="Height (0: the picture's size)", precision=0, step=8)
                resize_mode = name_dropdown([(label, key) for key, label in RESIZE_MODES.items()], value="just_resize",
                                            label="Resize mode")
        with gr.Column(scale=1):
            results = results_panel()

    gr.on([row.generate.click], partial(img2img, studio),
          inputs_kwargs=controls.newest_last({"prompt": row.prompt, "image": image,
                                              "negative_prompt": row.negative_prompt, "model": picker,
                                              "strength": strength, **controls.inputs(), "width": width,
                                              "height": height, "resize_mode": resize_mode}),
          outputs=[results.gallery, results.info, job], api_name="img2img",
          concurrency_id="device", concurrency_limit=1)
    row.interrupt.click(partial(interrupt, studio), inputs=[job], outputs=None, api_visibility="private",
                        queue=False)
    wire_model_controls(studio, demo, TAB, picker, refresh, controls, job, with_size=False)
    demo.load(partial(resume, studio.jobs), inputs=[job], outputs=[results.gallery, results.info],
              api_visibility="private")
    receives = dict(prompt=row.prompt, negative_prompt=row.negative_prompt, model=picker, **controls.receives(),
                    strength=strength)
    return SimpleNamespace(picker=picker, image=image, results=results, receives=receives)
