"""The Text to image tab: prompt -> images, with progress, step previews and interruption.

`txt2img` is the handler and the `/txt2img` API endpoint: a plain function of plain values that
submits a job calling core.pipelines.txt2img and follows it.
"""
from functools import partial
from types import SimpleNamespace

import gradio as gr

from core import pipelines
from core.samplers import sampler_name
from core.samplers import SIGMA_SAMPLERS
from ui.controls import (check_batch, model_defaults, model_picker, optional_float, optional_int,
                         picker_update, prompt_row, results_panel, sampling_controls, seed_value)
from ui.errors import user_errors
from ui.follow import follow, gallery_value, info_text, pipeline_progress, resume
from ui.images import run_and_save
from ui.studio import Studio

TAB = "txt2img"


def sampling_options(sampler, karras, steps, guidance_scale, seed) -> dict:
    """The sampling keywords of core.pipelines from the shared controls (None = the model's default);
    `sampler` is a key ("dpmpp_2m") or a display name ("DPM++ 2M Karras", which also sets karras)."""
    sampler, named_karras = sampler_name(sampler) if sampler else (None, None)      # keys and display names
    return dict(sampler=sampler, karras=bool(named_karras or karras) if sampler in SIGMA_SAMPLERS else None,
                steps=optional_int(steps, "Sampling steps", maximum=1000),
                guidance_scale=optional_float(guidance_scale, "CFG scale"), seed=seed_value(seed))


@user_errors
def txt2img(studio: Studio, prompt: str, negative_prompt: str = "", model: str | None = None,
            sampler: str | None = None, karras: bool = False, steps: int | None = None,
            guidance_scale: float | None = None, seed: int = -1, width: int | None = None,
            height: int | None = None, batch_count: int = 1, progress=gr.Progress()):
    """Generate images from a prompt. Empty settings use the model's defaults; seed -1 is random.
    Returns the images (PNG files with their parameters) and the parameters as text."""
    entry = studio.models.entry(TAB, model)
    options = sampling_options(sampler, karras, steps, guidance_scale, seed)
    size = dict(width=optional_int(width, "Width"), height=optional_int(height, "Height"))
    n = check_batch(batch_count)

    def work(job):
        m = studio.models.load(entry)
        return run_and_save(lambda: pipelines.txt2img(m, prompt or "", negative_prompt=negative_prompt or "", n=n,
                                                      **size, **options, callback=pipeline_progress(job),
                                                      should_stop=job.should_stop),
                            studio.settings.outputs_dir, job.folder)

    job = studio.jobs.submit(TAB, work)
    for state in follow(studio.jobs, job.id, progress):
        yield gallery_value(state), info_text(state), state.id


def interrupt(studio: Studio, job_id: str | None = None) -> str:
    """Stop a job after its current step: `job_id` is the id a generation endpoint returned (its
    last value); "all" stops every queued and running job. An empty id stops nothing."""
    if not job_id:
        return "nothing to interrupt: give the job's id (the last value /txt2img returns), or 'all'"
    return "interrupting" if studio.jobs.interrupt(job_id) else "nothing to interrupt"


def last_seed(studio: Studio, job_id: str | None) -> int:
    """The seed of the first image of this tab's last job (the "reuse last" button); -1 if none."""
    state = studio.jobs.get(job_id)
    for text in (state.infotexts if state else []):
        seed = pipelines.parse_infotext(text).get("seed")
        if isinstance(seed, int):
            return seed
    return -1


def build(studio: Studio, demo: gr.Blocks, job: gr.BrowserState) -> SimpleNamespace:
    row = prompt_row()
    with gr.Row():
        with gr.Column(scale=1):
            picker, refresh = model_picker(studio, TAB)
            controls = sampling_controls()
        with gr.Column(scale=1):
            results = results_panel()
            with gr.Row():
                to_img2img = gr.Button("Send to image to image", size="sm")
                to_inpaint = gr.Button("Send to inpaint", size="sm")
                to_upscale = gr.Button("Send to upscale", size="sm")

    gr.on([row.generate.click], partial(txt2img, studio),
          inputs_kwargs={"prompt": row.prompt, "negative_prompt": row.negative_prompt, "model": picker,
                         **controls.inputs()},
          outputs=[results.gallery, results.info, job], api_name="txt2img",
          concurrency_id="device", concurrency_limit=1)
    answer = gr.Textbox(visible=False)          # the API's answer; the info box shows the job's own end
    row.interrupt.click(partial(interrupt, studio), inputs=[job], outputs=[answer], api_name="interrupt",
                        queue=False)
    wire_model_controls(studio, demo, TAB, picker, refresh, controls, job)
    demo.load(partial(resume, studio.jobs), inputs=[job], outputs=[results.gallery, results.info],
              api_visibility="private")
    receives = dict(prompt=row.prompt, negative_prompt=row.negative_prompt, model=picker, **controls.receives())
    return SimpleNamespace(picker=picker, refresh=refresh, results=results, receives=receives,
                           to_img2img=to_img2img, to_inpaint=to_inpaint, to_upscale=to_upscale)


def wire_model_controls(studio: Studio, demo: gr.Blocks, tab: str, picker, refresh, controls, job,
                        with_size: bool = True) -> None:
    """Picking a model (or opening the page) fills the controls with its defaults; ↻ re-reads
    weights/; 'reuse last' puts back the last seed. Only the user's pick (.input) fills them: a
    "Send to" that sets the model and the settings together keeps the settings it sent."""
    fill = partial(model_defaults, studio, tab, with_size=with_size)
    picker.input(fill, inputs=[picker], outputs=controls.default_outputs(), api_visibility="private", queue=False)
    demo.load(fill, inputs=[picker], outputs=controls.default_outputs(), api_visibility="private", queue=False)
    refresh.click(partial(picker_update, studio, tab), inputs=[picker], outputs=[picker],
                  api_visibility="private", queue=False)
    controls.reuse_seed.click(partial(last_seed, studio), inputs=[job], outputs=[controls.seed],
                              api_visibility="private", queue=False)
