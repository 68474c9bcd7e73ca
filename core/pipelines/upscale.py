"""Super-resolution with concat conditioning, tiled so that any size runs in bounded memory.

The low-resolution image, in [-1, 1] at the latent's size, is concatenated to the UNet input
(FACTS.md section 9):
* "upscale-ldm" (LDM-SR, bsr_sr): [z, LR]; no text, no guidance; DDIM with eta 1 by default;
* "upscale-sd" (SD x4 upscaler): [z, LR noised to `noise_level`], the level as the class label
  (c_adm) and the prompt through cross-attention; the same noised LR and level for both CFG halves.
The model's output is f times the input (the VAE's factor: 4 for both); a smaller `scale` resizes
that result down (Lanczos), as other web UIs' upscalers do.

Back-projection (Irani & Peleg 1991), `back_projection` rounds after decoding: the SR result, box
down-sampled f times, should give back the input; each round adds the bicubic up-sampling of what
they disagree on. The model's details stay, its drift in tone and colour goes. Off (0) for the
reference models, so that they reproduce the reference; our shapes-sr4x file asks for 2 in its
defaults (+4.6 dB on the evaluation photos, +2.9 dB on shapes scenes, weights/README.md).

Large images: the latent is denoised in overlapping tiles blended at EVERY step (tiled_unet.py),
then decoded by the tiled VAE with whole-image GroupNorm statistics (tiled_vae.py). The tile
sizes come from the memory planner unless given; out-of-memory retries with smaller tiles.
Interrupted runs raise core.samplers.SamplingInterrupted (its `.images` is empty).
"""

import math

import torch
import torch.nn.functional as F
from PIL import Image

from core.pipelines import vae
from core.pipelines.defaults import (MAX_UPSCALE_SIDE, first_stage_factor, model_defaults,
                                     unet_factor)
from core.pipelines.generation import (base_parameters, decode_callback, resolve_seed,
                                       resolve_settings, sampler_callback)
from core.pipelines.images import image_to_tensor, load_image, pad_to_multiple, tensor_to_images
from core.pipelines.infotext import attach_parameters
from core.pipelines.memory import budget_bytes, plan_tile, unet_peak_bytes
from core.pipelines.progress import Progress
from core.pipelines.tiled_unet import TiledModel
from core.pipelines.tiles import overlapping_tiles
from core.samplers import SamplingInterrupted, TIMESTEP_SAMPLERS, ddim_timesteps, ddpm_timesteps, sample
from core.samplers.noise import cpu_generator

UPSCALE_TASKS = ("upscale-ldm", "upscale-sd")


def plan_unet_tile(m, h: int, w: int, batch: int, budget: int | None = None) -> int:
    """The largest latent tile (a multiple of the UNet grid; at most the latent itself and
    max(2 x the training size, 64), as CompVis' LDM-SR notebook tiles at 2x) whose predicted UNet
    peak fits the memory budget."""
    align = unet_factor(m)
    largest = min(max(h, w), max(2 * m.config.image_size, 64))
    largest = math.ceil(largest / align) * align
    param = next(m.parameters())
    return plan_tile(lambda t: unet_peak_bytes(m, t, t, batch, param.dtype),
                     budget_bytes(param.device, budget), align, largest)


def sampler_steps(m, settings) -> int:
    """How many steps the sampler will report (DDIM/PLMS run more than `steps` when it does not
    divide the schedule length, FACTS.md section 7)."""
    if settings.sampler not in TIMESTEP_SAMPLERS:
        return settings.steps
    make = ddpm_timesteps if settings.sampler == "ddpm" else ddim_timesteps
    return len(make(m.num_timesteps, settings.steps))


BACK_PROJECTION_BAND = 64     # low-res rows per band: the temporaries stay small for any image size
MAX_BACK_PROJECTION = 16


def back_project(x: torch.Tensor, lr: torch.Tensor, rounds: int) -> torch.Tensor:
    """`rounds` rounds of iterative back-projection of x (1, 3, H, W) onto the low-res lr (1, 3, h, w),
    H = f h, both in [-1, 1]: x += bicubic_up(lr - box_down(x)). Returns a new float32 tensor.

    Done in bands of low-res rows with a 2-row halo (bicubic's reach), so the extra memory is a
    band's, not the image's; the result equals the whole-image computation."""
    f = x.shape[-1] // lr.shape[-1]
    if x.shape[-2:] != (lr.shape[-2] * f, lr.shape[-1] * f):
        raise ValueError(f"back_project: {tuple(x.shape[-2:])} is not a multiple of {tuple(lr.shape[-2:])}")
    x, lr = x.float().clone(), lr.float()
    h, halo = lr.shape[-2], 2
    for _ in range(rounds):
        residual = lr - F.avg_pool2d(x, f)                                       # (1, 3, h, w)
        for top in range(0, h, BACK_PROJECTION_BAND):
            bottom = min(top + BACK_PROJECTION_BAND, h)
            a, b = max(top - halo, 0), min(bottom + halo, h)
            up = F.interpolate(residual[:, :, a:b], scale_factor=f, mode="bicubic", align_corners=False)
            x[:, :, top * f:bottom * f] += up[:, :, (top - a) * f:(bottom - a) * f]
    return x


def _check_rounds(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BACK_PROJECTION:
        raise ValueError(f"back_projection must be a whole number of rounds in [0, {MAX_BACK_PROJECTION}]; "
                         f"got {value!r}.")
    return value


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The output size for an input of width x height at `scale` (rounded, at least 1 px)."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def _check_scale(value, f: int) -> float:
    if value is None:
        return float(f)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 < value <= f:
        raise ValueError(f"scale must be a number in (1, {f}] for this {f}x model (smaller scales resize its "
                         f"result down; for more, upscale the result again); got {value!r}.")
    return float(value)


def _check_tile(name, value, align) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % align:
        raise ValueError(f"{name} must be a positive multiple of {align} (input pixels = latent pixels); "
                         f"got {value!r}.")
    return value


def plan_tiles(m, h: int, w: int, tile: int | None = None, overlap: int | None = None, batch: int = 1,
               budget: int | None = None) -> tuple[int, int, int]:
    """The UNet tile plan for an (h, w) latent padded to the UNet grid: (tile, overlap, tiles per step).
    tile None = the largest that fits in memory for `batch`; overlap None = a quarter of the tile."""
    align = unet_factor(m)
    if tile is None:
        tile = plan_unet_tile(m, h, w, batch, budget)
    tile = _check_tile("tile", tile, align)
    if overlap is None:
        overlap = tile // 4 // align * align
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise ValueError(f"overlap must be a whole number in [0, tile={tile}); got {overlap!r}.")
    n_tiles = len(overlapping_tiles(h, w, tile, overlap, align)) if max(h, w) > tile else 1
    return tile, overlap, n_tiles


@torch.no_grad()
def upscale(m, image, tile=None, overlap=None, steps=None, seed=None, *, prompt="", negative_prompt="",
            sampler=None, guidance_scale=None, eta=None, karras=None, noise_level=None, back_projection=None,
            scale=None, tile_batch=1, vae_tile=None, vae_stat_tiles=None, memory_budget=None, callback=None,
            should_stop=None):
    """Upscale `image` (PIL, path or array) f times with a super-resolution model -> a PIL image.

    tile, overlap: UNet tile size and overlap in INPUT pixels (= latent pixels for these models);
        None = planned from free memory (overlap a quarter of the tile).
    noise_level: the x4 upscaler's augmentation level (default 20, at most the model's max).
    back_projection: rounds of back-projection onto the input after decoding (None = the model's
        default: 0 unless its file says otherwise).
    scale: output side / input side, in (1, f] (None = f, the model's own factor).
    vae_tile: VAE core size in latent pixels (None = only when the whole decode does not fit, 0 = never).
    vae_stat_tiles: tiles measuring the tiled VAE's shared GroupNorm statistics (None = all: exact,
        about (GroupNorms / 2) decoder passes; k = k tiles spread over the image: cheaper, an estimate).
    memory_budget: bytes a tile may use (default 60% of the free memory).
    Other arguments as txt2img; prompts only for "upscale-sd".
    """
    # 1. Check the model and the inputs.
    if m.task not in UPSCALE_TASKS:
        raise ValueError(f"upscale needs a super-resolution model ({' or '.join(UPSCALE_TASKS)}); this "
                         f"is a {m.task!r} model. For a larger picture from it, use txt2img at a larger "
                         "size or img2img.")
    if m.task == "upscale-ldm":
        if prompt or negative_prompt:
            raise ValueError("this super-resolution model (LDM-SR) takes no prompt; leave prompt empty.")
        if guidance_scale not in (None, 1, 1.0):
            raise ValueError("LDM-SR has no unconditional mode, so guidance_scale must be 1 (or None).")
    defaults = model_defaults(m)
    settings = resolve_settings(defaults, sampler, karras, steps, guidance_scale, eta)
    seed = resolve_seed(seed)
    rounds = _check_rounds(defaults.back_projection if back_projection is None else back_projection)
    picture = load_image(image)
    f, align = first_stage_factor(m), unet_factor(m)
    scale = _check_scale(scale, f)
    out_w, out_h = picture.width * f, picture.height * f
    if max(out_w, out_h) > MAX_UPSCALE_SIDE:
        raise ValueError(f"the result would be {out_w}x{out_h}; upscale makes at most {MAX_UPSCALE_SIDE} px "
                         f"per side, so give an image of at most {MAX_UPSCALE_SIDE // f} px per side.")
    param = next(m.parameters())
    lr, _ = pad_to_multiple(image_to_tensor(picture, param.device, param.dtype), align)  # (1, 3, h, w)
    h, w = lr.shape[-2:]

    # 2. Conditioning: the low-res image concatenated to z (noised, with its level, for the x4 model).
    if m.task == "upscale-ldm":
        cond, uncond, level = {"c_concat": [lr]}, None, None
    else:
        level = defaults.noise_level if noise_level is None else noise_level
        max_level = m.low_scale_model.max_noise_level
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= max_level:
            raise ValueError(f"noise_level must be a whole number in [0, {max_level}]; got {level!r}.")
        x_aug, levels = m.low_scale_model(lr.float(), torch.tensor([level], device=lr.device),
                                          generator=cpu_generator(seed))
        c_text = m.get_learned_conditioning([prompt or ""])
        uncond = m.get_learned_conditioning([negative_prompt or ""])
        cond = {"c_concat": [x_aug.to(param.dtype)], "c_crossattn": [c_text], "c_adm": levels}

    # 3. Tiles: planned from memory unless given.
    guided = uncond is not None and settings.guidance_scale != 1.0
    tile, overlap, _ = plan_tiles(m, h, w, tile, overlap, (2 if guided else 1) * max(1, int(tile_batch)),
                                  memory_budget)
    state = {"step": 0, "total": sampler_steps(m, settings)}

    def on_tile(done, n_tiles):
        if callback is not None:
            callback(Progress("sample", state["step"], state["total"], tile=done, tiles=n_tiles))

    step_report = sampler_callback(m, callback, 0, 1)

    def on_step(i, total, x, pred_x0):
        state.update(step=i + 1, total=total)
        if step_report is not None:
            step_report(i, total, x, pred_x0)

    model = TiledModel(m, tile, overlap, tile_batch, on_tile) if max(h, w) > tile else m

    # 4. Sample the whole latent (its noise drawn once from the seed, so tiling does not change it).
    try:
        z = sample(model, cond, uncond, settings.guidance_scale, settings.steps, settings.sampler,
                   settings.eta, shape=(1, m.config.channels, h, w), seed=seed, callback=on_step,
                   karras=settings.karras, should_stop=should_stop)
    except SamplingInterrupted as stop:
        stop.images = []
        raise

    # 5. Decode (tiled when large), back-project onto the input, crop the padding, record the parameters.
    x = vae.decode(m, z, tile=vae_tile, stat_tiles=vae_stat_tiles, on_tile=decode_callback(callback, 0, 1))
    if rounds:
        x = back_project(x, lr, rounds)
    result = tensor_to_images(x[..., :out_h, :out_w])[0]
    if scale != f:
        result = result.resize(scaled_size(picture.width, picture.height, scale), Image.Resampling.LANCZOS)
    params = base_parameters(m, "upscale", settings, seed, *result.size, prompt, negative_prompt)
    params.update(tile=tile, overlap=overlap, upscale=float(scale), noise_level=level,
                  back_projection=rounds or None)
    return attach_parameters(result, params)
