"""The Layout to image tab: draw boxes (or type them), label each object, generate the scene.

`layout` is the handler and the `/layout` API endpoint: a plain function of plain values (the
layout as text, "circle red 0.02 0.02 0.32 0.32" one object a line, or JSON) that checks the layout
against the picked model (core.pipelines.parse_layout), then submits a job calling
core.pipelines.sample_layout and follows it. The canvas (ui/layout_canvas.py) and the layout
textbox edit the same text. "Show boxes" draws each result's own layout (its PNG parameters) over
a faint copy of it. A model trained with backgrounds gets a Background dropdown ("any": drawn from
the seed).
"""
from functools import partial
from types import SimpleNamespace

import gradio as gr
from PIL import Image

from core import pipelines
from core.pipelines.layout_text import ANY_BACKGROUND, EXAMPLE, layout_vocabulary, parse_layout
from ui.controls import (check_batch, interrupt, model_picker, optional_int, results_panel, sampling_controls,
                         sampling_options, wire_model_controls)
from ui.errors import user_errors
from ui.follow import pipeline_progress, resume, run_job
from ui.images import run_and_save
from ui.layout_canvas import boxes_picture, layout_canvas
from ui.send import gallery_image, picture_parameters
from ui.studio import Studio

TAB = "layout"
START = "circle red 0.02 0.02 0.32 0.32\nstar blue 0.73 0.4 0.93 0.6"   # what the canvas shows first (on the grid)


def vocabulary_of(studio: Studio, model: str | None):
    """The picked model's layout vocabulary (None when there is no layout model)."""
    try:
        return layout_vocabulary(studio.models.entry(TAB, model).model_config)
    except ValueError:
        return None


@user_errors
def layout(studio: Studio, layout: str, model: str | None = None, sampler: str | None = None, karras: bool = False,
           steps: int | None = None, guidance_scale: float | None = None, seed: int = -1, width: int | None = None,
           height: int | None = None, batch_count: int = 1, batch_size: int = 1, native_tiling: bool = False,
           background: str = ANY_BACKGROUND, progress=gr.Progress()):
    """Generate images of a layout: text, one object a line (its label, then x0 y0 x1 y1 in [0, 1] of
    the width and height: "circle red 0.02 0.02 0.32 0.32"), or JSON ([[class_id, x0, y0, x1, y1], ...]).
    Empty settings use the model's defaults; seed -1 is random; batch_count x batch_size images;
    native_tiling: above the model's native size, denoise in overlapping native-size tiles;
    background: for a model that takes one, "white", "black", "gray" or "any" (drawn from the seed). Returns
    the images (PNG files, their parameters carrying the layout), the parameters as text, and the
    job id."""
    entry = studio.models.entry(TAB, model)
    vocabulary = layout_vocabulary(entry.model_config)
    boxes = parse_layout(layout or "", vocabulary)
    if not boxes:
        raise ValueError(f"The layout is empty: draw a box on the canvas, or type one object a line ('{EXAMPLE}').")
    vocabulary.background(background, 0)                 # checked now: an unknown background is an error here
    options = sampling_options(sampler, karras, steps, guidance_scale, seed)
    size = dict(width=optional_int(width, "Width"), height=optional_int(height, "Height"),
                native_tiling=bool(native_tiling))
    n, batch_size = check_batch(batch_count, batch_size)

    def work(job):
        m = studio.models.load(entry)
        run = lambda: pipelines.sample_layout(m, boxes, n=n, batch_size=batch_size, background=background,  # noqa: E731
                                              **size, **options, callback=pipeline_progress(job),
                                              should_stop=job.should_stop)
        return run_and_save(run, studio.settings.outputs_dir, job.folder)

    yield from run_job(studio.jobs, TAB, work, progress)


def boxes_view(studio: Studio, show: bool, images, index, model: str | None):
    """The "Show boxes" picture: the chosen result faded, with the boxes of its own layout."""
    if not show or not images:
        return gr.update(value=None, visible=bool(show))
    path = gallery_image(images, index)
    boxes, vocabulary = picture_parameters(path).get("layout"), vocabulary_of(studio, model)
    if not boxes or vocabulary is None:             # a step preview, or a picture of another model
        return gr.update(value=None, visible=True)
    with Image.open(path) as im:
        return gr.update(value=boxes_picture(im, parse_layout(boxes, vocabulary), vocabulary), visible=True)


def canvas_update(studio: Studio, model: str | None, width=None, height=None):
    """The canvas for the picked model: its labels and object budget, and the shape of the image it
    will make (width and height, 0 or empty: the model's)."""
    vocabulary = vocabulary_of(studio, model)
    try:
        defaults = studio.models.entry(TAB, model).defaults
        w, h = (optional_int(width, "Width") or defaults.width), (optional_int(height, "Height") or defaults.height)
    except ValueError:                              # no model yet, or a size being typed
        w = h = 1
    return gr.HTML(vocab=vocabulary.as_dict() if vocabulary else None, aspect=h / w)


def background_picker(vocabulary) -> dict:
    """The Background dropdown's choices and visibility for a model's vocabulary (shown only for a
    model trained with backgrounds)."""
    backgrounds = vocabulary.backgrounds if vocabulary else ()
    return dict(choices=[ANY_BACKGROUND, *backgrounds], visible=bool(backgrounds))


def background_update(studio: Studio, model: str | None, value: str):
    """The Background dropdown for the picked model (its value kept where the model has it)."""
    picker = background_picker(vocabulary_of(studio, model))
    return gr.Dropdown(value=value if value in picker["choices"] else ANY_BACKGROUND, **picker)


def build(studio: Studio, demo: gr.Blocks, job: gr.BrowserState) -> SimpleNamespace:
    with gr.Row():
        with gr.Column(scale=1):
            picker, refresh = model_picker(studio, TAB)
            first = studio.models.choices(TAB)
            canvas = layout_canvas(START, vocabulary_of(studio, first[0][1] if first else None))
            text = gr.Textbox(START, label="Layout (one object a line: label x0 y0 x1 y1, fractions of the image)",
                              lines=4, max_lines=12, elem_classes=["ldm-layout-text"])
            # any value reaches layout(), which names the valid ones (an API client may send anything)
            background = gr.Dropdown(value=ANY_BACKGROUND, label="Background", allow_custom_value=True,
                                     info="the scene's background; any: drawn from the seed",
                                     elem_classes=["ldm-layout-background"],
                                     **background_picker(vocabulary_of(studio, first[0][1] if first else None)))
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", size="lg", elem_classes=["ldm-generate"])
                stop = gr.Button("Interrupt", variant="stop", elem_classes=["ldm-interrupt"])
            controls = sampling_controls(tiling=True)
        with gr.Column(scale=1):
            results = results_panel()
            show = gr.Checkbox(False, label="Show boxes", info="each result's layout over a faint copy of it",
                               elem_classes=["ldm-layout-show"])
            overlay = gr.Image(label="Boxes over the result", visible=False, interactive=False, format="png",
                               elem_classes=["ldm-layout-overlay"])

    # The canvas and the textbox hold the same text: each edit of one is copied into the other.
    canvas.edit(None, inputs=[canvas], outputs=[text], js="(value) => value", api_visibility="private")
    text.change(None, inputs=[text], outputs=[canvas], js="(value) => value", api_visibility="private")
    gr.on([picker.change, controls.width.change, controls.height.change], partial(canvas_update, studio),
          inputs=[picker, controls.width, controls.height], outputs=[canvas], api_visibility="private", queue=False)
    picker.change(partial(background_update, studio), inputs=[picker, background], outputs=[background],
                  api_visibility="private", queue=False)
    gr.on([generate.click], partial(layout, studio),
          inputs_kwargs={"layout": text, "model": picker, **controls.inputs(), "background": background},
          outputs=[results.gallery, results.info, job], api_name="layout",
          concurrency_id="device", concurrency_limit=1)
    answer = gr.Textbox(visible=False)
    stop.click(partial(interrupt, studio), inputs=[job], outputs=[answer], api_visibility="private", queue=False)
    gr.on([show.change, results.gallery.change, results.selected.change], partial(boxes_view, studio),
          inputs=[show, results.gallery, results.selected, picker], outputs=[overlay], api_visibility="private",
          queue=False)
    wire_model_controls(studio, demo, TAB, picker, refresh, controls, job)
    demo.load(partial(resume, studio.jobs), inputs=[job], outputs=[results.gallery, results.info],
              api_visibility="private")
    receives = dict(layout=text, background=background, model=picker, **controls.receives())
    return SimpleNamespace(picker=picker, refresh=refresh, results=results, receives=receives, canvas=canvas,
                           text=text)
