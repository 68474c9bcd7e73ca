"""Sampling for the models that take no text: unconditional, class-conditional and layout-conditional
LDMs (Rombach et al. 2022, Sec. 4.1, 4.3.1 and Fig. 8)."""

from core.capabilities import capabilities
from core.pipelines.conditioning import class_conditioning, layout_conditioning
from core.pipelines.layout_text import layout_vocabulary, parse_layout
from core.pipelines.txt2img import sample_images


def sample_unconditional(m, n=1, steps=None, sampler=None, seed=None, width=None, height=None, **options):
    """n samples of an unconditional model (CelebA-HQ, LSUN ... LDMs), one PIL image per seed.
    options: batch_size, eta, karras, vae_tile, callback, should_stop, output (as txt2img)."""
    capabilities(m).require("unconditional")
    return sample_images(m, "unconditional", None, None, {}, n, seed, steps, sampler, None, width, height, **options)


def sample_class(m, class_label, n=1, guidance_scale=None, steps=None, sampler=None, seed=None,
                 width=None, height=None, **options):
    """n samples of class `class_label` (an int) from a class-conditional model; guidance uses the
    null class when the model has one (cin256-v2), otherwise runs unguided."""
    capabilities(m).require("class")
    cond, uncond = class_conditioning(m, class_label)
    return sample_images(m, "class", cond, uncond, {"class_label": int(class_label)}, n, seed, steps,
                         sampler, guidance_scale, width, height, **options)


def sample_layout(m, layout, n=1, guidance_scale=None, steps=None, sampler=None, seed=None, width=None,
                  height=None, **options):
    """n samples of a layout: a list of (class_id, x0, y0, x1, y1) boxes with coordinates in [0, 1],
    or the same as text, one object a line ("circle red 0.1 0.1 0.4 0.4", layout_text.py) or JSON;
    checked by parse_layout. The unconditional half of guidance is the empty layout."""
    boxes = parse_layout(layout, layout_vocabulary(m))             # requires a layout model
    cond, uncond = layout_conditioning(m, boxes)
    recorded = [[c, *box] for c, *box in boxes]
    return sample_images(m, "layout", cond, uncond, {"layout": recorded}, n, seed, steps, sampler, guidance_scale,
                         width, height, **options)
