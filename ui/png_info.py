"""The PNG info tab: drop an image made by this app (or by AUTOMATIC1111) to read its parameters,
and send them to Text to image."""
from functools import partial
from types import SimpleNamespace

import gradio as gr
from PIL import Image

from core import pipelines
from ui.errors import user_errors
from ui.images import open_image
from ui.studio import Studio


@user_errors
def png_info(studio: Studio, image: str | None = None) -> tuple[str, dict]:
    """The generation parameters stored in a PNG: (the "parameters" text, the parsed fields)."""
    open_image(image, studio.settings.max_side)          # size / bomb / readability checks first
    with Image.open(image) as im:
        text = im.info.get("parameters")
    if not text:
        raise ValueError("This image carries no generation parameters (no PNG 'parameters' text): "
                         "it was not made by LDM Studio or AUTOMATIC1111, or they were stripped.")
    return str(text), pipelines.parse_infotext(str(text))


def to_txt2img(params: dict | None) -> list:
    """Parsed parameters -> values for Text to image (prompt, negative, sampler, karras, steps, CFG,
    seed, width, height); fields the image does not have are left unchanged."""
    params = params or {}
    keys = ("prompt", "negative_prompt", "sampler", "karras", "steps", "guidance_scale", "seed", "width", "height")
    return [params[k] if k in params else gr.skip() for k in keys]


def build(studio: Studio) -> SimpleNamespace:
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="filepath", image_mode=None, label="PNG made by LDM Studio or AUTOMATIC1111",
                             sources=["upload", "clipboard"], height=360, elem_classes=["ldm-png-info-image"])
        with gr.Column():
            text = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_classes=["ldm-png-info-text"])
            fields = gr.JSON(label="Fields")
            send = gr.Button("Send to text to image")
    image.upload(partial(png_info, studio), inputs=[image], outputs=[text, fields], api_name="png_info",
                 concurrency_limit=None)
    return SimpleNamespace(image=image, text=text, fields=fields, send=send)
