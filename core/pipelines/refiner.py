"""The refiner as a second stage, AUTOMATIC1111's way (its `Refiner` / `Refiner switch at`).

The base model samples the first steps; at the switch the refiner model takes over the SAME
latent trajectory (the sampler's x, its sigmas and any multistep history) for the remaining
steps, with its own conditioning. This is the "ensemble of expert denoisers" use of SDXL's refiner
(Podell et al. 2023, Sec. 2.5), not sgm's scripts' img2img pass over the finished base latent.

    stage = refiner_stage(m, refiner, 0.8, prompt, negative_prompt, size=(h, w), steps=steps)
    denoise(m, c, u, settings, ..., refiner=stage)   # base for steps [0, k), refiner for [k, steps)

- The switch (A1111 with "Refiner switch by sampling steps"): the refiner runs the sampler steps i
  with i / steps >= switch_at, i.e. from k = ceil(switch_at * steps); switch_at 1.0 never switches,
  so the image is the base's alone and nothing about a refiner is recorded. (A1111's default switch
  compares the current timestep instead, (999 - t) / 1000 >= switch_at; for an even step list both
  agree up to one step.)
- The refiner's conditioning: core.pipelines.conditioning.text_conditioning on the refiner, for the
  same prompt (its <lora:...> tags removed: LoRAs are merged into the base only), negative prompt and
  size. An SDXL refiner reads an aesthetic score: 6 for the prompt and 2.5 for the negative prompt,
  as A1111 (sdxl_refiner_high/low_aesthetic_score) and sgm's sampling scripts use.
- Both models share the latent space and the noise schedule (checked): same latent channels and
  factor, same alphas_cumprod, same parameterization, same device.
- Recorded as A1111 does: `Refiner: name [hash], Refiner switch at: 0.8`.
"""
import math
from dataclasses import dataclass

import torch

from core.capabilities import capabilities
from core.lora import extract_lora_tags
from core.pipelines.conditioning import text_conditioning
from core.pipelines.defaults import check_size, model_name
from core.pipelines.infotext import cached_model_hash

DEFAULT_SWITCH_AT = 0.8                           # A1111's default "Refiner switch at"


@dataclass(frozen=True)
class RefinerStage:
    """The refiner, its conditioning (c, u) and where it takes over."""
    model: torch.nn.Module
    cond: object
    uncond: object
    switch_at: float                              # in (0, 1]: fraction of the steps the base samples

    def switch_step(self, steps: int) -> int:
        return switch_step(self.switch_at, steps)

    def switches(self, steps: int) -> bool:
        return self.switch_step(steps) < steps


def switch_step(switch_at: float, steps: int) -> int:
    """The first sampler step (0-based) the refiner runs: ceil(switch_at * steps) (steps: never)."""
    return min(steps, math.ceil(round(switch_at * steps, 9)))


def check_switch_at(switch_at) -> float:
    """switch_at as a float in (0, 1]; None = A1111's default 0.8."""
    if switch_at is None:
        return DEFAULT_SWITCH_AT
    if isinstance(switch_at, bool) or not isinstance(switch_at, (int, float)) or not 0 < switch_at <= 1:
        raise ValueError(f"refiner_switch_at must be a fraction of the steps in (0, 1] (A1111's 'Refiner switch "
                         f"at', e.g. 0.8: the refiner does the last 20%); got {switch_at!r}.")
    return float(switch_at)


def check_refiner(m, refiner) -> None:
    """A ValueError unless `refiner` can continue `m`'s latent trajectory."""
    if refiner is m:
        raise ValueError("the refiner is the base model itself; pick another model or no refiner.")
    caps, other = capabilities(m), capabilities(refiner)
    if not other.serves("txt2img"):
        raise ValueError(f"the refiner must be a text-to-image model; this one is a {other.family!r} model "
                         f"conditioned on {other.conditioning}.")
    if (caps.latent_channels, caps.factor) != (other.latent_channels, other.factor):
        raise ValueError(f"the refiner's latents ({other.latent_channels} channels, factor {other.factor}) do not "
                         f"match the base model's ({caps.latent_channels} channels, factor {caps.factor}).")
    if m.parameterization != refiner.parameterization:
        raise ValueError(f"the refiner predicts {refiner.parameterization!r} but the base model "
                         f"{m.parameterization!r}; both must use the same parameterization.")
    if m.alphas_cumprod.shape != refiner.alphas_cumprod.shape or not torch.allclose(
            m.alphas_cumprod.cpu().float(), refiner.alphas_cumprod.cpu().float(), rtol=1e-5, atol=1e-7):
        raise ValueError("the refiner was trained with another noise schedule (alphas_cumprod differ), so it "
                         "cannot continue the base model's sampling; pick a refiner of the same family.")
    device = next(m.parameters()).device
    if next(refiner.parameters()).device != device:
        raise ValueError(f"the refiner is on {next(refiner.parameters()).device} but the base model on {device}; "
                         "load both on the same device.")


def refiner_stage(m, refiner, switch_at, prompt: str, negative_prompt: str, size, *, clip_skip=None,
                  embeddings_dir=None) -> RefinerStage | None:
    """The second stage for txt2img of `size` (height, width), or None without a refiner."""
    if refiner is None:
        return None
    switch_at = check_switch_at(switch_at)
    check_refiner(m, refiner)
    check_size(refiner, size[1], size[0], "the refiner")
    text, _ = extract_lora_tags(prompt or "")
    cond, uncond = text_conditioning(refiner, text, negative_prompt, clip_skip=clip_skip, size=size,
                                     embeddings_dir=embeddings_dir)
    return RefinerStage(refiner, cond, uncond, switch_at)


def refiner_parameters(refiner, switch_at, steps: int) -> dict:
    """`Refiner` / `Refiner switch at` for the infotext, when the refiner took part in `steps`."""
    if refiner is None or switch_step(switch_at, steps) >= steps:
        return {}
    name, digest = model_name(refiner) or "refiner", cached_model_hash(getattr(refiner, "checkpoint_path", None))
    return {"refiner": f"{name} [{digest}]" if digest else name, "refiner_switch_at": switch_at}


class Handoff:
    """guided(x, t, **extra_args) of the base for sampler steps [0, switch), then the refiner's
    guided with its own extra_args (its cond, uncond and the same guidance scale). `following`
    (chained to the sampler's callback, as ScheduledConditioning) learns the step."""

    def __init__(self, base, refiner, refiner_args: dict, switch: int):
        self.base, self.refiner, self.refiner_args, self.switch = base, refiner, refiner_args, switch
        self.step = 0

    def following(self, callback):
        def step_done(i, total, x, pred_x0):
            self.step = i + 1
            if callback is not None:
                callback(i, total, x, pred_x0)
        return step_done

    def __call__(self, x, t, **extra_args):
        if self.step < self.switch:
            return self.base(x, t, **extra_args)
        return self.refiner(x, t, **self.refiner_args)
