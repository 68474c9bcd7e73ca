"""Image to image as SDEdit (Meng et al. 2022): encode the image, noise its latent to the level
`strength` of the way up the schedule, and denoise from there under the prompt. strength 1 ignores
almost all of the image; small strengths keep its composition and colours."""

from core.capabilities import capabilities
from core.pipelines import vae
from core.embeddings import ti_hashes
from core.lora import lora_hashes
from core.pipelines.conditioning import effective_clip_skip, text_conditioning
from core.pipelines.defaults import check_size, model_defaults
from core.pipelines.denoise import denoise_batches
from core.pipelines.generation import (base_parameters, check_batch_size, check_output, decode, interrupted,
                                       resolve_seeds)
from core.pipelines.images import RESIZE_MODES, image_to_tensor, load_image, pad_to_multiple, resize_image, \
    resize_mode_key, tensor_to_images
from core.pipelines.infotext import attach_parameters
from core.samplers import SamplingInterrupted, SamplingSettings, check_strength


def img2img(m, image, prompt="", strength=0.75, negative_prompt="", steps=None, guidance_scale=None,
            sampler=None, seed=None, width=None, height=None, n=1, *, resize_mode="just_resize", batch_size=1,
            eta=None, karras=None, scheduler=None, clip_skip=None, vae_tile=None, callback=None, should_stop=None,
            output="image", lora_dir=None, embeddings_dir=None):
    """Variations of `image` (PIL, path or array) following `prompt`, one PIL image per seed.

    width/height: bring the image to this size first (multiples of the model's grid), by
    `resize_mode` ("just_resize", "crop_and_resize", "resize_and_fill": A1111's 0, 1, 2); None keeps
    its size (padded to the grid by reflection inside, cropped back after). Unconditional models
    take prompt "". Other arguments (lora_dir, embeddings_dir too) as txt2img.
    """
    # 1. Resolve: the model can do it; settings, size and seeds, checked once.
    caps = capabilities(m).require("img2img")
    if not caps.prompt and prompt:
        raise ValueError("this model is unconditional: it takes no prompt (give prompt='').")
    strength, resize_mode = check_strength(strength), resize_mode_key(resize_mode)
    settings = SamplingSettings.resolve(model_defaults(m), sampler, karras, steps, guidance_scale, eta, scheduler)
    seeds, batch_size, output = resolve_seeds(seed, n), check_batch_size(batch_size), check_output(output)
    picture = load_image(image)
    if width is not None or height is not None:
        width, height = check_size(m, picture.width if width is None else width,
                                   picture.height if height is None else height, "img2img")
        picture = resize_image(picture, width, height, resize_mode)
    width, height = picture.size

    def params_for(i):
        params = base_parameters(m, "img2img", settings, seeds[i], width, height, prompt, negative_prompt)
        return {**params, "strength": strength, "clip_skip": effective_clip_skip(m, clip_skip) if caps.prompt else None,
                "lora_hashes": lora_hashes(m), "ti_hashes": ti_hashes(embeddings_dir, [prompt, negative_prompt])}

    def record(z):
        if output == "latent":
            return z
        return [attach_parameters(tensor_to_images(x[..., :height, :width])[0], params_for(i))
                for i, x in enumerate(decode(m, z, vae_tile, callback, images=z.shape[0]))]

    # 2. Encode the (padded) image: the clean latent x0.
    x, _ = pad_to_multiple(image_to_tensor(picture, m.device), caps.grid)
    check_size(m, x.shape[-1], x.shape[-2], "img2img")
    z0 = vae.encode(m, x, tile=vae_tile)                                     # (1, C, h, w)

    # 3. Conditioning.
    cond, uncond = text_conditioning(m, prompt, negative_prompt, clip_skip=clip_skip, size=(height, width),
                                     lora_dir=lora_dir, embeddings_dir=embeddings_dir) \
        if caps.prompt else (None, None)

    # 4. Denoise from x0 noised to `strength`, every image from its own seed.
    try:
        z = denoise_batches(m, cond, uncond, settings, tuple(z0.shape[1:]), seeds, batch_size, x0=z0,
                            strength=strength, callback=callback, should_stop=should_stop)
    except SamplingInterrupted as stop:
        raise interrupted(m, stop, record, params_for, vae_tile)

    # 5. Decode, crop the padding, record the parameters.
    return record(z)


__all__ = ["img2img", "RESIZE_MODES"]
