"""The PNG info tab: drop an image made by this app (or by AUTOMATIC1111) to read its parameters,
and send them (with the picture) to Text to image, Image to image, Inpaint or, for a class-conditional
or unconditional model's picture, Class / unconditional, for a layout model's, Layout to image (ui/send.py)."""
from functools import partial
from types import SimpleNamespace

import gradio as gr
from PIL import Image

from core import pipelines
from ui.errors import user_errors
from ui.images import image_input, open_image
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


def build(studio: Studio) -> SimpleNamespace:
    with gr.Row():
        with gr.Column():
            image = image_input(type="filepath", image_mode=None, label="PNG made by LDM Studio or AUTOMATIC1111",
                                sources=["upload", "clipboard"], height=360, elem_classes=["ldm-png-info-image"])
        with gr.Column():
            text = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_classes=["ldm-png-info-text"])
            fields = gr.JSON(label="Fields", elem_classes=["ldm-png-info-fields"])
            with gr.Row():
                send = gr.Button("Send to text to image")
                to_img2img = gr.Button("Send to image to image")
                to_inpaint = gr.Button("Send to inpaint")
                to_classgen = gr.Button("Send to class / unconditional")
                to_layout = gr.Button("Send to layout to image")
    # A new picture first clears what the last one said, so a file without parameters (or not an
    # image) never leaves another picture's settings to be sent; the error says why.
    image.clear(lambda: ("", None), outputs=[text, fields], api_visibility="private", queue=False)
    image.upload(lambda: ("", None), outputs=[text, fields], api_visibility="private", queue=False).then(
        partial(png_info, studio), inputs=[image], outputs=[text, fields], api_name="png_info",
        concurrency_limit=None)
    return SimpleNamespace(image=image, text=text, fields=fields, send=send, to_img2img=to_img2img,
                           to_inpaint=to_inpaint, to_classgen=to_classgen,
                           to_layout=to_layout)
