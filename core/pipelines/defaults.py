"""What a pipeline uses when the caller gives None, and the sizes a model can produce.

Order of precedence, per field: the caller's value; the model file's "ldm_studio_defaults"
metadata (JSON {"sampler", "karras", "steps", "guidance_scale", "eta", "width", "height",
"noise_level", "back_projection"}, any subset); the reference defaults for the model's task below
(FACTS.md section 7: SD1 / LDM text 7.5, SD2 v-models 9, 50 DDIM steps, eta 1.0 for the LDM
super-resolution notebook and the SD2 inpainting demo, noise level 20 for the x4 upscaler).
"""

import json
import warnings
from dataclasses import dataclass, fields, replace

from core.capabilities import capabilities

METADATA_DEFAULTS = "ldm_studio_defaults"
METADATA_NAME = "ldm_studio_name"
VERSION = "ldm-studio 0.1"

# Largest latent side run as ONE piece (txt2img, img2img, inpainting of the whole picture): 256
# latent pixels is 2048 px for an f=8 model. Bigger images go through `upscale` (tiled) or
# inpaint_area="only_masked".
MAX_LATENT_SIDE = 256
# Largest upscale output side: tiles bound the memory, but not the time or the result's size.
MAX_UPSCALE_SIDE = 16384


@dataclass(frozen=True)
class Defaults:
    sampler: str = "ddim"              # a key of core.samplers.SAMPLERS
    karras: bool = False               # Karras sigmas (sigma-space samplers only)
    steps: int = 50
    guidance_scale: float = 7.5        # classifier-free guidance scale; 1 = no guidance
    eta: float = 0.0                   # DDIM eta (0 = deterministic)
    width: int = 512                   # pixels
    height: int = 512
    noise_level: int = 20              # x4 upscaler: noise augmentation level of the low-res image
    back_projection: int = 0           # super-resolution: rounds of back-projection onto the input
    cpu_bf16: bool = False             # a float32 model denoises under bf16 autocast on CPUs with native
                                       # bf16 (core.speed.cpu_bf16_autocast): only files whose quality was
                                       # measured that way say so (shapes-sr4x: within 0.01 dB, 1.8x faster)


def first_stage_factor(m) -> int:
    """f: image pixels per latent pixel along a side."""
    return capabilities(m).factor


def unet_factor(m) -> int:
    """The UNet halves the latent len(channel_mult) - 1 times, so latent sides must divide by this."""
    return 2 ** (len(m.config.unet.channel_mult) - 1)


def size_multiple(m) -> int:
    """Image sides must be multiples of f * 2^(UNet levels - 1): each UNet down-sampling halves the
    latent and the up path concatenates skips of the same size (SD 1/2: 8 * 8 = 64 px)."""
    return capabilities(m).grid


def _task_defaults(cfg) -> Defaults:
    caps = capabilities(cfg)
    base = Defaults(width=caps.native_size, height=caps.native_size)     # the training resolution
    family, kind = caps.family, caps.conditioning
    if family == "upscale-ldm":
        return replace(base, guidance_scale=1.0, eta=1.0)        # LDM-SR notebook: DDIM, eta 1, no CFG
    if family == "upscale-sd":
        return replace(base, guidance_scale=9.0)                 # SD x4 demo: scale 9, noise level 20
    if family == "inpaint-sd":
        return replace(base, guidance_scale=7.5, eta=1.0)        # SD2 inpainting demo: eta 1
    if kind == "class" and caps.guidance:
        return replace(base, guidance_scale=3.0)                 # cin256-v2 notebook: 3.0
    if kind == "layout":
        return replace(base, guidance_scale=3.0)
    if not caps.guidance:
        return replace(base, guidance_scale=1.0)                 # no unconditional branch: no CFG
    return replace(base, guidance_scale=9.0 if cfg.parameterization == "v" else 7.5)


def model_defaults(m, metadata: dict | None = None) -> Defaults:
    """The model's defaults: its file's "ldm_studio_defaults" over the task's reference defaults.
    For a loaded model, or for its config and the file's metadata (the UI reads them from the
    file's header, before loading anything)."""
    cfg = getattr(m, "config", m)
    base = _task_defaults(cfg)
    raw = (metadata if metadata is not None else getattr(m, "metadata", None) or {}).get(METADATA_DEFAULTS)
    if not raw:
        return base
    try:
        given = json.loads(raw)
        if not isinstance(given, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        warnings.warn(f"ignoring the model file's {METADATA_DEFAULTS} metadata ({e}); using the "
                      "reference defaults", stacklevel=3)
        return base
    known = {f.name for f in fields(Defaults)}
    return replace(base, **{k: v for k, v in given.items() if k in known and v is not None})


def model_name(m) -> str | None:
    """The display name: metadata "ldm_studio_name", else the file's stem, else None."""
    meta = getattr(m, "metadata", None) or {}
    if meta.get(METADATA_NAME):
        return meta[METADATA_NAME]
    path = getattr(m, "checkpoint_path", None)
    if path:
        return str(path).replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return None


def check_size(m, width, height, what: str = "size") -> tuple[int, int]:
    """Validate a requested image size against the model's grid; ValueError names the nearest valid ones."""
    grid = size_multiple(m)
    out = []
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number of pixels; got {value!r}.")
        if value <= 0:
            raise ValueError(f"{name} must be positive; got {value}.")
        if value % grid:
            lower, upper = value // grid * grid, (value // grid + 1) * grid
            nearest = f"{lower} or {upper}" if lower > 0 else f"{upper}"
            raise ValueError(f"{name} {value} is not a multiple of {grid} (this model's grid: VAE factor "
                             f"{first_stage_factor(m)} x UNet down-sampling {unet_factor(m)}); "
                             f"nearest valid {name}: {nearest}.")
        out.append(value)
    limit = MAX_LATENT_SIDE * first_stage_factor(m)
    if max(out) > limit:
        raise ValueError(f"{out[0]}x{out[1]} is too large for {what}: at most {limit} px per side run as "
                         "one piece on this model; make it smaller, or generate small and use upscale "
                         "(tiled) for a large result.")
    return out[0], out[1]
