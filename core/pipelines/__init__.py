"""Pipelines: everything a user does with a loaded model, as numbered steps that return data.

    from core import load_model, pipelines
    m = load_model("weights/shapes-txt2img.safetensors")
    images = pipelines.txt2img(m, "a large red circle in the center on a white background", seed=1)
    images[0].info["parameters"]          # AUTOMATIC1111's infotext; info["ldm_studio"]: the same as a dict
    pipelines.save_png(images[0], "out.png")
    pipelines.read_infotext("out.png")    # -> {"prompt": ..., "steps": 50, "seed": 1, "width": 64, ...}

The flow of every pipeline (README.md in this folder):
    1. resolve   capabilities(m).require(task); SamplingSettings, seeds, sizes, tile plans: frozen,
                 checked once (ValueError with what to do)
    2. condition c, u for guidance (conditioning.py); dense inputs encoded (vae.py)
    3. denoise   denoise.py: ONE latent-level core over a composed denoiser (network -> wrap, e.g.
                 tiling.py -> classifier-free guidance -> core.samplers.sample_denoiser)
    4. decode    vae.py (tiled when large, fp16-safe)
    5. record    the parameters on each image (infotext.py); output="latent" stops before 4

Every pipeline takes `callback(Progress)` (with a cheap `.preview()`) and `should_stop` (a
threading.Event): a stopped run raises core.samplers.SamplingInterrupted with `.images` (the
images finished before the stop) and `.partial` (the interrupted ones, decoded from their latest
estimate). n images run in UNet batches of `batch_size`; image i depends only on its seed.

Files: txt2img.py (and the generic noise -> image pipeline), hires.py (hires fix), img2img.py, inpaint.py,
outpaint.py, upscale.py, conditional.py (unconditional / class / layout / semantic), layout_text.py
(layouts as text), segmentation.py;
denoise.py, tiling.py, generation.py (seeds,
decode, record), conditioning.py, defaults.py; images.py, masks.py, color.py, infotext.py,
progress.py; vae.py, tiled_vae.py, tiles.py, memory.py.
"""
from core.capabilities import Capabilities, capabilities
from core.pipelines.conditional import sample_class, sample_layout, sample_semantic, sample_unconditional
from core.pipelines.defaults import Defaults, model_defaults, size_multiple
from core.pipelines.denoise import denoise, denoise_batches
from core.pipelines.hires import HiresSettings, txt2img_hires
from core.pipelines.images import RESIZE_MODES, load_image, load_mask, resize_image
from core.pipelines.img2img import img2img
from core.pipelines.infotext import infotext, parse_infotext, read_infotext, save_png
from core.pipelines.inpaint import inpaint
from core.pipelines.layout_text import LayoutVocabulary, format_layout, layout_vocabulary, parse_layout
from core.pipelines.outpaint import outpaint
from core.pipelines.progress import Progress
from core.pipelines.txt2img import txt2img
from core.pipelines.upscale import UpscalePlan, lanczos, plan_upscale, upscale
from core.samplers import SamplingInterrupted, SamplingSettings

__all__ = ["txt2img", "txt2img_hires", "HiresSettings", "img2img", "inpaint", "outpaint", "upscale", "lanczos",
           "sample_unconditional", "sample_class", "sample_layout", "sample_semantic", "denoise", "denoise_batches",
           "plan_upscale",
           "UpscalePlan", "SamplingSettings",
           "capabilities", "Capabilities", "read_infotext", "parse_infotext", "infotext", "save_png",
           "load_image", "load_mask", "resize_image", "RESIZE_MODES", "Progress", "SamplingInterrupted",
           "Defaults", "model_defaults", "size_multiple",
           "parse_layout", "format_layout", "layout_vocabulary", "LayoutVocabulary"]
