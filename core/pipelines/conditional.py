"""Sampling for the models that take no text: unconditional, class-conditional, layout-conditional
and semantic-synthesis LDMs (Rombach et al. 2022, Sec. 4.1, 4.3.1, 4.3.2 and Fig. 8)."""

from core.capabilities import capabilities
from core.pipelines.conditioning import class_conditioning, layout_conditioning
from core.pipelines.defaults import check_size
from core.pipelines.segmentation import one_hot_segmentation, segmentation_record
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
    """n samples of a layout, a list of (class_id, x0, y0, x1, y1) boxes with coordinates in [0, 1];
    the unconditional half of guidance is the empty layout."""
    capabilities(m).require("layout")
    cond, uncond = layout_conditioning(m, layout)
    boxes = [[int(b[0])] + [float(v) for v in b[1:]] for b in layout]
    return sample_images(m, "layout", cond, uncond, {"layout": boxes}, n, seed, steps, sampler, guidance_scale,
                   width, height, **options)


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
