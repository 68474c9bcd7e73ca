"""Inpainting: repaint the white part of a mask, keep the rest.

Two ways, chosen by the model:
(a) a dedicated inpainting model sees the mask and the masked image concatenated to its input
    (FACTS.md section 9, trap 6):
    * "inpaint-sd" (SD 2 / 1.5 inpainting): [z, mask (1 = repaint, nearest-resized), latent of
      image * (mask < 0.5)], 4 + 1 + 4 channels, with the prompt through cross-attention;
    * "inpaint-ldm" (LDM inpainting_big): [z, latent of (1 - mask) * image, mask * 2 - 1];
(b) ANY other text or unconditional model, by latent blending: at every step the sampler shows the
    network the kept region as the original latent noised to the current level (core.samplers'
    x0 / mask options), so the new content grows around the real surroundings.
Around that: mask feathering, "only masked" (crop around the mask with padding and run at the
model's resolution, so a small edit in a big photo stays sharp), masked-content fill, a colour
match measured on a ring just outside the mask (where the original is known), and a final
paste-back that leaves every pixel outside the mask exactly as it was.

Reports (image.info["ldm_studio"]): border_delta_e / border_delta_e_raw = mean CIEDE2000 between
the generated picture and the original on a ring of `ring_width` px just outside the mask, after /
before the colour match (what the seam will show); outside_psnr / outside_psnr_raw = PSNR outside
the mask of the result / of the raw generation (100 = identical).
"""

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.pipelines import vae
from core.pipelines.color import delta_e_2000, psnr, srgb_to_lab
from core.pipelines.conditioning import require_kind, text_conditioning
from core.pipelines.defaults import check_size, first_stage_factor, model_defaults, size_multiple
from core.pipelines.generation import (base_parameters, check_count, generate, resolve_seed,
                                       resolve_settings)
from core.pipelines.images import (image_to_tensor, load_image, load_mask, pad_to_multiple, to_unit,
                                   unit_to_uint8)
from core.pipelines.img2img import check_strength
from core.pipelines.infotext import attach_parameters
from core.pipelines.masks import crop_region, dilate, feather, fill_holes, outer_ring
from core.samplers import sample
from core.samplers.noise import cpu_generator, randn

INPAINT_AREAS = {"whole": "Whole picture", "only_masked": "Only masked"}
MASKED_CONTENT = {"original": "original", "fill": "fill", "latent_noise": "latent noise",
                  "latent_nothing": "latent nothing"}


def _whole_number(name, value, minimum=0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}; got {value!r}.")
    return value


def _choice(name, value, options: dict) -> str:
    if value in options:
        return value
    by_display = {v.lower(): k for k, v in options.items()}
    if isinstance(value, str) and value.lower() in by_display:
        return by_display[value.lower()]
    raise ValueError(f"{name} must be one of {', '.join(options)}; got {value!r}.")


def _resize01(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, 3, h, w) in [0, 1] -> (1, 3, *size) by antialiased bicubic, clamped."""
    return F.interpolate(a, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def inpaint(m, image, mask, prompt="", negative_prompt="", steps=None, guidance_scale=None, sampler=None,
            seed=None, n=1, *, strength=1.0, mask_blur=4, inpaint_area="whole", padding=32,
            masked_content="original", width=None, height=None, eta=None, karras=None,
            color_match=True, ring_width=8, vae_tile=None, callback=None, should_stop=None) -> list:
    """Repaint the white part of `mask` in `image` (PIL, path or array each); one PIL image per seed.

    strength: fraction of the schedule run over the masked area (1 = from noise).
    mask_blur: feather width in pixels of the paste-back (inside the mask only).
    inpaint_area: "whole" (the picture, processed at width x height when they are given, else at its
        own size) or "only_masked" (crop around the mask grown by `padding` px, processed at width x
        height, default the model's size); either is pasted back at the picture's own size.
    masked_content: what the masked area starts from: "original", "fill" (colours from around the
        hole), "latent_noise", "latent_nothing".
    color_match: shift the generated colours by the mean difference measured on the outer ring.
    Other arguments as txt2img. Pixels outside the mask are returned unchanged.
    """
    # 1. Check the model and the options.
    kind = require_kind(m, ("text", "none", "masked_image", "text+mask"), "inpaint")
    if kind in ("none", "masked_image") and prompt:
        raise ValueError(f"this model ({m.task}) takes no prompt; give prompt=''.")
    strength = check_strength(strength)
    mask_blur, padding = _whole_number("mask_blur", mask_blur), _whole_number("padding", padding)
    ring_width = _whole_number("ring_width", ring_width, 1)
    area = _choice("inpaint_area", inpaint_area, INPAINT_AREAS)
    content = _choice("masked_content", masked_content, MASKED_CONTENT)
    defaults = model_defaults(m)
    settings = resolve_settings(defaults, sampler, karras, steps, guidance_scale, eta)
    n, seed = check_count(n), resolve_seed(seed)

    # 2. The image and its mask (white = repaint), binarised at 0.5.
    picture = load_image(image)
    W, H = picture.size
    hard = (load_mask(mask, (W, H)) >= 0.5).astype(np.float32)              # (H, W) 1 = repaint
    if hard.sum() == 0:
        raise ValueError("the mask is empty (no white pixels), so there is nothing to repaint; paint "
                         "the area to change in white.")
    if hard.min() == 1:
        warnings.warn("the mask covers the whole image: nothing of the original is kept (this is "
                      "text-to-image at the image's size)", stacklevel=2)
    original = np.asarray(picture, dtype=np.float32) / 255.0                # (H, W, 3)

    # 3. The region to process: the whole picture, or a crop around the mask.
    if area == "whole" and width is None and height is None:
        proc_w, proc_h = W, H
    else:
        proc_w, proc_h = check_size(m, defaults.width if width is None else width,
                                    defaults.height if height is None else height, "inpainting")
    box = (0, 0, W, H) if area == "whole" else crop_region(dilate(hard, mask_blur), padding, proc_w / proc_h)
    x0b, y0b, x1b, y1b = box
    crop = picture.crop(box).resize((proc_w, proc_h), Image.Resampling.LANCZOS)
    crop_mask = Image.fromarray((hard[y0b:y1b, x0b:x1b] * 255).astype(np.uint8)).resize(
        (proc_w, proc_h), Image.Resampling.BILINEAR)
    param = next(m.parameters())
    grid = size_multiple(m)
    x, _ = pad_to_multiple(image_to_tensor(crop, param.device), grid)       # (1, 3, Hp, Wp)
    if area == "whole":
        check_size(m, x.shape[-1], x.shape[-2], "inpainting the whole picture (use "
                   "inpaint_area='only_masked' for a local edit of a large image)")
    mask_t = torch.from_numpy((np.asarray(crop_mask) >= 128).astype(np.float32))[None, None]
    mask_t = F.pad(mask_t, (0, x.shape[-1] - proc_w, 0, x.shape[-2] - proc_h)).to(param.device)  # (1, 1, Hp, Wp)

    # 4. What the masked area starts from, and the clean latent.
    if content == "fill":
        filled = fill_holes((x[0].permute(1, 2, 0).cpu().numpy() + 1) / 2, mask_t[0, 0].cpu().numpy())
        x_init = torch.from_numpy(filled * 2 - 1).permute(2, 0, 1)[None].to(x)
    else:
        x_init = x
    z_init = vae.encode(m, x_init, tile=vae_tile)                            # (1, C, h, w)
    f = first_stage_factor(m)
    latent_mask = F.max_pool2d(mask_t, f).to(z_init.dtype)                   # (1, 1, h, w): any repainted px

    # 5. Conditioning: dedicated models get mask + masked image concatenated; others blend latents.
    task = m.task
    if task == "inpaint-sd":
        c_text, u_text = text_conditioning(m, prompt, negative_prompt)
        mask_nearest = F.interpolate(mask_t, size=z_init.shape[-2:], mode="nearest")
        masked_latent = vae.encode(m, x * (mask_t < 0.5), tile=vae_tile)      # hole = 0 (grey)
        cond = {"c_concat": [torch.cat([mask_nearest.to(masked_latent), masked_latent], dim=1)],
                "c_crossattn": [c_text]}
        uncond = u_text                                                      # replaces c_crossattn only
    elif task == "inpaint-ldm":
        masked = (1 - mask_t) * (x + 1) / 2 * 2 - 1                           # hole = black (-1)
        masked_latent = vae.encode(m, masked, tile=vae_tile)
        mask_pm = F.interpolate(mask_t, size=z_init.shape[-2:], mode="nearest") * 2 - 1
        cond, uncond = {"c_concat": [torch.cat([masked_latent, mask_pm.to(masked_latent)], dim=1)]}, None
    elif kind == "text":                                                     # any text model: blending
        cond, uncond = text_conditioning(m, prompt, negative_prompt)
    else:
        cond, uncond = None, None
    blend = task not in ("inpaint-sd", "inpaint-ldm")

    # 6. Sample each image.
    def sample_one(i, seed_i, step_callback):
        z0 = z_init
        if content == "latent_noise":
            noise = randn(z_init.shape, cpu_generator(seed_i + 2 ** 62), z_init.device, z_init.dtype)
            z0 = z_init * (1 - latent_mask) + noise * latent_mask
        elif content == "latent_nothing":
            z0 = z_init * (1 - latent_mask)
        return sample(m, cond, uncond, settings.guidance_scale, settings.steps, settings.sampler,
                      settings.eta, shape=tuple(z0.shape), seed=seed_i, callback=step_callback,
                      karras=settings.karras, x0=z0, mask=latent_mask if blend else None,
                      strength=strength, should_stop=should_stop)

    # 7. Back into the full picture, colour match, paste back, measure.
    hard_bool = hard > 0.5
    ring = outer_ring(hard, ring_width)
    ring[:y0b] = ring[y1b:] = False                                          # where the crop generated
    ring[:, :x0b] = ring[:, x1b:] = False
    soft = feather(hard, mask_blur)[..., None]                               # (H, W, 1), 0 outside
    original_u8 = np.asarray(picture)

    def finish_one(i, seed_i, decoded):
        gen = to_unit(decoded[..., :proc_h, :proc_w])                         # (1, 3, ph, pw) in [0, 1]
        if (y1b - y0b, x1b - x0b) != (proc_h, proc_w):
            gen = _resize01(gen, (y1b - y0b, x1b - x0b))
        full = original.copy()
        full[y0b:y1b, x0b:x1b] = gen[0].permute(1, 2, 0).cpu().numpy()
        reports = _match_and_measure(full, original, ring, hard_bool, color_match)
        result = unit_to_uint8(original * (1 - soft) + reports.pop("_matched") * soft)
        result = np.where(soft > 0, result, original_u8)                     # outside: bit-exact original
        reports["outside_psnr"] = (psnr(result[~hard_bool] / 255.0, original_u8[~hard_bool] / 255.0)
                                   if (~hard_bool).any() else None)
        params = base_parameters(m, "inpaint", settings, seed_i, proc_w, proc_h, prompt, negative_prompt)
        params.update(strength=strength, mask_blur=mask_blur, inpaint_area=INPAINT_AREAS[area],
                      padding=padding if area == "only_masked" else None,
                      masked_content=MASKED_CONTENT[content])
        return attach_parameters(Image.fromarray(result, mode="RGB"), params, reports)

    return generate(m, n, seed, sample_one, finish_one, callback, vae_tile)


def _match_and_measure(generated: np.ndarray, original: np.ndarray, ring: np.ndarray, hard: np.ndarray,
                       color_match: bool) -> dict:
    """Colour-match `generated` to `original` on the outer ring and report the differences.

    The offset is the mean RGB difference original - generated on the ring (what the decoder and
    the new content shifted where the truth is known); it is applied only when it lowers the ring's
    mean CIEDE2000. Returns the reports plus "_matched", the corrected picture.
    """
    reports = {"delta_e_formula": "CIEDE2000", "mask_fraction": float(hard.mean()),
               "outside_psnr_raw": psnr(generated[~hard], original[~hard]) if (~hard).any() else None}
    if not ring.any():
        reports.update(border_delta_e=None, border_delta_e_raw=None, color_offset=None, _matched=generated)
        return reports
    target = srgb_to_lab(original[ring])
    before = float(delta_e_2000(srgb_to_lab(generated[ring]), target).mean())
    matched, offset = generated, np.zeros(3, dtype=np.float32)
    if color_match:
        candidate_offset = (original[ring] - generated[ring]).mean(axis=0)
        candidate = np.clip(generated + candidate_offset, 0.0, 1.0)
        after = float(delta_e_2000(srgb_to_lab(candidate[ring]), target).mean())
        if after < before:
            matched, offset = candidate, candidate_offset
    after = float(delta_e_2000(srgb_to_lab(matched[ring]), target).mean())
    reports.update(border_delta_e=after, border_delta_e_raw=before,
                   color_offset=[float(v) for v in offset], _matched=matched)
    return reports
