"""What every pipeline shares around the latent core: seeds, the output's decode, the parameters
recorded on each image, and what an interrupted run hands back.

Seeds: image i gets seed + i and its own CPU generator (core/pipelines/denoise.py), so `n=1,
seed=s + i` reproduces image i exactly, whatever the batch size. seed=None (or -1) draws a random
32-bit seed, which is recorded like any other.

Interruption: when `should_stop` is set, the pipeline raises core.samplers.SamplingInterrupted
with `.images` (the finished images, each with its parameters) and `.partial` (the interrupted
batch decoded from its latest clean-latent estimate, marked "interrupted" in its parameters).
"""
import random

import torch

from core.pipelines import vae
from core.pipelines.defaults import VERSION, model_name
from core.pipelines.images import tensor_to_images
from core.pipelines.infotext import attach_parameters, cached_model_hash
from core.pipelines.progress import Progress
from core.samplers import SamplingInterrupted, SamplingSettings
from core.samplers.settings import whole_number

MAX_SEED = 2 ** 63 - 1
MAX_BATCH_SIZE = 64
OUTPUTS = ("image", "latent")


def resolve_seed(seed) -> int:
    """The caller's seed, or a random one (recorded with the image)."""
    if seed is None or (type(seed) is int and seed == -1):
        return random.SystemRandom().randrange(2 ** 32)                       # A1111: -1 = random
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number in [0, 2^63 - 1], or None / -1 for a random one; "
                         f"got {seed!r}.")
    return seed


def resolve_seeds(seed, n) -> tuple[int, ...]:
    """The n images' seeds: seed, seed + 1, ... (a random first one for None / -1)."""
    n = whole_number("n (the number of images)", n, minimum=1)
    first = resolve_seed(seed)
    if first + n - 1 > MAX_SEED:
        raise ValueError(f"seed + n - 1 must stay below 2^63; got seed {first} and n {n}.")
    return tuple(first + i for i in range(n))


def check_batch_size(batch_size) -> int:
    """Images per UNet batch (the memory-for-speed trade; results do not depend on it)."""
    return whole_number("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)


def check_output(output) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"output must be 'image' (PIL images with their parameters) or 'latent' (the "
                         f"latents, for a further pass); got {output!r}.")
    return output


def base_parameters(m, task: str, settings: SamplingSettings, seed: int, width: int, height: int,
                    prompt: str = "", negative_prompt: str = "") -> dict:
    """The parameters recorded on an image (infotext.PARAMETERS keys)."""
    return {"prompt": prompt, "negative_prompt": negative_prompt, "steps": settings.steps,
            "sampler": settings.sampler, "karras": settings.karras, "scheduler": settings.scheduler,
            "guidance_scale": settings.guidance_scale, "seed": seed, "width": width, "height": height,
            "model_hash": cached_model_hash(getattr(m, "checkpoint_path", None)), "model": model_name(m),
            "rng": "CPU", "eta": settings.eta if settings.sampler == "ddim" and settings.eta else None,
            "task": task, "version": VERSION}


@torch.no_grad()
def decode(m, z: torch.Tensor, vae_tile=None, callback=None, images: int = 1, stat_tiles=vae.STAT_TILES,
           window=None) -> list:
    """Latents (B, C, h, w) -> decoded float32 images (1, 3, H, W) in [-1, 1], one at a time (the
    VAE's memory is planned per image); vae_tile, stat_tiles, window as core.pipelines.vae.decode."""
    out = []
    for i in range(z.shape[0]):
        on_tile = None if callback is None else (
            lambda done, total, i=i: callback(Progress("decode", done, total, i, images)))
        out.append(vae.decode(m, z[i:i + 1], tile=vae_tile, stat_tiles=stat_tiles, on_tile=on_tile, window=window))
    return out


def plain_images(m, z, params_for, vae_tile=None, callback=None) -> list:
    """Decoded latents as PIL images carrying params_for(i) (truncated to uint8, as saved)."""
    return [attach_parameters(tensor_to_images(x)[0], params_for(i))
            for i, x in enumerate(decode(m, z, vae_tile, callback, images=z.shape[0]))]


def interrupted(m, stop: SamplingInterrupted, record, params_for, vae_tile=None) -> SamplingInterrupted:
    """Fill in what an interrupted run made: `.images` = record(finished latents), `.partial` = the
    interrupted batch decoded from its pred_x0 (parameters marked "interrupted at step k of n")."""
    stop.images = record(stop.latents) if stop.latents is not None else []
    if stop.pred_x0 is not None:
        done = 0 if stop.latents is None else stop.latents.shape[0]
        note = f"interrupted at step {stop.step} of {stop.total}"
        stop.partial = [attach_parameters(tensor_to_images(x)[0], {**params_for(done + i), "interrupted": note})
                        for i, x in enumerate(decode(m, stop.pred_x0.to(m.dtype), vae_tile))]
    return stop
