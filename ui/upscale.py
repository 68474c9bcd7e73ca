"""The Upscale tab: any image -> 4x (or less, resized down), tile by tile, with a before/after slider
and the full-resolution PNG to download. Shows the number of tiles and an estimated time before
running. `/upscale` API."""
import time
from functools import partial
from types import SimpleNamespace

import gradio as gr
from PIL import Image

from core import pipelines
from core.pipelines.defaults import first_stage_factor, model_defaults, unet_factor
from core.pipelines.upscale import MAX_BACK_PROJECTION, plan_tiles, scaled_size
from ui.controls import model_picker, optional_float, optional_int, picker_update, prompt_row, seed_value
from ui.errors import user_errors
from ui.follow import follow, info_text, pipeline_progress
from ui.images import image_input, open_image, run_and_save
from ui.jobs import JobState
from ui.studio import Studio
from ui.txt2img import interrupt

TAB = "upscale"


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


def plan(m, width: int, height: int, tile: int | None = None, overlap: int | None = None,
         steps: int | None = None, scale: float | None = None) -> dict:
    """What core.pipelines.upscale will do for a width x height input: output size, tiles per step
    (the pipeline's own tile plan) and steps."""
    f, align = first_stage_factor(m), unet_factor(m)
    h, w = -(-height // align) * align, -(-width // align) * align          # padded to the UNet grid
    defaults = model_defaults(m)
    guided = m.task == "upscale-sd" and defaults.guidance_scale != 1.0
    tile, overlap, tiles = plan_tiles(m, h, w, tile or None, overlap, 2 if guided else 1)
    out_w, out_h = scaled_size(width, height, scale or f)
    return {"width": out_w, "height": out_h, "tiles": tiles, "tile": tile, "overlap": overlap,
            "steps": steps or defaults.steps}


@user_errors
def estimate(studio: Studio, image: str | None = None, model: str | None = None, tile: int | None = None,
             overlap: int | None = None, steps: int | None = None, scale: float | None = None) -> str:
    """What an upscale will do before it runs: output size, tiles, and a time estimate from the last
    upscale this server ran (seconds per tile-step)."""
    if not image:
        return "Upload an image to see the output size, the number of tiles and an estimated time."
    entry = studio.models.entry(TAB, model)
    low = open_image(image, studio.settings.max_side)
    p = plan(studio.models.load(entry), low.width, low.height, **_settings(tile, overlap, steps),
             scale=scale_value(scale))
    text = (f"{low.width}x{low.height} -> **{p['width']}x{p['height']}**: {p['tiles']} tile(s) of "
            f"{p['tile']} px (overlap {p['overlap']}) x {p['steps']} steps")
    last = studio.jobs.last_finished(TAB)
    per_tile_step = last.extra.get("seconds_per_tile_step") if last else None
    if per_tile_step:
        text += f", about {per_tile_step * p['tiles'] * p['steps']:.0f} s on this machine"
    else:
        text += "; a time estimate appears after the first upscale"
    return text


def slider_value(state: JobState):
    if state.status == "done" and state.images:
        return state.extra.get("before"), state.images[0]
    return gr.skip()


@user_errors
def upscale(studio: Studio, prompt: str = "", image: str | None = None, negative_prompt: str = "",
            model: str | None = None, tile: int | None = None, overlap: int | None = None,
            steps: int | None = None, guidance_scale: float | None = None, seed: int = -1,
            back_projection: int | None = -1, scale: float | None = None, progress=gr.Progress()):
    """Upscale an image (4x) tile by tile. The prompts are for text-conditioned upscalers (SD x4);
    LDM super-resolution takes none. back_projection: rounds after decoding (-1: the model's
    default); scale: output side / input side (None: the model's factor, 4). Returns (before,
    after) for the slider, the full-resolution PNG, and its parameters."""
    entry = studio.models.entry(TAB, model)
    low = open_image(image, studio.settings.max_side)
    options = dict(**_settings(tile, overlap, steps), guidance_scale=optional_float(guidance_scale, "CFG scale"),
                   seed=seed_value(seed), back_projection=back_projection_rounds(back_projection),
                   scale=scale_value(scale))

    def work(job):
        m = studio.models.load(entry)
        p = plan(m, low.width, low.height, tile=options["tile"], overlap=options["overlap"], steps=options["steps"],
                 scale=options["scale"])
        if max(p["width"], p["height"]) > studio.settings.max_side:
            raise ValueError(f"The result would be {p['width']}x{p['height']} pixels; this app makes at most "
                             f"{studio.settings.max_side} per side (--max-size).")
        before = job.folder / "before.png"                  # the input at the output size, for the slider
        low.resize((p["width"], p["height"]), Image.Resampling.NEAREST).save(before)
        job.note(before=str(before), tiles=p["tiles"])
        started = time.monotonic()
        def generate():
            return [pipelines.upscale(m, low, prompt=prompt or "", negative_prompt=negative_prompt or "", **options,
                                      callback=pipeline_progress(job), should_stop=job.should_stop)]

        images = run_and_save(generate, studio.settings.outputs_dir)
        job.note(seconds_per_tile_step=(time.monotonic() - started) / (p["tiles"] * p["steps"]))
        return images

    job = studio.jobs.submit(TAB, work)
    for state in follow(studio.jobs, job.id, progress):
        yield slider_value(state), (state.images[0] if state.images else None), info_text(state), state.id


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
                         "scale": scale},
          outputs=[slider, download, info, job], api_name="upscale", concurrency_id="device", concurrency_limit=1)
    gr.on([image.change, picker.change, tile.change, overlap.change, steps.change, scale.change],
          partial(estimate, studio),
          inputs_kwargs={"image": image, "model": picker, "tile": tile, "overlap": overlap, "steps": steps,
                         "scale": scale},
          outputs=[plan_text], api_visibility="private", concurrency_limit=None, show_progress="hidden")
    row.interrupt.click(partial(interrupt, studio), inputs=[job], outputs=None, api_visibility="private",
                        queue=False)
    refresh.click(partial(picker_update, studio, TAB), inputs=[picker], outputs=[picker],
                  api_visibility="private", queue=False)
    demo.load(partial(resume, studio), inputs=[job], outputs=[slider, download, info], api_visibility="private")
    return SimpleNamespace(picker=picker, image=image, slider=slider, download=download)
