"""Controls the generation tabs share: the model picker and the sampling settings.

A number left at 0 (or None from the API) means "the model's default" (its file's
ldm_studio_defaults, else the reference defaults of its task): that is also what an API call that
leaves the parameter out gets. When a
model is picked (and when the page opens) the fields are filled with that model's defaults, so
what is shown is what runs.

Schedule type (A1111's "Schedule type" beside the sampler) and the old Karras checkbox: one rule,
in `sampling_options`. The schedule type is the setting; "Automatic" (or empty) is the model's
default (its file's `karras` default, else the sampler's own sigmas). `karras=True` is the old
spelling of "Karras" and counts only while the schedule type is Automatic, as does a sampler name
ending in " Karras"; any other schedule type wins over both. Tabs built with
`sampling_controls(schedule_type=True)` show the dropdown instead of the checkbox and keep
`karras` as a hidden input, so API clients that send it keep working.
"""
import math
from dataclasses import dataclass
from functools import partial

import gradio as gr

from core import pipelines
from core.samplers import SAMPLER_DISPLAY_NAMES, SCHEDULE_DISPLAY_NAMES, SIGMA_SAMPLERS, sampler_name, scheduler_name
from ui.studio import Studio

SAMPLER_CHOICES = [(label, key) for key, label in SAMPLER_DISPLAY_NAMES.items()]
SCHEDULE_CHOICES = list(SCHEDULE_DISPLAY_NAMES.values())          # A1111's names: "Automatic", "Karras", ...
AUTOMATIC, KARRAS = SCHEDULE_DISPLAY_NAMES["automatic"], SCHEDULE_DISPLAY_NAMES["karras"]
MAX_BATCH = 8
MAX_CLIP_SKIP = 12                      # A1111's slider
CLIP_SKIP_INFO = "1 = the text encoder's last layer; N stops N - 1 layers earlier (CLIP / OpenCLIP only)"


def name_dropdown(*args, **kwargs) -> gr.Dropdown:
    """A Dropdown that takes names beyond its choices and whose API schema says "a string" rather
    than listing the choices of start-up: the model pickers (a model exported after start-up is
    not in them) and the sampler (display names such as "DPM++ 2M Karras" as well as the keys).
    The handler checks the name and lists the valid ones."""
    dropdown = gr.Dropdown(*args, allow_custom_value=True, **kwargs)
    dropdown.api_info = lambda: {"type": "string"}
    return dropdown


def model_picker(studio: Studio, tab: str, label: str = "Model") -> tuple[gr.Dropdown, gr.Button]:
    choices = studio.models.choices(tab)
    with gr.Row(equal_height=True):
        picker = name_dropdown(choices=choices, value=choices[0][1] if choices else None, label=label, scale=5,
                               info=None if choices else "none found: see the note at the top of the page",
                               elem_classes=["ldm-model-picker"])
        refresh = gr.Button("↻", scale=0, min_width=44, size="sm", elem_classes=["ldm-refresh"])
    return picker, refresh


def picker_update(studio: Studio, tab: str, current: str | None) -> dict:
    """The picker re-read from weights/ (keeping the current choice when it is still there)."""
    choices = studio.models.choices(tab)
    values = [v for _, v in choices]
    return gr.update(choices=choices, value=current if current in values else (values[0] if values else None))


ADDED_INPUTS = ("scheduler", "clip_skip")      # API parameters newer than the endpoints: kept last


@dataclass
class SamplingControls:
    sampler: gr.Dropdown
    karras: gr.Checkbox
    steps: gr.Number
    guidance_scale: gr.Number
    seed: gr.Number
    random_seed: gr.Button
    reuse_seed: gr.Button
    width: gr.Number | None = None
    height: gr.Number | None = None
    batch_count: gr.Slider | None = None
    batch_size: gr.Slider | None = None
    native_tiling: gr.Checkbox | None = None
    scheduler: gr.Dropdown | None = None        # "Schedule type" (then `karras` is a hidden API-only input)
    clip_skip: gr.Slider | None = None

    def inputs(self) -> dict:
        """Handler parameter name -> component, for inputs_kwargs."""
        names = ("sampler", "karras", "steps", "guidance_scale", "seed", "width", "height", "batch_count",
                 "batch_size", "native_tiling", "scheduler", "clip_skip")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @staticmethod
    def newest_last(inputs: dict) -> dict:
        """An endpoint's inputs_kwargs with the parameters added later (scheduler, clip_skip) moved to
        the end, so API clients that pass the older ones by position keep their meaning."""
        return {**{k: v for k, v in inputs.items() if k not in ADDED_INPUTS},
                **{k: inputs[k] for k in ADDED_INPUTS if k in inputs}}

    def receives(self) -> dict:
        """Field name (ui.send.FIELDS) -> component, for "Send to" (the schedule type rather than the
        hidden Karras flag when the tab has one)."""
        names = ("sampler", "karras" if self.scheduler is None else "scheduler", "steps", "guidance_scale", "seed",
                 "width", "height", "native_tiling", "clip_skip")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def default_outputs(self) -> list:
        """The components `model_defaults` fills, in its order."""
        return [self.sampler, self.karras if self.scheduler is None else self.scheduler, self.steps,
                self.guidance_scale] + [c for c in (self.clip_skip, self.width, self.height) if c is not None]


def sampling_controls(size: bool = True, batch: bool = True, size_zero: str = "model default",
                      tiling: bool = False, *, schedule_type: bool = False,
                      clip_skip: bool = False) -> SamplingControls:
    """The sampling fields; width/height (when `size`) say what 0 means with `size_zero`; `tiling`:
    the "tile above the native size" checkbox of noise-to-image tabs (core/pipelines/tiling.py).
    `schedule_type`: A1111's "Schedule type" dropdown instead of the Karras checkbox (the handler
    then takes `scheduler`); `clip_skip`: A1111's "Clip skip" slider (the handler takes `clip_skip`)."""
    scheduler = skip = None
    with gr.Row():
        sampler = name_dropdown(SAMPLER_CHOICES, value=None, label="Sampling method", scale=3,
                                info="empty: the model's default")
        if schedule_type:
            scheduler = name_dropdown(SCHEDULE_CHOICES, value=AUTOMATIC, label="Schedule type", scale=2,
                                      info="sigma samplers; Automatic: the model's default",
                                      elem_classes=["ldm-schedule-type"])
        karras = gr.Checkbox(value=False, label="Karras schedule", scale=1, visible=not schedule_type,
                             info="sigma samplers (Euler, DPM++ ...)")
    with gr.Row():
        steps = gr.Number(None, label="Sampling steps (0: model default)", precision=0)
        guidance_scale = gr.Number(None, label="CFG scale (0: model default)", step=0.5)
    if clip_skip:
        skip = gr.Slider(1, MAX_CLIP_SKIP, value=1, step=1, label="Clip skip", info=CLIP_SKIP_INFO,
                         elem_classes=["ldm-clip-skip"])
    width = height = batch_count = batch_size = native_tiling = None
    if size:
        with gr.Row():
            width = gr.Number(None, label=f"Width (0: {size_zero})", precision=0, step=8)
            height = gr.Number(None, label=f"Height (0: {size_zero})", precision=0, step=8)
    if tiling:
        native_tiling = gr.Checkbox(False, label="Tile above the model's native size",
                                    info="larger than trained: the whole image denoised in overlapping tiles of the "
                                         "training size, blended every step (off: in one piece)",
                                    elem_classes=["ldm-native-tiling"])
    with gr.Row(equal_height=True):
        seed = gr.Number(-1, label="Seed (-1: random)", precision=0, scale=4)
        random_seed = gr.Button("random", scale=1, min_width=70, size="sm", elem_classes=["ldm-random-seed"])
        reuse_seed = gr.Button("reuse last", scale=1, min_width=70, size="sm", elem_classes=["ldm-reuse-seed"])
    if batch:
        with gr.Row():
            batch_count = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Batch count",
                                    info="batches, one after another")
            batch_size = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Batch size",
                                   info="images per batch, in parallel (faster on a GPU)")
    controls = SamplingControls(sampler, karras, steps, guidance_scale, seed, random_seed, reuse_seed,
                                width, height, batch_count, batch_size, native_tiling, scheduler=scheduler,
                                clip_skip=skip)
    random_seed.click(lambda: -1, outputs=seed, queue=False, api_visibility="private")
    return controls


def model_defaults(studio: Studio, tab: str, model: str | None, with_size: bool = True,
                   schedule_type: bool = False, clip_skip: bool = False) -> list:
    """Values for SamplingControls.default_outputs(): the picked model's defaults
    (core.pipelines.model_defaults, read from its file's header), so what is shown is what runs;
    empty when no model is there. The schedule type shows "Karras" for a model whose default is
    Karras sigmas; the clip skip slider goes back to 1, usable only where the model's text encoder
    takes it (core.capabilities: max_clip_skip)."""
    try:
        entry = studio.models.entry(tab, model)
    except ValueError:
        entry = None
    d = entry.defaults if entry is not None else None
    karras = bool(d and d.karras and d.sampler in SIGMA_SAMPLERS)
    values = [d and d.sampler, (KARRAS if karras else AUTOMATIC) if schedule_type else karras,
              d and d.steps, d and d.guidance_scale]
    if clip_skip:
        values.append(clip_skip_update(entry.caps if entry is not None else None))
    return values + ([d and d.width, d and d.height] if with_size else [])


def clip_skip_update(caps) -> dict:
    """The clip skip slider for a model: back to 1, and disabled with a note where it does not apply."""
    limit = min(caps.max_clip_skip, MAX_CLIP_SKIP) if caps is not None else MAX_CLIP_SKIP
    if caps is None or limit > 1:
        return gr.update(value=1, maximum=max(limit, 2), interactive=True, info=CLIP_SKIP_INFO)
    why = "its CLIP text encoder has no earlier layer to stop at" if caps.conditioner in ("clip", "openclip") \
        else "its text encoder is not CLIP / OpenCLIP"
    return gr.update(value=1, interactive=False, info=f"does not apply to this model: {why}")


def check_batch(batch_count, batch_size=1) -> tuple[int, int]:
    """(images in all, images per UNet batch) from A1111's batch count x batch size."""
    count, size = int(batch_count or 1), int(batch_size or 1)
    for name, value in (("Batch count", count), ("Batch size", size)):
        if not 1 <= value <= MAX_BATCH:
            raise ValueError(f"{name} must be between 1 and {MAX_BATCH}; got {value}.")
    return count * size, size


def optional_int(value, name: str, maximum: int = 100_000) -> int | None:
    """A number field -> int; None for empty or 0 (the model's default / automatic); a ValueError in
    words for anything else that is not a whole number in [1, maximum]."""
    if value is None or value == "" or value == 0:
        return None
    number = float(value)
    if not number.is_integer() or not 1 <= number <= maximum:
        raise ValueError(f"{name} must be a whole number from 1 to {maximum} (0: automatic); got {value}.")
    return int(number)


def optional_float(value, name: str, maximum: float = 100.0) -> float | None:
    """A number field -> float; None for empty or 0 (the model's default)."""
    if value is None or value == "" or value == 0:
        return None
    if not 0 < float(value) <= maximum:
        raise ValueError(f"{name} must be between 0 and {maximum} (0: the model's default); got {value}.")
    return float(value)


def seed_value(seed) -> int | None:
    """-1 (or empty) -> None, which the pipelines turn into a fresh random seed they report back."""
    if seed is None or seed == "":
        return None
    number = float(seed)
    if not number.is_integer():
        raise ValueError(f"Seed must be a whole number (-1: random); got {seed}.")
    return None if number < 0 else int(number)


@dataclass
class PromptRow:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    generate: gr.Button
    interrupt: gr.Button


def prompt_row(button: str = "Generate", negative: bool = True) -> PromptRow:
    """Prompt and negative prompt beside Generate / Interrupt (Ctrl+Enter / Esc, see ui/keyboard.py)."""
    with gr.Row():
        with gr.Column(scale=5):
            prompt = gr.Textbox("", label="Prompt", lines=3, max_lines=8, elem_classes=["ldm-prompt"],
                                placeholder="What to draw (Ctrl+Enter generates, Esc interrupts)")
            negative_prompt = gr.Textbox("", label="Negative prompt", lines=1, max_lines=4, visible=negative,
                                         placeholder="What to avoid")
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button(button, variant="primary", size="lg", elem_classes=["ldm-generate"])
            interrupt = gr.Button("Interrupt", variant="stop", elem_classes=["ldm-interrupt"])
    return PromptRow(prompt, negative_prompt, generate, interrupt)


@dataclass
class Results:
    gallery: gr.Gallery
    info: gr.Textbox
    selected: gr.State          # index of the gallery image clicked last (for "send to")


def results_panel(label: str = "Images") -> Results:
    gallery = gr.Gallery(label=label, columns=2, height=420, object_fit="contain", format="png",
                         interactive=False, elem_classes=["ldm-gallery"])
    info = gr.Textbox(label="Parameters (also inside each PNG)", lines=3, max_lines=12, interactive=False,
                      elem_classes=["ldm-info"])
    selected = gr.State(0)

    def pick(evt: gr.SelectData) -> int:
        return evt.index

    gallery.select(pick, outputs=selected, queue=False, api_visibility="private")
    return Results(gallery, info, selected)


def results_with_sends() -> tuple[Results, gr.Button, gr.Button, gr.Button]:
    """The results panel of a noise-to-image tab with its "Send to" buttons under it (image to image,
    inpaint, upscale; wired in ui/send.py)."""
    results = results_panel()
    with gr.Row():
        to_img2img = gr.Button("Send to image to image", size="sm")
        to_inpaint = gr.Button("Send to inpaint", size="sm")
        to_upscale = gr.Button("Send to upscale", size="sm")
    return results, to_img2img, to_inpaint, to_upscale


def sampling_options(sampler, karras, steps, guidance_scale, seed, scheduler=None, clip_skip=None) -> dict:
    """The sampling keywords of core.pipelines from the shared controls (None = the model's default);
    `sampler` is a key ("dpmpp_2m") or a display name ("DPM++ 2M Karras", which also sets karras).
    `scheduler`: a schedule type (A1111's name or our key); empty or "Automatic" = the model's
    default, and only then do `karras` and a " Karras" sampler name count (the module's rule).
    `scheduler` / `clip_skip` are in the result only when given (not every pipeline takes them)."""
    sampler, named_karras = sampler_name(sampler) if sampler else (None, None)      # keys and display names
    schedule = schedule_key(scheduler)
    options = dict(sampler=sampler, karras=bool(named_karras or karras)
                   if sampler in SIGMA_SAMPLERS and schedule is None else None,
                   steps=optional_int(steps, "Sampling steps", maximum=1000),
                   guidance_scale=optional_float(guidance_scale, "CFG scale"), seed=seed_value(seed))
    if schedule is not None:
        options["scheduler"] = schedule
    if clip_skip is not None and clip_skip != "":
        options["clip_skip"] = clip_skip_value(clip_skip)
    return options


def schedule_key(name) -> str | None:
    """A schedule type from the field or the API -> our key; None for empty or "Automatic" (the
    model's default). An unknown name is a ValueError listing A1111's names."""
    if name is None or (isinstance(name, str) and name.strip().lower() in ("", "automatic")):
        return None
    try:
        return scheduler_name(name)
    except ValueError:
        raise ValueError(f"Unknown schedule type {name!r}; choose one of: {', '.join(SCHEDULE_CHOICES)}.") from None


def clip_skip_value(value) -> int:
    """A1111's clip skip from the slider or the API: a whole number >= 1 (1 = the last layer); the
    pipeline checks it against the model's text encoder."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not number.is_integer() or number < 1:
        raise ValueError(f"Clip skip must be a whole number >= 1 (1 = the text encoder's last layer); "
                         f"got {value!r}.")
    return int(number)


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


def wire_model_controls(studio: Studio, demo: gr.Blocks, tab: str, picker, refresh, controls, job,
                        with_size: bool = True) -> None:
    """Picking a model (or opening the page) fills the controls with its defaults; ↻ re-reads
    weights/; 'reuse last' puts back the last seed. Only the user's pick (.input) fills them: a
    "Send to" that sets the model and the settings together keeps the settings it sent."""
    fill = partial(model_defaults, studio, tab, with_size=with_size, schedule_type=controls.scheduler is not None,
                   clip_skip=controls.clip_skip is not None)
    picker.input(fill, inputs=[picker], outputs=controls.default_outputs(), api_visibility="private", queue=False)
    demo.load(fill, inputs=[picker], outputs=controls.default_outputs(), api_visibility="private", queue=False)
    refresh.click(partial(picker_update, studio, tab), inputs=[picker], outputs=[picker],
                  api_visibility="private", queue=False)
    controls.reuse_seed.click(partial(last_seed, studio), inputs=[job], outputs=[controls.seed],
                              api_visibility="private", queue=False)
