"""The Class / unconditional tab: images of a class from a class-conditional model (cin256, our
shapes class model), or samples of an unconditional one (CelebA-HQ, LSUN ... LDMs).

`classgen` is the handler and the `/class` API endpoint: one endpoint for both kinds, the model
deciding which runs; `class_label` is the class number (the shapes world's 24 classes are
shape_index * 6 + colour_index: 0 "circle red" ... 23 "star orange") and -1 (the default) means
"no class", which an unconditional model requires and a class model refuses. Guidance is against
the model's null class; a model without one runs unguided (CFG scale 1).
"""
from functools import partial
from types import SimpleNamespace

import gradio as gr

from core import pipelines
from core.pipelines.conditional import class_count, class_names
from ui.controls import (check_batch, interrupt, model_picker, optional_int, results_with_sends, sampling_controls,
                         sampling_options, wire_model_controls)
from ui.errors import user_errors
from ui.follow import pipeline_progress, resume, run_job
from ui.images import run_and_save
from ui.studio import Studio

TAB = "classgen"
NO_CLASS = -1


def class_request(entry, class_label) -> int | None:
    """The class to sample for the picked model: a whole number in [0, classes) for a class model,
    None for an unconditional one (which takes no class: -1 or empty)."""
    label = NO_CLASS if class_label is None or class_label == "" else float(class_label)
    if label != int(label):
        raise ValueError(f"Class must be a whole number (-1: none, for unconditional models); got {class_label}.")
    label = int(label)
    if not entry.caps.serves("class"):
        if label != NO_CLASS:
            raise ValueError(f"{entry.name} is an unconditional model: it takes no class (leave the class at -1).")
        return None
    classes = class_count(entry.model_config)
    if not 0 <= label < classes:
        raise ValueError(f"Pick a class of {entry.name}: a number from 0 to {classes - 1}; got {label}.")
    return label


@user_errors
def classgen(studio: Studio, class_label: int = NO_CLASS, model: str | None = None, sampler: str | None = None,
             karras: bool = False, steps: int | None = None, guidance_scale: float | None = None, seed: int = -1,
             width: int | None = None, height: int | None = None, batch_count: int = 1, batch_size: int = 1,
             native_tiling: bool = False, progress=gr.Progress()):
    """Images of class `class_label` from a class-conditional model, or (class_label -1) samples of
    an unconditional model. Empty settings use the model's defaults; seed -1 is random; guidance is
    against the null class (models without one: CFG scale 1). native_tiling: above the model's
    native size, denoise in overlapping native-size tiles (else one piece). Returns the images (PNG
    files with their parameters, "Class: N (name)"), the parameters as text, and the job id."""
    entry = studio.models.entry(TAB, model)
    label = class_request(entry, class_label)
    options = sampling_options(sampler, karras, steps, guidance_scale, seed)
    n, batch_size = check_batch(batch_count, batch_size)
    common = dict(n=n, batch_size=batch_size, width=optional_int(width, "Width"),
                  height=optional_int(height, "Height"), native_tiling=bool(native_tiling), **options)

    def work(job):
        m = studio.models.load(entry)
        follow = dict(callback=pipeline_progress(job), should_stop=job.should_stop)
        if label is None:
            run = lambda: pipelines.sample_unconditional(m, **common, **follow)  # noqa: E731
        else:
            run = lambda: pipelines.sample_class(m, label, **common, **follow)  # noqa: E731
        return run_and_save(run, studio.settings.outputs_dir, job.folder)

    yield from run_job(studio.jobs, TAB, work, progress)


def class_fields(studio: Studio, model: str | None, current) -> list:
    """Updates of (class name dropdown, class number, note) for the picked model: names when the
    model's classes have them, a number box otherwise, neither for an unconditional model."""
    try:
        entry = studio.models.entry(TAB, model)
    except ValueError:
        return [gr.update(visible=False), gr.update(visible=False), ""]
    if not entry.caps.serves("class"):
        return [gr.update(visible=False), gr.update(value=NO_CLASS, visible=False),
                "Unconditional model: no class to pick; each seed gives another sample."]
    classes, names = class_count(entry.model_config), class_names(entry.model_config)
    label = int(current) if current is not None and 0 <= current < classes else 0
    guidance = ("Guidance (CFG scale) is against the model's null class." if entry.caps.guidance else
                "This model has no null class, so guidance is off (CFG scale 1).")
    if names:
        return [gr.update(choices=list(zip(names, range(classes))), value=label, visible=True),
                gr.update(value=label, visible=False), f"{classes} classes. {guidance}"]
    return [gr.update(visible=False), gr.update(value=label, maximum=classes - 1, visible=True),
            f"Classes 0 to {classes - 1}. {guidance}"]


def named_class(studio: Studio, model: str | None, label) -> dict:
    """The name dropdown following the class number (a "Send to" sets the number)."""
    try:
        names = class_names(studio.models.entry(TAB, model).model_config)
    except ValueError:
        return gr.skip()
    return gr.update(value=int(label)) if names and label is not None and 0 <= label < len(names) else gr.skip()


def build(studio: Studio, demo: gr.Blocks, job: gr.BrowserState) -> SimpleNamespace:
    with gr.Row():
        with gr.Column(scale=5):
            picker, refresh = model_picker(studio, TAB)
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", size="lg", elem_classes=["ldm-generate"])
            stop = gr.Button("Interrupt", variant="stop", elem_classes=["ldm-interrupt"])
    with gr.Row():
        with gr.Column(scale=1):
            name = gr.Dropdown(label="Class", choices=[], visible=False, elem_classes=["ldm-class-name"])
            number = gr.Number(NO_CLASS, label="Class number", precision=0, minimum=NO_CLASS, visible=False,
                               elem_classes=["ldm-class-number"])
            note = gr.Markdown("", elem_classes=["ldm-class-note"])
            controls = sampling_controls(tiling=True)
        with gr.Column(scale=1):
            results, to_img2img, to_inpaint, to_upscale = results_with_sends()

    gr.on([generate.click], partial(classgen, studio),
          inputs_kwargs={"class_label": number, "model": picker, **controls.inputs()},
          outputs=[results.gallery, results.info, job], api_name="class",
          concurrency_id="device", concurrency_limit=1)
    stop.click(partial(interrupt, studio), inputs=[job], outputs=None, api_visibility="private", queue=False)
    wire_model_controls(studio, demo, TAB, picker, refresh, controls, job)
    fields = partial(class_fields, studio)
    for event in (picker.change, demo.load):                     # .change: a pick, a refresh or a "Send to"
        event(fields, inputs=[picker, number], outputs=[name, number, note], api_visibility="private", queue=False)
    name.input(lambda label: label, inputs=[name], outputs=[number], api_visibility="private", queue=False)
    number.change(partial(named_class, studio), inputs=[picker, number], outputs=[name], api_visibility="private",
                  queue=False)
    demo.load(partial(resume, studio.jobs), inputs=[job], outputs=[results.gallery, results.info],
              api_visibility="private")
    receives = dict(model=picker, class_label=number, **controls.receives())
    return SimpleNamespace(picker=picker, refresh=refresh, results=results, receives=receives,
                           to_img2img=to_img2img, to_inpaint=to_inpaint, to_upscale=to_upscale)
