"""Sampling for the models that take no text: unconditional, class-conditional and layout-conditional
LDMs (Rombach et al. 2022, Sec. 4.1, 4.3.1 and Fig. 8)."""


from core.pipelines.conditioning import class_conditioning, layout_conditioning, require_kind
from core.pipelines.defaults import check_size, first_stage_factor, model_defaults
from core.pipelines.generation import (base_parameters, check_count, finish_plain, generate,
                                       resolve_seed, resolve_settings)
from core.samplers import sample


def _run(m, task, cond, uncond, n, seed, steps, sampler, guidance_scale, width, height, eta, karras,
         vae_tile, callback, should_stop, extra: dict):
    # 1. Defaults and checks.
    defaults = model_defaults(m)
    width, height = check_size(m, defaults.width if width is None else width,
                               defaults.height if height is None else height, task)
    settings = resolve_settings(defaults, sampler, karras, steps, guidance_scale, eta)
    if uncond is None and cond is not None and settings.guidance_scale != 1.0 and guidance_scale is not None:
        raise ValueError("this model has no unconditional embedding (no null class), so it cannot use "
                         "classifier-free guidance; use guidance_scale=1.")
    n, seed = check_count(n), resolve_seed(seed)
    f = first_stage_factor(m)
    shape = (1, m.config.channels, height // f, width // f)

    # 2. Sample, decode and record, one seed per image.
    def sample_one(i, seed_i, step_callback):
        return sample(m, cond, uncond, settings.guidance_scale, settings.steps, settings.sampler,
                      settings.eta, shape=shape, seed=seed_i, callback=step_callback,
                      karras=settings.karras, should_stop=should_stop)

    def params_for(i, seed_i):
        params = base_parameters(m, task, settings, seed_i, width, height)
        if uncond is None:
            params["guidance_scale"] = 1.0                  # what actually ran: no guidance
        return {**params, **extra}

    return generate(m, n, seed, sample_one, finish_plain(params_for), callback, vae_tile)


def sample_unconditional(m, n=1, steps=None, sampler=None, seed=None, width=None, height=None, *,
                         eta=None, karras=None, vae_tile=None, callback=None, should_stop=None) -> list:
    """n samples of an unconditional model (CelebA-HQ, LSUN ... LDMs), one PIL image per seed."""
    require_kind(m, ("none",), "sample_unconditional")
    return _run(m, "unconditional", None, None, n, seed, steps, sampler, None, width, height, eta, karras,
                vae_tile, callback, should_stop, {})


def sample_class(m, class_label, n=1, guidance_scale=None, steps=None, sampler=None, seed=None,
                 width=None, height=None, *, eta=None, karras=None, vae_tile=None, callback=None,
                 should_stop=None) -> list:
    """n samples of class `class_label` (an int) from a class-conditional model; guidance uses the
    null class when the model has one (cin256-v2), otherwise runs unguided."""
    require_kind(m, ("class",), "sample_class")
    cond, uncond = class_conditioning(m, class_label)
    return _run(m, "class", cond, uncond, n, seed, steps, sampler, guidance_scale, width, height, eta,
                karras, vae_tile, callback, should_stop, {"class_label": int(class_label)})


def sample_layout(m, layout, n=1, guidance_scale=None, steps=None, sampler=None, seed=None, width=None,
                  height=None, *, eta=None, karras=None, vae_tile=None, callback=None,
                  should_stop=None) -> list:
    """n samples of a layout, a list of (class_id, x0, y0, x1, y1) boxes with coordinates in [0, 1];
    the unconditional half of guidance is the empty layout."""
    require_kind(m, ("layout",), "sample_layout")
    cond, uncond = layout_conditioning(m, layout)
    boxes = [[int(b[0])] + [float(v) for v in b[1:]] for b in layout]
    return _run(m, "layout", cond, uncond, n, seed, steps, sampler, guidance_scale, width, height, eta,
                karras, vae_tile, callback, should_stop, {"layout": boxes})
