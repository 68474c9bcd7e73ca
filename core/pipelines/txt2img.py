"""Text to image (Rombach et al. 2022, Sec. 4.3): noise -> latent by the sampler under the prompt's
guidance -> image by the decoder."""

from core.capabilities import capabilities
from core.embeddings import ti_hashes
from core.lora import lora_hashes
from core.pipelines.conditioning import effective_clip_skip, text_conditioning
from core.pipelines.defaults import check_size, model_defaults
from core.pipelines.denoise import denoise_batches
from core.pipelines.generation import (base_parameters, check_batch_size, check_output, interrupted,
                                       plain_images, resolve_seeds)
from core.pipelines.refiner import refiner_parameters, refiner_stage
from core.pipelines.tiling import native_tiling as plan_native_tiling
from core.samplers import SamplingInterrupted, SamplingSettings, schedule_length


def txt2img(m, prompt, negative_prompt="", steps=None, guidance_scale=None, sampler=None, seed=None,
            width=None, height=None, n=1, *, clip_skip=None, lora_dir=None,
            embeddings_dir=None, refiner=None, refiner_switch_at=None, **options):
    """Images for a prompt: a list of PIL images, each with its parameters in image.info.

    steps, guidance_scale, sampler, width, height: None = the model's defaults
        (core.pipelines.defaults). sampler: a core.samplers.SAMPLERS key or its display name.
    seed: image i uses seed + i (None: random, recorded). n: how many images.
    prompt, negative_prompt: AUTOMATIC1111's syntax (core/prompts.py): (emphasis:1.2), [editing:at:0.5],
      [alter|nation], BREAK, AND (prompt only).
    clip_skip: None / 1 = the text encoder's usual layer; N stops N - 1 layers earlier (CLIP encoders).
    lora_dir: the folder of the prompt's <lora:name:weight> tags (core/lora.py), e.g. weights/lora;
      None: tags are removed with a warning. Recorded as "Lora hashes".
    embeddings_dir: textual-inversion embeddings used by name (core/embeddings.py), e.g.
      weights/embeddings; recorded as "TI hashes".
    refiner: a second text-to-image model (an SDXL refiner) that continues the sampling from
      refiner_switch_at (fraction of the steps, default 0.8) with its own conditioning, A1111's way
      (core/pipelines/refiner.py); recorded as "Refiner" / "Refiner switch at".
    options:
      scheduler: the schedule type of sigma samplers ("Karras", "Exponential", ...; None = default);
      batch_size: images per UNet batch (faster on a GPU; each image still depends only on its seed);
      eta, karras: None = the model's defaults;
      vae_tile: None = decode tiled only when needed, 0 = never, N = tiles of N latent pixels;
      callback(Progress): after each step (Progress.preview() gives a cheap preview image);
      should_stop: a threading.Event; when set, raises core.samplers.SamplingInterrupted whose
        `.images` are the images finished so far and `.partial` the interrupted ones;
      output: "image", or "latent" for the latents (n, C, h, w) (a further pass takes them);
      native_tiling: above the model's native (training) size, denoise the whole latent in overlapping
        tiles of the native size blended every step (True), or in one piece (False, the default, as
        AUTOMATIC1111 and the paper's Sec. 4.3.2 do); recorded as "Tiled diffusion" when on
        (core/pipelines/tiling.py).
    """
    # 1. The model can do it, at this size. 2. The prompt and the negative prompt (CFG's other half).
    capabilities(m).require("txt2img")
    defaults = model_defaults(m)
    width, height = check_size(m, defaults.width if width is None else width,
                               defaults.height if height is None else height, "txt2img")
    cond, uncond = text_conditioning(m, prompt, negative_prompt, clip_skip=clip_skip, size=(height, width),
                                     lora_dir=lora_dir, embeddings_dir=embeddings_dir)
    extra = {"prompt": prompt, "negative_prompt": negative_prompt, "clip_skip": effective_clip_skip(m, clip_skip),
             "lora_hashes": lora_hashes(m), "ti_hashes": ti_hashes(embeddings_dir, [prompt, negative_prompt])}
    stage = refiner_stage(m, refiner, refiner_switch_at, prompt, negative_prompt, (height, width),
                          clip_skip=clip_skip, embeddings_dir=embeddings_dir)
    # 3. Noise -> latents -> images, one seed each (the refiner taking over at its switch).
    return sample_images(m, "txt2img", cond, uncond, extra, n, seed, steps, sampler, guidance_scale,
                         width, height, refiner=stage, **options)


def sample_images(m, task, cond, uncond, extra: dict, n, seed, steps, sampler, guidance_scale, width, height, *,
            batch_size=1, eta=None, karras=None, scheduler=None, vae_tile=None, callback=None, should_stop=None,
            output="image", native_tiling=False, tile_cond=None, refiner=None):
    """n images from noise under (cond, uncond), made by the caller for `task`; `extra`: parameters
    recorded besides the sampling ones (the class, the layout); tile_cond(cond, tile, H, W): cond and
    uncond are raw and encoded by it, for the whole latent (tile None) or per tile when tiled (a
    layout's boxes in each tile's frame); refiner: a RefinerStage or None. Other arguments as txt2img."""
    # 1. Resolve the settings, size and seeds.
    caps, defaults = capabilities(m), model_defaults(m)
    width, height = check_size(m, defaults.width if width is None else width,
                               defaults.height if height is None else height, task)
    settings = SamplingSettings.resolve(defaults, sampler, karras, steps, guidance_scale, eta, scheduler)
    if uncond is None and settings.guidance_scale != 1.0:
        if guidance_scale is not None:
            raise ValueError("this model has no unconditional embedding (no null class), so it cannot use "
                             "classifier-free guidance; use guidance_scale=1.")
        settings = SamplingSettings(settings.sampler, settings.karras, settings.steps, 1.0, settings.eta,
                                    scheduler=settings.scheduler)
    seeds, batch_size, output = resolve_seeds(seed, n), check_batch_size(batch_size), check_output(output)
    wrap, tiling = plan_native_tiling(m, width, height, native_tiling, tile_cond)   # above the native size: tiles
    if tile_cond is not None and wrap is None:                                # one piece: encoded once
        h, w = height // caps.factor, width // caps.factor
        cond, uncond = tile_cond(cond, None, h, w), None if uncond is None else tile_cond(uncond, None, h, w)
    extra = {**extra, **refiner_parameters(refiner and refiner.model, refiner and refiner.switch_at,
                                          schedule_length(settings, len(m.alphas_cumprod)))}

    def params_for(i):
        return {**base_parameters(m, task, settings, seeds[i], width, height), **extra, "tiled_diffusion": tiling}

    def record(z):
        return z if output == "latent" else plain_images(m, z, params_for, vae_tile, callback)

    # 2. Denoise every image from its own seed.
    latent_shape = (caps.latent_channels, height // caps.factor, width // caps.factor)
    try:
        z = denoise_batches(m, cond, uncond, settings, latent_shape, seeds, batch_size, wrap=wrap,
                            callback=callback, should_stop=should_stop, refiner=refiner)
    except SamplingInterrupted as stop:
        raise interrupted(m, stop, record, params_for, vae_tile)

    # 3. Decode and record.
    return record(z)
