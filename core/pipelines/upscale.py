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

Large images: the latent is denoised in overlapping tiles blended at EVERY step (tiling.py), the
tile the fastest that fits in memory (plan_upscale). The decoder's self-attention runs in windows
(VAE_WINDOW latent pixels: linear, not quadratic, in the area), so the whole latent decodes in one
pass with exact GroupNorm statistics when it fits; otherwise the tiled VAE shares whole-image
statistics (tiled_vae.py). Out-of-memory retries with smaller tiles.
A float32 model whose file says so (its `cpu_bf16` default: shapes-sr4x) denoises under bfloat16
autocast on a CPU with native bf16 (AVX512-BF16 / AMX; speed.cpu_bf16_autocast; LDM_CPU_BF16=0 turns
it off); other checkpoints (the SD x4 upscaler) keep float32 numerics; the decoder stays float32, since in bf16 it
cost 0.06 dB on a 1024x1024 shapes scene. shapes-sr4x at 256 -> 1024: UNet step 2.27 -> 1.43 CPU s,
PSNR on the evaluation photos and on that scene within 0.01 dB of float32 (bench/README.md).
Interrupted runs raise core.samplers.SamplingInterrupted (its `.images` is empty).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from core.capabilities import capabilities
from core.pipelines.defaults import MAX_UPSCALE_SIDE, VERSION, model_defaults
from core.pipelines.denoise import denoise
from core.pipelines.generation import base_parameters, decode, interrupted, resolve_seed
from core.pipelines.images import image_to_tensor, load_image, pad_to_multiple, tensor_to_images
from core.pipelines.infotext import attach_parameters
from core.pipelines.memory import budget_bytes, tile_cost, unet_peak_bytes
from core.pipelines.offload import use_part
from core.pipelines.vae import decode_work, plan_decode_tile
from core.pipelines.progress import Progress
from core.pipelines.tiles import tile_count
from core.pipelines.tiling import TileState, tiled
from core.samplers import SamplingInterrupted, SamplingSettings, schedule_length
from core.samplers.noise import cpu_generator, stream_seed
from core.samplers.settings import whole_number
from core.speed import cpu_bf16_autocast

BACK_PROJECTION_BAND = 64     # low-res rows per band: the temporaries stay small for any image size
MAX_BACK_PROJECTION = 16
MAX_TILE_BATCH = 4            # tiles per UNet call at most (one call's fixed cost shared)
VAE_WINDOW = 64               # decoder attention windows, latent pixels (vae.decode's window)


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


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The output size for an input of width x height at `scale` (rounded, at least 1 px)."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_scale(value, f: int) -> float:
    if value is None:
        return float(f)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 < value <= f:
        raise ValueError(f"scale must be a number in (1, {f}] for this {f}x model (smaller scales resize its "
                         f"result down; for more, upscale the result again); got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class UpscalePlan:
    """What an upscale will do, decided before it runs (the pipeline runs exactly this; the UI shows it)."""
    width: int                  # the input
    height: int
    out_width: int              # the result, after `scale`
    out_height: int
    factor: int                 # the model's own factor f
    scale: float
    latent: tuple[int, int]     # (h, w): the input padded to the UNet grid (= latent pixels)
    tile: int                   # UNet tile side, latent pixels (>= the latent: one piece)
    overlap: int
    tiles: int                  # tiles per network evaluation
    steps: int                  # sampler steps as reported (DDIM may run more than asked)
    guided: bool                # two halves per evaluation (classifier-free guidance)
    tile_batch: int = 1         # tiles per UNet call
    unet_work: int = 0          # relative cost (MACs, memory.tile_cost) of one network evaluation
    vae_tile: int = 0           # VAE core size, latent pixels (0: the whole latent at once)
    vae_window: int | None = None   # decoder attention windows, latent pixels (None: whole tiles)
    decode_work: int = 0        # pixels the decoder runs, counting tile context and statistics passes

    @property
    def unet_pixel_steps(self) -> int:
        """Latent pixels the UNet processes over the whole run (tiles x steps x tile area x CFG halves)."""
        area = min(self.tile, self.latent[0]) * min(self.tile, self.latent[1])
        return self.steps * self.tiles * area * (2 if self.guided else 1)

    @property
    def sampling_work(self) -> int:
        """The UNet's relative cost over the whole run (steps x CFG halves x unet_work): with
        decode_work, the two units a time estimate scales with."""
        return self.steps * (2 if self.guided else 1) * self.unet_work

    @property
    def decoded_pixels(self) -> int:
        """Pixels of the model's full-size output (what back-projection touches)."""
        return self.latent[0] * self.latent[1] * self.factor ** 2


def plan_upscale(model_or_config, width: int, height: int, settings: SamplingSettings, *, tile=None,
                 overlap=None, scale=None, tile_batch=None, vae_tile=None, dtype=torch.float32, device="cpu",
                 memory_budget=None) -> UpscalePlan:
    """The plan for a width x height input (checked: ValueError in words). tile / overlap in input
    pixels (= latent pixels for these models); tile None = the FASTEST tile whose predicted UNet
    peak fits the memory budget (memory.tile_cost: fewer, larger tiles redo less overlap and pay
    less per call, until the attention's quadratic cost outweighs that); overlap None = a quarter
    of the tile; tile_batch None = as many tiles per UNet call as fit, at most MAX_TILE_BATCH;
    vae_tile None = untiled when the decode (attention in VAE_WINDOW windows) fits the budget."""
    cfg = getattr(model_or_config, "config", model_or_config)
    caps = capabilities(cfg).require("upscale")
    f, align = caps.factor, caps.grid // caps.factor
    scale = check_scale(scale, f)
    if max(width, height) * f > MAX_UPSCALE_SIDE:
        raise ValueError(f"the result would be {width * f}x{height * f}; upscale makes at most "
                         f"{MAX_UPSCALE_SIDE} px per side, so give an image of at most {MAX_UPSCALE_SIDE // f} "
                         "px per side.")
    h, w = -(-height // align) * align, -(-width // align) * align
    guided = caps.guidance and settings.guidance_scale != 1.0
    halves, budget = 2 if guided else 1, budget_bytes(device, memory_budget)
    if tile is None:
        tile = _fastest_tile(cfg, h, w, align, halves, dtype, budget, overlap)
    if isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0 or tile % align:
        raise ValueError(f"tile must be a positive multiple of {align} (input pixels = latent pixels); "
                         f"got {tile!r}.")
    overlap = tile // 4 // align * align if overlap is None else overlap
    whole_number("overlap", overlap, 0, tile - 1)
    tiles = tile_count(h, w, tile, overlap, align) if max(h, w) > tile else 1
    th, tw = min(tile, h), min(tile, w)
    if tile_batch is None:
        tile_batch = min(tiles, MAX_TILE_BATCH)
        while tile_batch > 1 and unet_peak_bytes(cfg, th, tw, halves * tile_batch, dtype) > budget:
            tile_batch -= 1
    whole_number("tile_batch", tile_batch, 1)
    if vae_tile is None:
        vae_tile = plan_decode_tile(cfg, h, w, 1, budget, VAE_WINDOW, dtype, device)
    return UpscalePlan(width, height, *scaled_size(width, height, scale), f, scale, (h, w), tile, overlap, tiles,
                       schedule_length(settings, cfg.timesteps), guided, tile_batch,
                       tile_cost(cfg, th, tw, tiles, tile_batch), vae_tile, VAE_WINDOW,
                       decode_work(cfg, h, w, vae_tile))


def _fastest_tile(cfg, h: int, w: int, align: int, halves: int, dtype, budget: int, overlap=None) -> int:
    """The tile side (a multiple of align, up to the latent's longer side) of least predicted time
    whose UNet peak fits the budget; the smallest tile when none fits (the retry has the last word)."""
    best, smallest = None, max(align, 16 // align * align)
    for t in range(smallest, -(-max(h, w) // align) * align + 1, align):
        th, tw = min(t, h), min(t, w)
        if unet_peak_bytes(cfg, th, tw, halves, dtype) > budget:
            break
        ov = t // 4 // align * align if overlap is None else min(overlap, t - align)
        n = tile_count(h, w, t, ov, align) if max(h, w) > t else 1
        cost = tile_cost(cfg, th, tw, n)
        if best is None or cost < best[0]:
            best = (cost, t)
    return smallest if best is None else best[1]


@torch.no_grad()
def upscale(m, image, tile=None, overlap=None, steps=None, seed=None, *, prompt="", negative_prompt="",
            sampler=None, guidance_scale=None, eta=None, karras=None, noise_level=None, back_projection=None,
            scale=None, tile_batch=None, vae_tile=None, vae_stat_tiles=None, memory_budget=None, callback=None,
            should_stop=None):
    """Upscale `image` (PIL, path or array) f times with a super-resolution model -> a PIL image.

    tile, overlap: UNet tile size and overlap in INPUT pixels (= latent pixels for these models);
        None = planned (plan_upscale: the fastest tile that fits in memory; overlap a quarter of it).
    tile_batch: tiles per UNet call (None = planned, at most MAX_TILE_BATCH).
    noise_level: the x4 upscaler's augmentation level (default 20, at most the model's max).
    back_projection: rounds of back-projection onto the input after decoding (None = the model's
        default: 0 unless its file says otherwise).
    scale: output side / input side, in (1, f] (None = f, the model's own factor).
    vae_tile: VAE core size in latent pixels (None = only when the whole decode does not fit, 0 = never);
        the decoder's attention runs in windows of VAE_WINDOW latent pixels either way.
    vae_stat_tiles: tiles measuring the tiled VAE's shared GroupNorm statistics (None = all: exact,
        about (GroupNorms / 2) decoder passes; k = k tiles spread over the image: cheaper, an estimate).
    memory_budget: bytes a tile may use (default 60% of the free memory).
    Other arguments as txt2img; prompts only for the SD x4 upscaler.
    """
    # 1. Resolve: the model can do it; settings, seed and the tile plan, checked once.
    caps = capabilities(m).require("upscale")
    if not caps.prompt and (prompt or negative_prompt):
        raise ValueError("this super-resolution model (LDM-SR) takes no prompt; leave prompt empty.")
    if not caps.guidance and guidance_scale not in (None, 1, 1.0):
        raise ValueError("LDM-SR has no unconditional mode, so guidance_scale must be 1 (or None).")
    defaults = model_defaults(m)
    settings = SamplingSettings.resolve(defaults, sampler, karras, steps, guidance_scale, eta)
    seed = resolve_seed(seed)
    rounds = whole_number("back_projection", defaults.back_projection if back_projection is None
                          else back_projection, 0, MAX_BACK_PROJECTION)
    picture = load_image(image)
    plan = plan_upscale(m, picture.width, picture.height, settings, tile=tile, overlap=overlap, scale=scale,
                        tile_batch=tile_batch, vae_tile=vae_tile, dtype=m.dtype, device=m.device,
                        memory_budget=memory_budget)
    align = caps.grid // caps.factor                                        # UNet grid, in latent pixels
    lr, _ = pad_to_multiple(image_to_tensor(picture, m.device, m.dtype), align)   # (1, 3, h, w)

    # 2. Conditioning: the low-res image concatenated to z (noised, with its level, for the x4 model).
    cond, uncond, level = _conditioning(m, caps, lr, defaults, noise_level, seed, prompt, negative_prompt)

    def params_for(_):
        params = base_parameters(m, "upscale", settings, seed, plan.out_width, plan.out_height, prompt,
                                 negative_prompt)
        return {**params, "tile": plan.tile, "overlap": plan.overlap, "upscale": plan.scale, "noise_level": level,
                "back_projection": rounds or None}

    def record(z):
        x = decode(m, z, plan.vae_tile, callback, stat_tiles=vae_stat_tiles, window=plan.vae_window)[0]
        return [_finish(x, lr, rounds, plan, params_for(0))]

    # 3. Denoise the whole latent, tile by tile at every step (its noise drawn once from the seed).
    on_step, on_tile = _reporters(m, callback, plan)
    wrap = None if plan.tiles == 1 else tiled(plan.tile, plan.overlap, align, TileState(plan.tile), plan.tile_batch,
                                               on_tile)
    try:
        with cpu_bf16_autocast(m.device, m.dtype, defaults.cpu_bf16):
            z = denoise(m, cond, uncond, settings, (1, caps.latent_channels, *plan.latent), [cpu_generator(seed)],
                        wrap=wrap, callback=on_step, should_stop=should_stop)
    except SamplingInterrupted as stop:
        stop.latents = None
        raise interrupted(m, stop, record, params_for, plan.vae_tile)

    # 4. Decode (tiled when large), back-project onto the input, crop, resize to `scale`, record.
    return record(z)[0]


def _conditioning(m, caps, lr, defaults, noise_level, seed, prompt, negative_prompt):
    """(cond, uncond, noise level). LDM-SR: [z, LR]. SD x4: [z, LR noised to the level] with the
    level as c_adm; the augmentation noise has its own stream (not x_T's)."""
    if caps.family == "upscale-ldm":
        return {"c_concat": [lr]}, None, None
    level = defaults.noise_level if noise_level is None else noise_level
    level = whole_number("noise_level", level, 0, m.low_scale_model.max_noise_level)
    x_aug, levels = m.low_scale_model(lr.float(), torch.tensor([level], device=lr.device),
                                      generator=cpu_generator(stream_seed(seed, "noise_augmentation")))
    use_part(m, "text")
    cond = {"c_concat": [x_aug.to(m.dtype)], "c_crossattn": [m.get_learned_conditioning([prompt or ""])],
            "c_adm": levels}
    return cond, m.get_learned_conditioning([negative_prompt or ""]), level


def _finish(x, lr, rounds: int, plan: UpscalePlan, params: dict) -> Image.Image:
    if rounds:
        x = back_project(x, lr, rounds)
    out_h, out_w = plan.height * plan.factor, plan.width * plan.factor
    result = tensor_to_images(x[..., :out_h, :out_w])[0]
    if plan.scale != plan.factor:
        result = result.resize((plan.out_width, plan.out_height), Image.Resampling.LANCZOS)
    return attach_parameters(result, params)


def _reporters(m, callback, plan: UpscalePlan):
    """(after each step, after each tile batch within a step) -> Progress reports; (None, None) if no callback."""
    if callback is None:
        return None, None
    state = {"step": 0}

    def on_step(i, total, x, pred_x0):
        state["step"] = i + 1
        callback(Progress("sample", i + 1, total, latent=pred_x0, model=m))

    def on_tile(done, n_tiles):
        callback(Progress("sample", state["step"], plan.steps, tile=done, tiles=n_tiles))
    return on_step, on_tile


def lanczos(image, scale: float = 4.0, max_side: int = MAX_UPSCALE_SIDE) -> Image.Image:
    """The fast, non-diffusion upscaler: Lanczos resampling by `scale` in (1, 8], with its parameters."""
    picture = load_image(image)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 1 < scale <= 8:
        raise ValueError(f"scale must be a number in (1, 8]; got {scale!r}.")
    width, height = scaled_size(picture.width, picture.height, scale)
    if max(width, height) > max_side:
        raise ValueError(f"the result would be {width}x{height}; at most {max_side} px per side.")
    result = picture.resize((width, height), Image.Resampling.LANCZOS)
    return attach_parameters(result, {"prompt": "", "width": width, "height": height, "upscale": float(scale),
                                      "upscaler": "Lanczos", "task": "upscale", "version": VERSION})
