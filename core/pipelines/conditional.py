"""Sampling for the models that take no text: unconditional, class-conditional, layout-conditional
and semantic-synthesis LDMs (Rombach et al. 2022, Sec. 4.1, 4.3.1, 4.3.2 and Fig. 8)."""

import warnings

from core.capabilities import capabilities
from core.pipelines.conditioning import class_conditioning, layout_conditioning, layout_encoder
from core.pipelines.defaults import check_size
from core.pipelines.generation import resolve_seeds
from core.pipelines.layout_text import SHAPES_WORLD_NAMES, layout_vocabulary, parse_layout
from core.pipelines.segmentation import one_hot_segmentation, segmentation_record
from core.pipelines.txt2img import sample_images
from core.world import PALETTE, SHAPES

SHAPES_CLASSES = len(SHAPES) * len(PALETTE)         # shared/shapes_world.md: shape_index * 6 + colour_index


def class_count(model_or_config) -> int:
    """The classes a class-conditional model (or its config) can be asked for: its embedding rows
    less the null class (cin256-v2: 1000 of 1001; the shapes class model: 24 of 25)."""
    capabilities(model_or_config).require("class")
    embedder = getattr(model_or_config, "config", model_or_config).cond_stage
    return embedder.n_classes - embedder.null_class_present


def class_names(model_or_config) -> tuple[str, ...] | None:
    """The classes' names: the shapes world's 24 ("circle red", "circle green", ... "star orange")
    for a model of 24 classes, the count our shapes class model has; None (numbers only) otherwise."""
    if class_count(model_or_config) != SHAPES_CLASSES:
        return None
    return SHAPES_WORLD_NAMES                       # the same names the layout models read


def sample_unconditional(m, n=1, steps=None, sampler=None, seed=None, width=None, height=None, *,
                         guidance_scale=None, **options):
    """n samples of an unconditional model (CelebA-HQ, LSUN ... LDMs), one PIL image per seed.
    guidance_scale: None or 1 (there is nothing to guide towards). options: batch_size, eta, karras,
    vae_tile, callback, should_stop, output, native_tiling (as txt2img)."""
    capabilities(m).require("unconditional")
    if guidance_scale not in (None, 1, 1.0):
        raise ValueError(f"an unconditional model has nothing to guide towards, so guidance_scale must be 1 "
                         f"(or left out); got {guidance_scale!r}.")
    return sample_images(m, "unconditional", None, None, {}, n, seed, steps, sampler, None, width, height, **options)


def sample_class(m, class_label, n=1, guidance_scale=None, steps=None, sampler=None, seed=None,
                 width=None, height=None, **options):
    """n samples of class `class_label` (an int in [0, class_count(m))) from a class-conditional model;
    guidance is against the null class when the model has one (cin256-v2, our shapes class model),
    otherwise it runs unguided. Recorded as "Class: N (name)" when the class has a name (class_names)."""
    capabilities(m).require("class")
    cond, uncond = class_conditioning(m, class_label)
    names = class_names(m)
    extra = {"class_label": int(class_label), "class_name": names[int(class_label)] if names else None}
    return sample_images(m, "class", cond, uncond, extra, n, seed, steps, sampler, guidance_scale, width, height,
                         **options)


def sample_layout(m, layout, n=1, guidance_scale=None, steps=None, sampler=None, seed=None, width=None,
                  height=None, background=None, **options):
    """n samples of a layout: a list of (class_id, x0, y0, x1, y1) boxes with coordinates in [0, 1],
    or the same as text, one object a line ("circle red 0.02 0.02 0.32 0.32", layout_text.py) or JSON;
    checked by parse_layout. background: for a model trained with it, "white", "black", "gray", or
    None / "any": one drawn from the (first) seed; it goes ahead of the objects, its box the whole
    image. The unconditional half of guidance is the empty layout. Larger than trained with
    native_tiling, each tile is conditioned on its own boxes (layout_encoder) and the background."""
    # 1. The layout, checked against the model's vocabulary; the background, picked from the seed if asked.
    vocabulary = layout_vocabulary(m)                                # requires a layout model
    boxes = parse_layout(layout, vocabulary)
    seed = resolve_seeds(seed, n)[0]
    picked = vocabulary.background(background, seed)
    off = vocabulary.off_grid(boxes)
    if off:
        warnings.warn("this layout model learned objects only at the 9 cell centres (1/6, 1/2, 5/6 of each side) "
                      "with square boxes of side 0.2 (small) or 0.3 (large), so it may ignore " + "; ".join(off),
                      stacklevel=2)
    # 2. Condition: the background token first, then the objects; the empty layout for guidance.
    cond, uncond = layout_conditioning(m, ([(picked[0], 0.0, 0.0, 1.0, 1.0)] if picked else []) + boxes)
    extra = {"layout": [[c, *box] for c, *box in boxes], "background": picked[1] if picked else None}
    # 3. Noise -> latents -> images, one seed each.
    return sample_images(m, "layout", cond, uncond, extra, n, seed, steps, sampler, guidance_scale,
                         width, height, tile_cond=layout_encoder(m), **options)


def sample_semantic(m, segmentation, n=1, steps=None, sampler=None, seed=None, **options):
    """n images of a segmentation map from a semantic-synthesis model (CompVis' semantic_synthesis256 /
    512: z ++ SpatialRescaler(one-hot map)), at the map's size, any multiple of the model's grid.

    segmentation: a label-map PNG (path or PIL image, mode L / P / I: pixel value = class id), an (H, W)
        array or tensor of class ids, or a one-hot (C, H, W) map with C = the model's classes; label maps
        are one-hot encoded as the reference's data does (np.eye(C)[labels]).
    No guidance: the map is concatenated to z and there is no unconditional branch. options: as txt2img
    (batch_size, eta, karras, scheduler, vae_tile, callback, should_stop, output).
    """
    # 1. The model can do it; the map, one-hot, at a size on the model's grid.
    capabilities(m).require("semantic")
    one_hot = one_hot_segmentation(segmentation, m.config.cond_stage.in_channels)     # (1, C, H, W)
    height, width = one_hot.shape[-2:]
    try:
        check_size(m, width, height, "semantic synthesis")
    except ValueError as err:
        raise ValueError(f"the segmentation map is {width}x{height} (width x height): {err}") from None
    # 2. Condition: the map resized to the latent grid and channel-mapped, concatenated to z at every step.
    c = m.get_learned_conditioning(one_hot.to(m.device)).to(m.dtype)                 # (1, C', H/f, W/f)
    # 3-5. Noise -> latents -> images, one seed each, recording which map made them.
    return sample_images(m, "semantic", {"c_concat": [c]}, None, segmentation_record(one_hot), n, seed, steps,
                         sampler, None, width, height, **options)
