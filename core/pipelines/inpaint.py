"""Inpainting: repaint the white part of a mask, keep the rest.

Two ways, chosen by the model:
(a) a dedicated inpainting model sees the mask and the masked image concatenated to its input
    (FACTS.md section 9, trap 6):
    * "inpaint-sd" (SD 2 / 1.5 / SDXL inpainting): [z, mask (1 = repaint, nearest-resized), latent of
      image * (mask < 0.5)], 4 + 1 + 4 channels, with the prompt through cross-attention (SDXL: and
      its vector y; the unconditional branch sees the same mask and masked latent);
    * "inpaint-ldm" (LDM inpainting_big): [z, latent of (1 - mask) * image, mask * 2 - 1];
(b) ANY other text or unconditional model, by latent blending: at every step the sampler shows the
    network the kept region as the original latent noised to the current level (core.samplers'
    x0 / mask options), so the new content grows around the real surroundings.
Soft inpainting (A1111's, PR 14208; `soft_inpainting=True`): the mask stays fractional after its
blur, and that per-pixel value weighs both the latent blend at every step (a latent cell takes the
largest value of its pixels) and the paste-back, so grey = a partial change and the blur is a real
transition (core.pipelines.masks.mask_plan). Outpainting (outpaint.py) is this pipeline on a larger
canvas with a MaskPlan of its own.
Around that: mask feathering, "only masked" (crop around the mask with padding and run at the
model's resolution, so a small edit in a big photo stays sharp), masked-content fill, a colour
match measured on a ring just outside the mask (where the original is known), and a final
paste-back that leaves every pixel outside the mask exactly as it was.

Reports (image.info["ldm_studio"]): border_delta_e / border_delta_e_raw = mean CIEDE2000 between
the generated picture and the original on a ring of `ring_width` px just outside the mask, after /
before the colour match (what the seam will show). Outside the mask the result equals the original
bit for bit (tested), so no number is reported for it.
"""

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.capabilities import capabilities
from core.embeddings import ti_hashes
from core.lora import lora_hashes
from core.pipelines import vae
from core.pipelines.color import delta_e_2000, srgb_to_lab
from core.pipelines.conditioning import effective_clip_skip, text_conditioning, with_keys
from core.pipelines.defaults import check_size, model_defaults
from core.pipelines.denoise import denoise_batches
from core.pipelines.generation import (base_parameters, check_batch_size, decode, interrupted,
                                       resolve_seeds)
from core.pipelines.images import image_to_tensor, load_image, load_mask, pad_to_multiple, to_unit, \
    unit_to_uint8
from core.pipelines.infotext import attach_parameters
from core.pipelines.masks import MaskPlan, crop_region, dilate, fill_holes, mask_plan, outer_ring
from core.samplers import SamplingInterrupted, SamplingSettings, check_strength
from core.samplers.noise import cpu_generator, randn, stream_seed
from core.samplers.settings import whole_number

INPAINT_AREAS = {"whole": "Whole picture", "only_masked": "Only masked"}
MASKED_CONTENT = {"original": "original", "fill": "fill", "latent_noise": "latent noise",
                  "latent_nothing": "latent nothing"}


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


@dataclass(frozen=True)
class Region:
    """Where the repaint happens: the box of the picture processed, at proc_w x proc_h."""
    box: tuple[int, int, int, int]           # (x0, y0, x1, y1) in the picture
    proc_w: int
    proc_h: int


def inpaint(m, image, mask, prompt="", negative_prompt="", steps=None, guidance_scale=None, sampler=None,
            seed=None, n=1, *, strength=1.0, mask_blur=4, inpaint_area="whole", padding=32,
            masked_content="original", width=None, height=None, eta=None, karras=None, scheduler=None,
            clip_skip=None, batch_size=1, lora_dir=None, embeddings_dir=None, soft_inpainting=False,
            color_match=True, ring_width=8, vae_tile=None, callback=None, should_stop=None) -> list:
    """Repaint the white part of `mask` in `image` (PIL, path or array each); one PIL image per seed.
    `mask` may also be a masks.MaskPlan at the image's size (outpainting builds one).

    strength: fraction of the schedule run over the masked area (1 = from noise).
    mask_blur: feather width in pixels of the paste-back (inside the mask only).
    inpaint_area: "whole" (the picture, processed at width x height when they are given, else at its
        own size) or "only_masked" (crop around the mask grown by `padding` px, processed at width x
        height, default the model's size); either is pasted back at the picture's own size.
    masked_content: what the masked area starts from: "original", "fill" (colours from around the
        hole), "latent_noise", "latent_nothing".
    soft_inpainting: keep the mask fractional (see the module's docstring); off: binarised at 0.5.
    color_match: shift the generated colours by the mean difference measured on the outer ring.
    Other arguments as txt2img. Pixels outside the mask are returned unchanged.
    """
    # 1. Resolve: the model can do it; options, settings and seeds, checked once.
    caps = capabilities(m).require("inpaint")
    if not caps.prompt and prompt:
        raise ValueError(f"this model ({caps.family}) takes no prompt; give prompt=''.")
    strength = check_strength(strength)
    mask_blur, padding = whole_number("mask_blur", mask_blur), whole_number("padding", padding)
    ring_width = whole_number("ring_width", ring_width, 1)
    area = _choice("inpaint_area", inpaint_area, INPAINT_AREAS)
    content = _choice("masked_content", masked_content, MASKED_CONTENT)
    defaults = model_defaults(m)
    settings = SamplingSettings.resolve(defaults, sampler, karras, steps, guidance_scale, eta, scheduler)
    seeds, batch_size = resolve_seeds(seed, n), check_batch_size(batch_size)

    # 2. The image, its mask (white = repaint) in its uses, and the region to process.
    picture = load_image(image)
    masks = _mask_plan(mask, picture.size, mask_blur, bool(soft_inpainting))   # (H, W) each, 1 = repaint
    region = _region(m, defaults, masks.hard, area, padding, mask_blur, width, height)
    x, mask_t, blend_t = _processed_tensors(m, picture, masks, region, area)   # (1, 3|1|1, Hp, Wp)

    # 3. What the masked area starts from (one clean latent per image), and the conditioning.
    z_init = vae.encode(m, _initial_image(x, mask_t, content), tile=vae_tile)   # (1, C, h, w)
    latent_hard = F.max_pool2d(mask_t, caps.factor).to(z_init.dtype)        # (1, 1, h, w): any repainted px
    latent_mask = latent_hard if blend_t is None else F.max_pool2d(blend_t, caps.factor).to(z_init.dtype)
    # Dedicated models repaint by themselves; they blend latents only where soft inpainting is partial.
    blend = None if caps.dedicated_inpainting and torch.equal(latent_mask, latent_hard) else latent_mask
    z0 = torch.cat([_start_latent(z_init, latent_mask, content, s) for s in seeds])
    cond, uncond = _conditioning(m, caps, x, mask_t, z_init, prompt, negative_prompt, vae_tile, clip_skip,
                                 {"lora_dir": lora_dir, "embeddings_dir": embeddings_dir})

    def params_for(i):
        params = base_parameters(m, "inpaint", settings, seeds[i], region.proc_w, region.proc_h, prompt,
                                 negative_prompt)
        return {**params, "clip_skip": effective_clip_skip(m, clip_skip) if caps.prompt else None,
                "strength": strength, "mask_blur": mask_blur, "inpaint_area": INPAINT_AREAS[area],
                "padding": padding if area == "only_masked" else None, "masked_content": MASKED_CONTENT[content],
                "lora_hashes": lora_hashes(m), "ti_hashes": ti_hashes(embeddings_dir, [prompt, negative_prompt]),
                **masks.record}

    target = _paste_target(picture, masks, region, ring_width)

    def record(z):
        return [_paste_back(target, region, x_i, color_match, params_for(i))
                for i, x_i in enumerate(decode(m, z, vae_tile, callback, images=z.shape[0]))]

    # 4. Denoise: dedicated models see mask + masked image; any other model blends latents.
    try:
        z = denoise_batches(m, cond, uncond, settings, tuple(z0.shape[1:]), seeds, batch_size, x0=z0,
                            mask=blend, strength=strength,
                            callback=callback, should_stop=should_stop)
    except SamplingInterrupted as stop:
        raise interrupted(m, stop, record, params_for, vae_tile)

    # 5. Decode, back into the full picture, colour match, paste back, measure, record.
    return record(z)


def _mask_plan(mask, size, mask_blur: int, soft: bool) -> MaskPlan:
    """The mask's plan (masks.mask_plan), checked: something to repaint, something kept."""
    if isinstance(mask, MaskPlan):
        plan = mask
        if plan.hard.shape != (size[1], size[0]):
            raise ValueError(f"the mask plan is {plan.hard.shape[1]}x{plan.hard.shape[0]}; the image is "
                             f"{size[0]}x{size[1]}.")
    else:
        plan = mask_plan(load_mask(mask, size), mask_blur, soft)
    hard = plan.hard
    if hard.sum() == 0:
        raise ValueError("the mask is empty (no white pixels), so there is nothing to repaint; paint "
                         "the area to change in white.")
    if hard.min() == 1:
        warnings.warn("the mask covers the whole image: nothing of the original is kept (this is "
                      "text-to-image at the image's size)", stacklevel=3)
    return plan


def _region(m, defaults, hard, area, padding, mask_blur, width, height) -> Region:
    """The whole picture, or a crop around the mask grown by `padding`; and the size it runs at."""
    H, W = hard.shape
    if area == "whole" and width is None and height is None:
        proc_w, proc_h = W, H
    else:
        proc_w, proc_h = check_size(m, defaults.width if width is None else width,
                                    defaults.height if height is None else height, "inpainting")
    box = (0, 0, W, H) if area == "whole" else crop_region(dilate(hard, mask_blur), padding, proc_w / proc_h)
    return Region(box, proc_w, proc_h)


def _processed_tensors(m, picture, masks: MaskPlan, region: Region, area):
    """The region at its processing size, padded to the model's grid: image (1, 3, Hp, Wp) in
    [-1, 1], mask (1, 1, Hp, Wp) in {0, 1}, and soft inpainting's blend weight (1, 1, Hp, Wp) in
    [0, 1] (None without it)."""
    x0b, y0b, x1b, y1b = region.box
    size = (region.proc_w, region.proc_h)
    crop = picture.crop(region.box).resize(size, Image.Resampling.LANCZOS)
    crop_mask = Image.fromarray((masks.hard[y0b:y1b, x0b:x1b] * 255).astype(np.uint8)).resize(
        size, Image.Resampling.BILINEAR)
    x, _ = pad_to_multiple(image_to_tensor(crop, m.device), capabilities(m).grid)   # (1, 3, Hp, Wp)
    if area == "whole":
        check_size(m, x.shape[-1], x.shape[-2], "inpainting the whole picture (use "
                   "inpaint_area='only_masked' for a local edit of a large image)")
    pad = (0, x.shape[-1] - size[0], 0, x.shape[-2] - size[1])
    mask_t = torch.from_numpy((np.asarray(crop_mask) >= 128).astype(np.float32))[None, None]
    if masks.blend is None:
        return x, F.pad(mask_t, pad).to(m.device), None
    blend_t = torch.from_numpy(np.ascontiguousarray(masks.blend[y0b:y1b, x0b:x1b]))[None, None]   # (1, 1, h, w)
    if tuple(blend_t.shape[-2:]) != (size[1], size[0]):
        blend_t = F.interpolate(blend_t, size=(size[1], size[0]), mode="bilinear", antialias=True,
                                align_corners=False).clamp(0, 1)
    return x, F.pad(mask_t, pad).to(m.device), F.pad(blend_t, pad).to(m.device)


def _initial_image(x, mask_t, content):
    """The picture the clean latent is encoded from: the original, or its hole filled from around."""
    if content != "fill":
        return x
    filled = fill_holes((x[0].permute(1, 2, 0).cpu().numpy() + 1) / 2, mask_t[0, 0].cpu().numpy())
    return torch.from_numpy(filled * 2 - 1).permute(2, 0, 1)[None].to(x)


def _start_latent(z_init, latent_mask, content, seed: int):
    """The clean latent one image starts from: latent noise (its own stream) or zeros in the hole."""
    if content == "latent_noise":
        noise = randn(z_init.shape, cpu_generator(stream_seed(seed, "latent_noise")), z_init.device, z_init.dtype)
        return z_init * (1 - latent_mask) + noise * latent_mask
    if content == "latent_nothing":
        return z_init * (1 - latent_mask)
    return z_init


def _conditioning(m, caps, x, mask_t, z_init, prompt, negative_prompt, vae_tile, clip_skip, networks: dict):
    """(cond, uncond). Dedicated models get mask + masked image concatenated (FACTS.md section 9,
    trap 6); a text or unconditional model gets only its own conditioning and blends latents."""
    if caps.family == "inpaint-sd":                                        # [z, mask, masked latent]
        c_text, u_text = text_conditioning(m, prompt, negative_prompt, clip_skip=clip_skip, size=tuple(x.shape[-2:]),
                                           **networks)
        mask_nearest = F.interpolate(mask_t, size=z_init.shape[-2:], mode="nearest")
        masked_latent = vae.encode(m, x * (mask_t < 0.5), tile=vae_tile)      # hole = 0 (grey)
        c_concat = [torch.cat([mask_nearest.to(masked_latent), masked_latent], dim=1)]
        if getattr(m, "conditioner", None) is not None:        # SDXL inpainting: both branches see the mask (A1111)
            return with_keys(c_text, c_concat=c_concat), with_keys(u_text, c_concat=c_concat)
        return {"c_concat": c_concat, "c_crossattn": [c_text]}, u_text      # u replaces c_crossattn only
    if caps.family == "inpaint-ldm":                                       # [z, masked latent, mask +-1]
        masked = (1 - mask_t) * (x + 1) / 2 * 2 - 1                           # hole = black (-1)
        masked_latent = vae.encode(m, masked, tile=vae_tile)
        mask_pm = F.interpolate(mask_t, size=z_init.shape[-2:], mode="nearest") * 2 - 1
        return {"c_concat": [torch.cat([masked_latent, mask_pm.to(masked_latent)], dim=1)]}, None
    if caps.prompt:
        return text_conditioning(m, prompt, negative_prompt, clip_skip=clip_skip, size=tuple(x.shape[-2:]),
                                 **networks)
    return None, None


@dataclass(frozen=True)
class PasteBack:
    """What every image of one inpainting call is pasted onto, computed once per call."""
    original_u8: np.ndarray          # (H, W, 3) the picture
    original: np.ndarray             # (H, W, 3) the same in [0, 1]
    hard: np.ndarray                 # (H, W) bool, True = repainted
    ring: np.ndarray                 # (H, W) bool, just outside the mask where the crop generated
    soft: np.ndarray                 # (H, W, 1) the paste-back weight (MaskPlan.paste), 0 outside


def _paste_target(picture, masks: MaskPlan, region: Region, ring_width: int) -> PasteBack:
    x0b, y0b, x1b, y1b = region.box
    original_u8 = np.asarray(picture)
    ring = outer_ring(masks.hard, ring_width)
    ring[:y0b] = ring[y1b:] = False                                          # where the crop generated
    ring[:, :x0b] = ring[:, x1b:] = False
    return PasteBack(original_u8, original_u8.astype(np.float32) / 255.0, masks.hard > 0.5, ring,
                     masks.paste[..., None])


def _paste_back(target: PasteBack, region: Region, decoded, color_match, params):
    """The decoded region back in the full picture: resized to its box, colour-matched on the ring
    just outside the mask, feathered inside the mask; every pixel outside the mask is the original's."""
    x0b, y0b, x1b, y1b = region.box
    gen = to_unit(decoded[..., :region.proc_h, :region.proc_w])             # (1, 3, ph, pw) in [0, 1]
    if (y1b - y0b, x1b - x0b) != (region.proc_h, region.proc_w):
        gen = _resize01(gen, (y1b - y0b, x1b - x0b))
    full = target.original.copy()
    full[y0b:y1b, x0b:x1b] = gen[0].permute(1, 2, 0).cpu().numpy()
    reports = _match_and_measure(full, target.original, target.ring, target.hard, color_match)
    soft = target.soft
    result = unit_to_uint8(target.original * (1 - soft) + reports.pop("_matched") * soft)
    result = np.where(soft > 0, result, target.original_u8)                  # outside: bit-exact original
    return attach_parameters(Image.fromarray(result, mode="RGB"), params, reports)


def _match_and_measure(generated: np.ndarray, original: np.ndarray, ring: np.ndarray, hard: np.ndarray,
                       color_match: bool) -> dict:
    """Colour-match `generated` to `original` on the outer ring and report the differences.

    The offset is the mean RGB difference original - generated on the ring (what the decoder and
    the new content shifted where the truth is known); it is applied only when it lowers the ring's
    mean CIEDE2000. Returns the reports plus "_matched", the corrected picture.
    """
    reports = {"delta_e_formula": "CIEDE2000", "mask_fraction": float(hard.mean())}
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
