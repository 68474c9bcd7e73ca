"""Text to image (Rombach et al. 2022, Sec. 4.3): noise -> latent by the sampler under the prompt's
guidance -> image by the decoder."""

from core.pipelines.conditioning import require_kind, text_conditioning
from core.pipelines.defaults import check_size, first_stage_factor, model_defaults
from core.pipelines.generation import (base_parameters, check_count, finish_plain, generate,
                                       resolve_seed, resolve_settings)
from core.samplers import sample


def txt2img(m, prompt, negative_prompt="", steps=None, guidance_scale=None, sampler=None, seed=None,
            width=None, height=None, n=1, *, eta=None, karras=None, vae_tile=None, callback=None,
            should_stop=None) -> list:
    """Images for a prompt, each a PIL image with its parameters in image.info.

    steps, guidance_scale, sampler, width, height, eta, karras: None = the model's defaults
        (core.pipelines.defaults). sampler: a core.samplers.SAMPLERS key or its display name.
    seed: image i uses seed + i (None: random, recorded). n: how many images.
    vae_tile: None = decode tiled only when needed, 0 = never, N = tiles of N latent pixels.
    callback(Progress): after each step (Progress.preview() gives a cheap preview image).
    should_stop: a threading.Event; when set, raises core.samplers.SamplingInterrupted whose
        `.images` are the images finished so far.
    """
    # 1. Check the model and the inputs, fill in the defaults.
    require_kind(m, ("text",), "txt2img")
    defaults = model_defaults(m)
    width, height = check_size(m, defaults.width if width is None else width,
                               defaults.height if height is None else height, "txt2img")
    settings = resolve_settings(defaults, sampler, karras, steps, guidance_scale, eta)
    n, seed = check_count(n), resolve_seed(seed)

    # 2. Conditioning: the prompt and the negative prompt (the unconditional half of CFG).
    cond, uncond = text_conditioning(m, prompt, negative_prompt)
    f = first_stage_factor(m)
    shape = (1, m.config.channels, height // f, width // f)

    # 3. Sample each image from its own seed, 4. decode, 5. record the parameters.
    def sample_one(i, seed_i, step_callback):
        return sample(m, cond, uncond, settings.guidance_scale, settings.steps, settings.sampler,
                      settings.eta, shape=shape, seed=seed_i, callback=step_callback,
                      karras=settings.karras, should_stop=should_stop)

    def params_for(i, seed_i):
        return base_parameters(m, "txt2img", settings, seed_i, width, height, prompt, negative_prompt)

    return generate(m, n, seed, sample_one, finish_plain(params_for), callback, vae_tile)
