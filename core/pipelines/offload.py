"""`--medvram`-style offloading (AUTOMATIC1111's, its sd_hijack / lowvram "medvram" idea): the text
encoders and the VAE live in CPU memory and visit the GPU only while they run, so an SDXL model
(UNet 2.6 G parameters, text encoders 0.8 G, VAE 0.08 G) fits a smaller card.

    enable_offload(m, "cuda")      # text encoders + VAE to the CPU; the UNet stays on the GPU
    use_part(m, "text")            # before encoding prompts: the text encoders on the GPU, the VAE off
    use_part(m, "unet")            # before sampling: both off the GPU (their memory is free for the UNet)
    use_part(m, "vae")             # before encoding / decoding images: the VAE on the GPU, the text off

The pipelines call use_part at each of their steps (conditioning.py, denoise.py, vae.py); on a
model without offloading it does nothing. On the CPU there is nothing to offload: enable_offload
is a no-op there (and says so by returning False). Numerics do not change: the same weights run the
same operations, only their home changes between steps.
"""
from dataclasses import dataclass, field

import torch

from core.models.clip_text import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder
from core.models.sdxl_conditioner import GeneralConditioner

PARTS = ("text", "unet", "vae")


@dataclass
class Offload:
    """Where m's movable parts run (device) and wait (storage); `history`: the parts used, in order."""
    device: torch.device
    storage: torch.device = torch.device("cpu")
    resident: str | None = None
    history: list = field(default_factory=list)


def _movable(m) -> dict:
    """The parts that move: "vae" (the first stage) and "text", the frozen text encoders (SDXL's
    conditioner, SD's CLIP / OpenCLIP); the small jointly trained conditioners (class, layout, LDM's
    transformer, the semantic rescaler) stay with the UNet."""
    parts = {"vae": m.first_stage_model}
    text = getattr(m, "conditioner", None) or getattr(m, "cond_stage_model", None)
    if isinstance(text, (GeneralConditioner, FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder)):
        parts["text"] = text
    return parts


def enable_offload(m, device) -> bool:
    """Keep m's text encoders and VAE on the CPU between uses; True when enabled (CUDA devices only)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    state = Offload(device)
    for module in _movable(m).values():
        module.to(state.storage)
    m.__dict__["offload"] = state
    return True


def use_part(m, part: str) -> None:
    """Bring `part` ("text", "unet" or "vae") of an offloading model onto its device, the other movable
    part back to storage. No-op for a model without offloading."""
    state = getattr(m, "offload", None)
    if not isinstance(state, Offload):
        return
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}; got {part!r}")
    state.history.append(part)
    if state.resident == part:
        return
    for name, module in _movable(m).items():
        module.to(state.device if name == part else state.storage)
    if state.device.type == "cuda" and state.resident in ("text", "vae"):
        torch.cuda.empty_cache()                         # hand the freed blocks to the next part
    state.resident = part
