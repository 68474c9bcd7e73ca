"""The Upscale tab: any image -> 4x (or less, resized down), tile by tile, with a before/after slider
and the full-resolution PNG to download. Shows the number of tiles and an estimated time before
running. `/upscale` API."""
import time
from functools import partial
from types import SimpleNamespace

import gradio as gr
from PIL import Image

from core import pipelines
from core.pipelines.upscale import MAX_BACK_PROJECTION, scaled_size
from ui.controls import (interrupt, model_picker, optional_float, optional_int, picker_update, prompt_row,
                         seed_value)
from ui.errors import user_errors
from ui.follow import follow, info_text, pipeline_progress
from ui.images import image_input, open_image, run_and_save
from ui.jobs import JobState
from ui.studio import Studio


TAB = "upscale"
UPSCALERS = {"model": "Diffusion model (picked below)", "lanczos": "Lanczos (instant, no model)"}


def back_projection_rounds(value) -> int | None:
    """The field -> rounds; None (the model's default) for empty or negative."""
    if value is None or value == "" or float(value) < 0:
        return None
    if not float(value).is_integer() or float(value) > MAX_BACK_PROJECTION:
        raise ValueError(f"Back-projection must be a whole number of rounds from 0 to {MAX_BACK_PROJECTION} "
                         f"(-1: the model's default); got {value}.")
    return int(value)


def scale_value(value) -> float | None:
    """The Scale field -> the pipeline's scale (None: the model's own factor)."""
    return None if value is None or value == "" else float(value)


def _settings(tile, overlap, steps) -> dict:
    return dict(tile=optional_int(tile, "Tile size"), overlap=optional_int(overlap, "Tile overlap"),
                steps=optional_int(steps, "Sampling steps", maximum=1000))


def plan_for(studio: Studio, entry, width: int, height: int, tile=None, overlap=None, steps=None,
             scale=None) -> pipelines.UpscalePlan:
    """The pipeline's own plan (core.pipelines.plan_upscale) for this input, from the model file's
    config and defaults alone: nothing is loaded. Refuses what the app would refuse (--max-size)."""
    settings = pipelines.SamplingSettings.resolve(entry.defaults, steps=steps)
    plan = pipelines.plan_upscale(entry.model_config, width, height, settings, tile=tile, overlap=overlap,
                                  scale=scale, dtype=studio.models.dtype, device=studio.models.device)
    if max(plan.out_width, plan.out_height) > studio.settings.max_side:
        raise ValueError(f"The result would be {plan.out_width}x{plan.out_height} pixels; this app makes at most "
                         f"{studio.settings.max_side} per side (--max-size). Give a smaller image or a lower scale.")
    return plan


@user_errors
def estimate(studio: Studio, image: str | None = None, model: str | None = None, tile: int | None = None,
             overlap: int | None = None, steps: int | None = None, scale: float | None = None,
             upscaler: str = "model") -> str:
    """What an upscale will do before it runs: output size, tiles, and a time estimate from the last
    upscale this server ran (its seconds per unit of sampling and of decoding, times this plan's)."""
    if not image:
        return "Upload an image to see the output size, the number of tiles and an estimated time."
    low = open_image(image, studio.settings.max_side)
    if upscaler == "lanczos":
        w, h = scaled_size(low.width, low.height, scale_value(scale) or 4.0)
        return f"{low.width}x{low.height} -> **{w}x{h}** by Lanczos resampling (instant, no model)"
    try:
        p = plan_for(studio, studio.models.entry(TAB, model), low.width, low.height,
                     **_settings(tile, overlap, steps), scale=scale_value(scale))
    except ValueError as err:
        return f"**Cannot upscale this:** {err}"
    text = (f"{low.width}x{low.height} -> **{p.out_width}x{p.out_height}**: {p.tiles} tile(s) of "
            f"{p.tile} px (overlap {p.overlap}) x {p.steps} steps")
    seconds = _seconds(studio.jobs.last_finished(TAB), p)
    if seconds is None:
        text += "; a time estimate appears after the first upscale"
    else:
        text += f", about {_duration(seconds)} on this machine"
    return text


def _seconds(last, plan: pipelines.UpscalePlan) -> float | None:
    """This plan's time from the last upscale's measured rates: seconds per unit of sampling work
    (the UNet's MACs over all steps) and per unit of decode work (decoder pixels, counting tile
    context and statistics passes); None before the first upscale."""
    rates = last.extra if last else {}
    per_sample, per_decode = rates.get("seconds_per_sampling_work"), rates.get("seconds_per_decode_work")
    if per_sample is None or per_decode is None:
        return None
    return per_sample * plan.sampling_work + per_decode * plan.decode_work


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def prompt_visibility(studio: Studio, model: str | None, upscaler: str = "model") -> list:
    """The prompt boxes show only for upscalers that read a prompt (the SD x4 upscaler)."""
    try:
        reads = upscaler == "model" and studio.models.entry(TAB, model).caps.prompt
    except ValueError:
        reads = False
    return [gr.update(visible=reads), gr.update(visible=reads)]


def slider_value(state: JobState):
    if state.status == "done" and state.images:
        return state.extra.get("before"), state.images[0]
    return gr.skip()


@user_errors
def upscale(studio: Studio, prompt: str = "", image: str | None = None, negative_prompt: str = "",
            model: str | None = None, tile: int | None = None, overlap: int | None = None,
            steps: int | None = None, guidance_scale: float | None = None, seed: int = -1,
            back_projection: int | None = -1, scale: float | None = None, upscaler: str = "model",
            progress=gr.Progress()):
    """Upscale an image (4x) tile by tile. The prompts are for text-conditioned upscalers (SD x4);
    LDM super-resolution takes none. back_projection: rounds after decoding (-1: the model's
    default); scale: output side / input side (None: the model's factor, 4); upscaler: "model" (the
    diffusion model, default) or "lanczos" (instant resampling, no model). Returns (before, after)
    for the slider, the full-resolution PNG, and its parameters."""
    low = open_image(image, studio.settings.max_side)
    if upscaler not in UPSCALERS:
        raise ValueError(f"upscaler must be one of {', '.join(UPSCALERS)}; got {upscaler!r}.")
    if upscaler == "lanczos":
        job = studio.jobs.submit(TAB, partial(_lanczos_work, studio, low, scale_value(scale) or 4.0))
    else:
        entry = studio.models.entry(TAB, model)
        options = dict(**_settings(tile, overlap, steps), guidance_scale=optional_float(guidance_scale, "CFG scale"),
                       seed=seed_value(seed), back_projection=back_projection_rounds(back_projection),
                       scale=scale_value(scale))
        plan = plan_for(studio, entry, low.width, low.height, options["tile"], options["overlap"],
                        options["steps"], options["scale"])
        job = studio.jobs.submit(TAB, partial(_model_work, studio, entry, low, plan, options, prompt or "",
                                              negative_prompt or ""))
    for state in follow(studio.jobs, job.id, progress):
        yield slider_value(state), (state.images[0] if state.images else None), info_text(state), state.id


def _before(job, low: Image.Image, width: int, height: int) -> None:
    before = job.folder / "before.png"                      # the input at the output size, for the slider
    low.resize((width, height), Image.Resampling.NEAREST).save(before)
    job.note(before=str(before))


def _model_work(studio: Studio, entry, low, plan, options: dict, prompt: str, negative_prompt: str, job):
    m = studio.models.load(entry)
    _before(job, low, plan.out_width, plan.out_height)
    job.note(tiles=plan.tiles)
    started = time.monotonic()
    sampled = {"at": started}                   # when the last sampling step ended (then: decode, finish)
    report = pipeline_progress(job)

    def progress(p):
        if p.stage == "sample":
            sampled["at"] = time.monotonic()
        report(p)

    def generate():
        planned = dict(tile=plan.tile, overlap=plan.overlap, tile_batch=plan.tile_batch, vae_tile=plan.vae_tile)
        return [pipelines.upscale(m, low, prompt=prompt, negative_prompt=negative_prompt, **{**options, **planned},
                                  callback=progress, should_stop=job.should_stop)]

    images = run_and_save(generate, studio.settings.outputs_dir, job.folder)
    finished = time.monotonic()
    job.note(seconds_per_sampling_work=(sampled["at"] - started) / plan.sampling_work,
             seconds_per_decode_work=(finished - sampled["at"]) / plan.decode_work)
    return images


def _lanczos_work(studio: Studio, low, scale: float, job):
    result = pipelines.lanczos(low, scale, max_side=studio.settings.max_side)
    _before(job, low, *result.size)
    return run_and_save(lambda: [result], studio.settings.outputs_dir, job.folder)


def resume(studio: Studio, job_id: str | None):
    state = studio.jobs.get(job_id)
    if state is None:
        yield gr.skip(), gr.skip(), gr.skip()
        return
    for state in ([state] if state.done else studio.jobs.follow(job_id)):
        yield slider_value(state), (state.images[0] if state.images else None), info_text(state)


def build(studio: Studio, demo: gr.Blocks, job: gr.BrowserState) -> SimpleNamespace:
    row = prompt_row(button="Upscale")
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input(type="filepath", image_mode=None, label="Image to upscale",
                                sources=["upload", "clipboard"], height=320, elem_classes=["ldm-upscale-image"])
            plan_text = gr.Markdown("Upload an image to see the output size, the number of tiles and an estimated "
                                    "time.", elem_classes=["ldm-upscale-plan"])
            upscaler = gr.Radio([(label, key) for key, label in UPSCALERS.items()], value="model", label="Upscaler",
                                elem_classes=["ldm-upscaler"])
            picker, refresh = model_picker(studio, TAB)
            with gr.Row():
                tile = gr.Number(None, label="Tile size, px of the input (0: automatic)", precision=0)
                overlap = gr.Number(None, label="Tile overlap, px (0: automatic)", precision=0)
            with gr.Row():
                steps = gr.Number(None, label="Sampling steps (0: model default)", precision=0)
                guidance_scale = gr.Number(None, label="CFG scale, SD x4 (0: model default)")
                seed = gr.Number(-1, label="Seed (-1: random)", precision=0)
            with gr.Row():
                scale = gr.Slider(1.5, 4, value=4, step=0.5, label="Scale (the model makes 4x; less is resized down)")
                back_projection = gr.Number(-1, label="Back-projection rounds onto the input (-1: model default, "
                                            "0: off)", precision=0)
        with gr.Column(scale=1):
            slider = gr.ImageSlider(label="Before / after", type="filepath", format="png", max_height=520,
                                    elem_classes=["ldm-upscale-slider"])
            download = gr.File(label="Full-resolution PNG", elem_classes=["ldm-upscale-download"])
            info = gr.Textbox(label="Parameters", lines=2, interactive=False, elem_classes=["ldm-upscale-info"])

    gr.on([row.generate.click], partial(upscale, studio),
          inputs_kwargs={"prompt": row.prompt, "image": image, "negative_prompt": row.negative_prompt,
                         "model": picker, "tile": tile, "overlap": overlap, "steps": steps,
                         "guidance_scale": guidance_scale, "seed": seed, "back_projection": back_projection,
                         "scale": scale, "upscaler": upscaler},
          outputs=[slider, download, info, job], api_name="upscale", concurrency_id="device", concurrency_limit=1)
    gr.on([image.change, picker.change, tile.change, overlap.change, steps.change, scale.change, upscaler.change],
          partial(estimate, studio),
          inputs_kwargs={"image": image, "model": picker, "tile": tile, "overlap": overlap, "steps": steps,
                         "scale": scale, "upscaler": upscaler},
          outputs=[plan_text], api_visibility="private", concurrency_limit=None, show_progress="hidden")
    show_prompts = partial(prompt_visibility, studio)
    gr.on([picker.change, upscaler.change], show_prompts, inputs=[picker, upscaler],
          outputs=[row.prompt, row.negative_prompt], api_visibility="private", queue=False)
    demo.load(show_prompts, inputs=[picker, upscaler], outputs=[row.prompt, row.negative_prompt],
              api_visibility="private", queue=False)
    row.interrupt.click(partial(interrupt, studio), inputs=[job], outputs=None, api_visibility="private",
                        queue=False)
    refresh.click(partial(picker_update, studio, TAB), inputs=[picker], outputs=[picker],
                  api_visibility="private", queue=False)
    demo.load(partial(resume, studio), inputs=[job], outputs=[slider, download, info], api_visibility="private")
    return SimpleNamespace(picker=picker, image=image, slider=slider, download=download)
