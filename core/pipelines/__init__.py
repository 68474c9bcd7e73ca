"""Pipelines: everything a user does with a loaded model, as numbered steps that return data.

    from core import load_model, pipelines
    m = load_model("weights/shapes-txt2img.safetensors")
    images = pipelines.txt2img(m, "a large red circle in the center on a white background", seed=1)
    images[0].info["parameters"]          # AUTOMATIC1111's infotext; info["ldm_studio"]: the same as a dict
    pipelines.save_png(images[0], "out.png")
    pipelines.read_infotext("out.png")    # -> {"prompt": ..., "steps": 50, "seed": 1, "width": 64, ...}

Every pipeline returns PIL images that carry their parameters, takes `callback(Progress)` (with a
cheap `.preview()`) and `should_stop` (a threading.Event): a stopped run raises
core.samplers.SamplingInterrupted whose `.images` holds the images finished before the stop.
Bad input raises ValueError with a message that says what to do.

Files: txt2img.py, img2img.py, inpaint.py, upscale.py, conditional.py (unconditional / class /
layout); generation.py (settings, seeds, the n-image loop), conditioning.py, defaults.py;
images.py, masks.py, color.py, infotext.py, progress.py; vae.py, tiled_vae.py, tiled_unet.py,
tiles.py, memory.py (tiling and memory planning).
"""
from core.pipelines.conditional import sample_class, sample_layout, sample_unconditional
from core.pipelines.defaults import Defaults, model_defaults, size_multiple
from core.pipelines.images import load_image, load_mask
from core.pipelines.img2img import img2img
from core.pipelines.infotext import infotext, parse_infotext, read_infotext, save_png
from core.pipelines.inpaint import inpaint
from core.pipelines.progress import Progress
from core.pipelines.txt2img import txt2img
from core.pipelines.upscale import upscale
from core.samplers import SamplingInterrupted

__all__ = ["txt2img", "img2img", "inpaint", "upscale", "sample_unconditional", "sample_class",
           "sample_layout", "read_infotext", "parse_infotext", "infotext", "save_png", "load_image",
           "load_mask", "Progress", "SamplingInterrupted", "Defaults", "model_defaults", "size_multiple"]
