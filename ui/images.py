"""Images in and out of the app: upload components that refuse non-pictures in words, uploads
opened safely, masks read off the drawing canvas, results saved under outputs/<date>/ without ever
overwriting a file.

No model math here: only decoding, size checks, and the PNG files people keep.
"""
import time
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core import pipelines
from core.pipelines.outputs import reserve_output
from core.samplers import SamplingInterrupted
from ui.jobs import JobInterrupted


def open_image(path: str | Path | Image.Image | None, max_side: int, what: str = "image") -> Image.Image:
    """An uploaded image as RGB, refused in plain words when it is missing, unreadable or too large.

    The size is read from the header before any pixel is decoded (a decompression bomb is a small
    file declaring a huge canvas); PIL.Image.MAX_IMAGE_PIXELS, set by the app, is the second guard.
    """
    if path is None or path == "":
        raise ValueError(f"Upload an {what} first.")
    try:
        im = path if isinstance(path, Image.Image) else Image.open(path)
        width, height = im.size
        if width > max_side or height > max_side:
            raise ValueError(f"The {what} is {width}x{height} pixels; this app accepts at most {max_side} "
                             f"on a side (start it with --max-size to change that).")
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
        return im.convert("RGB")
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(refusal(err, what)) from None


def refusal(err: Exception, what: str = "image") -> str:
    """Why an upload cannot be used, in words (never the server's temporary path)."""
    if isinstance(err, Image.DecompressionBombError):
        return (f"The {what} declares more pixels than this app accepts (--max-size); it was refused "
                "before decoding.")
    if isinstance(err, UnidentifiedImageError):
        return f"The {what} could not be read as an image: the file is not a picture (PNG, JPEG, WebP ...)."
    return f"The {what} could not be read as an image ({type(err).__name__}: the file is damaged or not a picture)."


def _refusing(preprocess, payload):
    """Gradio's preprocessing of an upload, with a file that is not a picture refused in words."""
    try:
        return preprocess(payload)
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise gr.Error(refusal(err, "uploaded file"), print_exception=False) from None


def image_input(**kwargs) -> gr.Image:
    """gr.Image whose upload, when it is not a picture, is refused in one sentence (Gradio's own
    preprocessing answers "Could not preprocess input component ... UnidentifiedImageError" with a
    temporary path). The instance's preprocess is wrapped: a subclass would make Gradio write a
    .pyi file beside this module at import."""
    return _refuse_non_pictures(gr.Image(**kwargs))


def image_mask_input(**kwargs) -> gr.ImageMask:
    """gr.ImageMask with image_input's refusal of files that are not pictures."""
    return _refuse_non_pictures(gr.ImageMask(**kwargs))


def _refuse_non_pictures(component):
    preprocess = component.preprocess
    component.preprocess = lambda payload: _refusing(preprocess, payload)
    return component


def mask_from_layers(layers: list, size: tuple[int, int]) -> Image.Image:
    """The drawn mask (white = repaint) as an "L" image of `size`: the union of the strokes, which
    gr.ImageMask hands over in the alpha channel of its layers."""
    mask = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers or []:
        if layer is None:
            continue
        layer = layer if isinstance(layer, Image.Image) else Image.open(layer)
        alpha = layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.NEAREST)
        mask |= np.asarray(alpha) > 0
    return Image.fromarray((mask * 255).astype(np.uint8), mode="L")


def mask_from_upload(image: Image.Image, size: tuple[int, int], binary: bool = True) -> Image.Image:
    """An uploaded mask (white = repaint; a transparent PNG counts its opaque pixels) as "L",
    binarised at 128 unless `binary` is False (soft inpainting keeps its greys)."""
    if "A" in image.getbands() and image.getchannel("A").getextrema()[0] < 255:
        gray = image.getchannel("A")
    else:
        gray = image.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.NEAREST)
    return gray.point(lambda v: 255 if v >= 128 else 0) if binary else gray


def save_output(image: Image.Image, infotext: str, outputs_dir: Path, seed: int | None = None) -> Path:
    """Save under outputs/<YYYY-MM-DD>/NNNNN-<seed>.png with the parameters in the PNG; the name is
    the next free number, created exclusively (core.pipelines.outputs), so nothing is overwritten."""
    path = reserve_output(Path(outputs_dir).resolve() / time.strftime("%Y-%m-%d"), seed)
    pipelines.save_png(image, path, infotext)
    return path


def save_images(images: list[Image.Image], outputs_dir: Path) -> list[tuple[str, str]]:
    """Save a pipeline's images (their parameters ride in image.info) -> [(path, infotext), ...]."""
    saved = []
    for image in images:
        text = image.info.get("parameters", "")
        seed = (image.info.get("ldm_studio") or {}).get("seed")
        saved.append((str(save_output(image, text, outputs_dir, seed)), text))
    return saved


def run_and_save(generate, outputs_dir: Path, job_folder: Path) -> list[tuple[str, str]]:
    """Run `generate()` (a core.pipelines call returning images) and save what it made. When it is
    interrupted, the images finished before the stop are saved as usual, the interrupted ones (the
    model's estimate at that step) in the job's folder, and JobInterrupted carries them to the job."""
    try:
        images = generate()
    except SamplingInterrupted as stop:
        note = f"Interrupted at step {stop.step} of {stop.total}"
        partial = []
        for k, image in enumerate(stop.partial):
            path = Path(job_folder) / f"partial-{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            partial.append((str(path), f"{note}: the model's estimate of the clean image at that step "
                                       "(not saved in outputs/)."))
        raise JobInterrupted(save_images(stop.images, outputs_dir) + partial, note.lower()) from None
    return save_images(images, outputs_dir)
