"""The Text to image tab: prompt -> images, with progress, step previews and interruption.

`txt2img` is the handler and the `/txt2img` API endpoint: a plain function of plain values that
submits a job calling core.pipelines.txt2img and follows it.
"""
import time
from functools import partial
from types import SimpleNamespace

import gradio as gr
import torch

from core import pipelines
from core.pipelines.estimate import describe, flops_per_second, txt2img_work
from core.lora import network_folders
from ui.controls import (check_batch, interrupt, model_picker, optional_float, optional_int, prompt_row,
                         results_with_sends,
                         sampling_controls, sampling_options, wire_model_controls)
from ui.hires import hires_controls, hires_request
from ui.errors import user_errors
from ui.follow import pipeline_progress, resume, run_job
from ui.images import run_and_save
from ui.refiner import refiner_choices, refiner_controls, refiner_entry
from ui.studio import Studio

TAB = "txt2img"
SHOW_FROM_SECONDS = 20                  # the CPU estimate shows for generations at least this long
CALIBRATION_FLOPS = 1e12                # generations this large calibrate the next estimate (overheads negligible)


@user_errors
def txt2img(studio: Studio, prompt: str, negative_prompt: str = "", model: str | None = None,
            sampler: str | None = None, karras: bool = False, steps: int | None = None,
            guidance_scale: float | None = None, seed: int = -1, width: int | None = None,
            height: int | None = None, batch_count: int = 1, batch_size: int = 1, enable_hr: bool = False,
            hr_upscaler: str = "Latent", hr_scale: float = 2.0, hr_steps: int = 0, denoising_strength: float = 0.7,
            hr_resize_x: int = 0, hr_resize_y: int = 0, hr_prompt: str = "", hr_negative_prompt: str = "",
            native_tiling: bool = False, scheduler: str | None = None, clip_skip: int = 1,
            refiner: str | None = None, refiner_switch_at: float = 0.8, progress=gr.Progress()):
    """Generate images from a prompt. Empty settings use the model's defaults; seed -1 is random;
    batch_count x batch_size images, batch_size of them per UNet batch. enable_hr and the hr_* /
    denoising_strength fields: AUTOMATIC1111's hires fix (a second img2img pass at a larger size).
    native_tiling: above the model's native size, denoise in overlapping native-size tiles (else one piece).
    scheduler: A1111's schedule type ("Karras", "Exponential", ...; None or "Automatic": the model's
    default; karras=True is its old spelling, see ui/controls.py); clip_skip: 1 = the text encoder's
    last layer (CLIP / OpenCLIP). Both also apply to the hires pass.
    refiner (a text-to-image model's name, "None" or empty for none) takes over at refiner_switch_at.
    Returns the images (PNG files with their parameters), the parameters as text, and the job id."""
    entry = studio.models.entry(TAB, model)
    options = sampling_options(sampler, karras, steps, guidance_scale, seed, scheduler, clip_skip)
    size = dict(width=optional_int(width, "Width"), height=optional_int(height, "Height"))
    n, batch_size = check_batch(batch_count, batch_size)
    base = (size["width"] or entry.defaults.width, size["height"] or entry.defaults.height)
    hires, sr_entry = hires_request(studio, base, enable_hr, hr_upscaler, hr_scale, hr_steps, denoising_strength,
                                    hr_resize_x, hr_resize_y, hr_prompt, hr_negative_prompt)
    refiner_model = refiner_entry(studio, refiner)

    work_plan = _work(entry, options.get("steps"), options.get("guidance_scale"), size["width"], size["height"], n)

    def work(job):
        m = studio.models.load(entry)
        common = dict(n=n, batch_size=batch_size, **size, **options, native_tiling=bool(native_tiling),
                      callback=pipeline_progress(job),
                      should_stop=job.should_stop, **network_folders(studio.settings.weights_dir))
        if refiner_model is not None:
            common.update(refiner=studio.models.load(refiner_model), refiner_switch_at=refiner_switch_at)
        if hires is None:
            run = lambda: pipelines.txt2img(m, prompt or "", negative_prompt or "", **common)  # noqa: E731
        else:
            sr = studio.models.load(sr_entry) if sr_entry else None
            run = lambda: pipelines.txt2img_hires(m, prompt or "", hires, negative_prompt or "",  # noqa: E731
                                                  sr_model=sr, **common)
        started = time.monotonic()
        saved = run_and_save(run, studio.settings.outputs_dir, job.folder)
        if hires is None and refiner_model is None and work_plan and work_plan.flops >= CALIBRATION_FLOPS:
            job.note(seconds_per_flop=(time.monotonic() - started) / work_plan.flops)   # for the next estimate
        return saved

    yield from run_job(studio.jobs, TAB, work, progress)


def _work(entry, steps, guidance_scale, width, height, n: int):
    """The txt2img work (core.pipelines.estimate) of these settings, None when it cannot be counted."""
    d = entry.defaults
    try:
        return txt2img_work(entry.model_config, width or d.width, height or d.height, steps or d.steps, n,
                            guided=(guidance_scale or d.guidance_scale) != 1)
    except (ValueError, RuntimeError, TypeError):
        return None


@user_errors
def time_estimate(studio: Studio, model: str | None = None, steps=None, guidance_scale=None, width=None,
                  height=None, batch_count=1, batch_size=1) -> str:
    """On the CPU, how long a generation with these settings will take ("about N s"), before it starts:
    its FLOPs counted from the model's config, at this machine's measured rate (or the rate the last
    large generation here achieved). Empty on a GPU, or when it is quick."""
    if torch.device(studio.settings.device).type != "cpu":
        return ""
    try:
        entry = studio.models.entry(TAB, model)
        n, _ = check_batch(batch_count, batch_size)
        plan = _work(entry, optional_int(steps, "Sampling steps", maximum=1000), optional_float(guidance_scale, "CFG"),
                     optional_int(width, "Width"), optional_int(height, "Height"), n)
    except ValueError:
        return ""
    if plan is None:
        return ""
    last = studio.jobs.last_finished(TAB)
    calibration = last.extra.get("seconds_per_flop") if last else None
    seconds = plan.seconds(flops_per_second(), calibration)
    if seconds < SHOW_FROM_SECONDS:
        return ""
    how = "at the rate of the last generation here" if calibration else "from a quick measurement of this CPU"
    return f"On the CPU this will take **{describe(seconds)}** ({plan.flops / 1e12:.1f} TFLOP, {how})."


def build(studio: Studio, demo: gr.Blocks, job: gr.BrowserState) -> SimpleNamespace:
    row = prompt_row()
    with gr.Row():
        with gr.Column(scale=1):
            picker, refresh = model_picker(studio, TAB)
            controls = sampling_controls(tiling=True, schedule_type=True, clip_skip=True)
            hires = hires_controls(studio)
            refiner = refiner_controls(studio)
            estimate = gr.Markdown("", elem_classes=["ldm-estimate"])
        with gr.Column(scale=1):
            results, to_img2img, to_inpaint, to_upscale = results_with_sends()

    gr.on([row.generate.click], partial(txt2img, studio),
          inputs_kwargs={**controls.newest_last({"prompt": row.prompt, "negative_prompt": row.negative_prompt,
                                                 "model": picker, **controls.inputs(), **hires.inputs()}),
                         **refiner.inputs()},
          outputs=[results.gallery, results.info, job], api_name="txt2img",
          concurrency_id="device", concurrency_limit=1)
    answer = gr.Textbox(visible=False)          # the API's answer; the info box shows the job's own end
    row.interrupt.click(partial(interrupt, studio), inputs=[job], outputs=[answer], api_name="interrupt",
                        queue=False)
    wire_model_controls(studio, demo, TAB, picker, refresh, controls, job)
    refresh.click(lambda: gr.update(choices=refiner_choices(studio)), outputs=[refiner.refiner],
                  api_visibility="private")
    estimate_inputs = {"model": picker, **{k: v for k, v in controls.inputs().items()
                                           if k in ("steps", "guidance_scale", "width", "height", "batch_count",
                                                    "batch_size")}}
    gr.on([c.change for c in estimate_inputs.values()] + [demo.load], partial(time_estimate, studio),
          inputs_kwargs=estimate_inputs, outputs=[estimate], api_visibility="private", concurrency_limit=None,
          show_progress="hidden")
    demo.load(partial(resume, studio.jobs), inputs=[job], outputs=[results.gallery, results.info],
              api_visibility="private")
    receives = dict(prompt=row.prompt, negative_prompt=row.negative_prompt, model=picker, **controls.receives(),
                    **refiner.inputs())
    return SimpleNamespace(picker=picker, refresh=refresh, results=results, receives=receives,
                           to_img2img=to_img2img, to_inpaint=to_inpaint, to_upscale=to_upscale)
