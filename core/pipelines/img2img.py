"""Image to image as SDEdit (Meng et al. 2022): encode the image, noise its latent to the level
`strength` of the way up the schedule, and denoise from there under the prompt. strength 1 ignores
almost all of the image; small strengths keep its composition and colours."""

import math

from core.pipelines import vae
from core.pipelines.conditioning import require_kind, text_conditioning
from core.pipelines.defaults import check_size, model_defaults, size_multiple
from core.pipelines.generation import (base_parameters, check_count, generate, resolve_seed,
                                       resolve_settings)
from core.pipelines.images import (image_to_tensor, load_image, pad_to_multiple, resize_image,
                                   tensor_to_images)
from core.pipelines.infotext import attach_parameters
from core.samplers import sample


def check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1] (the fraction of the schedule re-run); "
                         f"got {strength!r}.")
    return float(strength)


def img2img(m, image, prompt="", strength=0.75, negative_prompt="", steps=None, guidance_scale=None,
            sampler=None, seed=None, width=None, height=None, n=1, *, eta=None, karras=None,
            resize_mode="just_resize", vae_tile=None, callback=None, should_stop=None) -> list:
    """Variations of `image` (PIL, path or array) following `prompt`, one PIL image per seed.

    width/height: resize the image to this size first (multiples of the model's grid), the way
    `resize_mode` says (images.RESIZE_MODES: "just_resize", "crop_and_resize", "resize_and_fill",
    or A1111's 0/1/2); None keeps its size (padded to the grid by reflection inside, cropped back
    after). Unconditional models take prompt "". Other arguments as txt2img.
    """
    # 1. Check the model and the inputs.
    kind = require_kind(m, ("text", "none"), "img2img")
    if kind == "none" and prompt:
        raise ValueError("this model is unconditional: it takes no prompt (give prompt='').")
    strength = check_strength(strength)
    defaults = model_defaults(m)
    settings = resolve_settings(defaults, sampler, karras, steps, guidance_scale, eta)
    n, seed = check_count(n), resolve_seed(seed)
    picture = load_image(image)
    if width is not None or height is not None:
        width, height = check_size(m, picture.width if width is None else width,
                                   picture.height if height is None else height, "img2img")
        picture = resize_image(picture, width, height, resize_mode)
    width, height = picture.size

    # 2. Encode the (padded) image: the clean latent x0.
    param = next(m.parameters())
    x, _ = pad_to_multiple(image_to_tensor(picture, param.device), size_multiple(m))
    check_size(m, x.shape[-1], x.shape[-2], "img2img")
    z0 = vae.encode(m, x, tile=vae_tile)                                     # (1, C, h, w)

    # 3. Conditioning.
    cond, uncond = text_conditioning(m, prompt, negative_prompt) if kind == "text" else (None, None)

    # 4. Sample from x0 noised to `strength`, 5. decode, crop the padding, record the parameters.
    def sample_one(i, seed_i, step_callback):
        return sample(m, cond, uncond, settings.guidance_scale, settings.steps, settings.sampler,
                      settings.eta, shape=tuple(z0.shape), seed=seed_i, callback=step_callback,
                      karras=settings.karras, x0=z0, strength=strength, should_stop=should_stop)

    def finish_one(i, seed_i, decoded):
        out = tensor_to_images(decoded[..., :height, :width])[0]
        params = base_parameters(m, "img2img", settings, seed_i, width, height, prompt, negative_prompt)
        params["strength"] = strength
        return attach_parameters(out, params)

    return generate(m, n, seed, sample_one, finish_one, callback, vae_tile)
