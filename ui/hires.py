"""The Text to image tab's "Hires. fix" group (AUTOMATIC1111's): a second image-to-image pass at a
larger size, with the upscaler picked among the latent ones, Lanczos / Nearest and our own
super-resolution models in weights/ (core/pipelines/hires.py does the work)."""
from dataclasses import dataclass

import gradio as gr

from core.pipelines.hires import IMAGE_UPSCALERS, LATENT_UPSCALERS, SR_MODEL, HiresSettings
from ui.controls import optional_int
from ui.studio import Studio

MODEL_PREFIX = "model:"                 # an upscaler value naming an SR model file in weights/


@dataclass
class HiresControls:
    enable_hr: gr.Checkbox
    hr_upscaler: gr.Dropdown
    hr_scale: gr.Slider
    hr_steps: gr.Number
    denoising_strength: gr.Slider
    hr_resize_x: gr.Number
    hr_resize_y: gr.Number

    def inputs(self) -> dict:
        return dict(vars(self))


def upscaler_choices(studio: Studio) -> list[tuple[str, str]]:
    """Latent upscalers, Lanczos / Nearest, then each super-resolution model in weights/."""
    names = [(name, name) for name in (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)]
    return names + [(f"{e.label} (diffusion super-resolution)", MODEL_PREFIX + e.name)
                    for e in studio.models.for_tab("upscale")]


def hires_controls(studio: Studio) -> HiresControls:
    with gr.Accordion("Hires. fix", open=False, elem_classes=["ldm-hires"]):
        enable_hr = gr.Checkbox(False, label="Hires. fix: redraw at a larger size (a second img2img pass)")
        with gr.Row():
            hr_upscaler = gr.Dropdown(upscaler_choices(studio), value="Latent", label="Upscaler", scale=2)
            hr_scale = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by", scale=2)
        with gr.Row():
            hr_steps = gr.Number(0, label="Hires steps (0: as the first pass)", precision=0)
            denoising_strength = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="Denoising strength")
        with gr.Row():
            hr_resize_x = gr.Number(0, label="Resize width to (0: by the scale)", precision=0)
            hr_resize_y = gr.Number(0, label="Resize height to (0: by the scale)", precision=0)
    return HiresControls(enable_hr, hr_upscaler, hr_scale, hr_steps, denoising_strength, hr_resize_x, hr_resize_y)


def hires_request(studio: Studio, base: tuple[int, int], enable_hr, hr_upscaler, hr_scale, hr_steps,
                  denoising_strength, hr_resize_x, hr_resize_y, hr_prompt="", hr_negative_prompt="",
                  hr_sampler=None):
    """(HiresSettings, the SR model's entry or None) from the tab's fields or A1111's API names, for a
    first pass of `base` (width, height); (None, None) when the hires fix is off. Checked here,
    --max-size included, before any work starts."""
    if not enable_hr:
        return None, None
    upscaler, entry = hr_upscaler or "Latent", None
    if upscaler.startswith(MODEL_PREFIX):
        entry, upscaler = studio.models.entry("upscale", upscaler[len(MODEL_PREFIX):]), SR_MODEL
    settings = HiresSettings(float(hr_scale or 2.0), optional_int(hr_resize_x, "Resize width to"),
                             optional_int(hr_resize_y, "Resize height to"), upscaler,
                             optional_int(hr_steps, "Hires steps", maximum=1000), float(denoising_strength),
                             hr_prompt or None, hr_negative_prompt or None, hr_sampler or None)
    width, height = settings.target(*base)
    if max(width, height) > studio.settings.max_side:
        raise ValueError(f"The hires size would be {width}x{height} px; this app makes at most "
                         f"{studio.settings.max_side} per side (--max-size). Lower 'Upscale by' or the size.")
    return settings, entry
