"""What a model can do: ONE frozen record, derived from its config, read by every layer.

    from core.capabilities import capabilities
    caps = capabilities(m)                     # a LatentDiffusion, or its config (no weights needed)
    caps.tasks        # ("txt2img", "img2img", "inpaint") for a text model
    caps.require("upscale")                    # ValueError naming what this model is for
    caps.training_stage                        # "autoencoder" or "ldm": which training loop trains it

The UI's model pickers (from a file's header, before loading), the pipelines' checks, training,
evaluation and the CLI all ask this record, so "which tab lists this model" and "which pipeline
runs it" cannot disagree.

Conditioning kinds (what the UNet is conditioned on):
    text           a prompt through cross-attention (CLIP, OpenCLIP, LDM's jointly trained transformer;
                   SDXL's GeneralConditioner: two CLIPs plus the size / crop / aesthetic vector)
    class          a class label (cin256)          layout   boxes of classes (layout-to-image)
    none           unconditional                   lr_image the low-res image, concatenated (LDM-SR)
    text+lr_image  SD x4 upscaler                  masked_image  LDM inpainting (concat)
    text+mask      SD inpainting (concat + prompt)
    segmentation   a semantic map, one-hot, resized and concatenated (LDM semantic synthesis)
"""
import math
from dataclasses import dataclass

from core.models.autoencoder import AutoencoderConfig
from core.models.clip_text import FrozenCLIPEmbedderConfig, FrozenOpenCLIPEmbedderConfig
from core.models.conditioners import ClassEmbedderConfig, LayoutEmbedderConfig, TransformerEmbedderConfig
from core.models.diffusion import LatentDiffusionConfig
from core.models.sdxl_conditioner import GeneralConditionerConfig

# The pipelines (and UI tabs) a model of each conditioning kind serves. Any text or unconditional
# model inpaints by latent blending and redraws images (img2img).
TASKS_BY_KIND = {
    "text": ("txt2img", "img2img", "inpaint"),
    "none": ("unconditional", "img2img", "inpaint"),
    "class": ("class",),
    "layout": ("layout",),
    "lr_image": ("upscale",),
    "text+lr_image": ("upscale",),
    "masked_image": ("inpaint",),
    "text+mask": ("inpaint",),
    "segmentation": ("semantic",),
}
KIND_BY_FAMILY = {"upscale-ldm": "lr_image", "upscale-sd": "text+lr_image", "inpaint-ldm": "masked_image",
                  "inpaint-sd": "text+mask", "unconditional": "none", "semantic-ldm": "segmentation"}
TASK_NAMES = {"txt2img": "text to image", "img2img": "image to image", "inpaint": "inpainting",
              "upscale": "upscaling", "class": "class-conditional sampling",
              "layout": "layout to image", "unconditional": "unconditional sampling",
              "semantic": "semantic synthesis"}
# The core.pipelines function of each task.
PIPELINES = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "inpaint", "upscale": "upscale",
             "class": "sample_class", "layout": "sample_layout", "unconditional": "sample_unconditional",
             "semantic": "sample_semantic"}


@dataclass(frozen=True)
class Capabilities:
    family: str                     # the conditioning layout: "conditional", "upscale-sd", "inpaint-ldm", ...
    conditioning: str               # a key of TASKS_BY_KIND
    tasks: tuple[str, ...]          # the pipelines that run this model (empty: none can)
    prompt: bool                    # the user writes a prompt that is read
    guidance: bool                  # has an unconditional branch, so classifier-free guidance works
    dedicated_inpainting: bool      # sees mask + masked image (else inpainting blends latents)
    parameterization: str           # "eps" or "v"
    factor: int                     # first-stage f: image pixels per latent pixel
    grid: int                       # image sides are multiples of this (f x UNet down-sampling)
    native_size: int                # the training resolution, in pixels
    latent_channels: int
    conditioner: str | None = None  # its cross-attention encoder: "transformer" (trained jointly), "class",
                                    # "layout" (trained jointly too), "clip", "openclip" (frozen), None
    why_not: str = ""               # why a model of a usable family serves no task here
    max_clip_skip: int = 1          # the largest A1111 "Clip skip" its text encoder takes (1: it does not apply)
    refiner: bool = False           # made to finish another model's sampling (SDXL refiner: aesthetic score)

    @property
    def joint_conditioner(self) -> bool:
        """The conditioner is trained with the UNet (LDM's transformer, class and layout embedders)."""
        return self.conditioner in ("transformer", "class", "layout")

    @property
    def training_stage(self) -> str:
        """The training loop that trains it (core.train): "autoencoder" for a first stage alone, else "ldm"."""
        return "autoencoder" if self.family == AUTOENCODER else "ldm"

    def serves(self, task: str) -> bool:
        return task in self.tasks

    def require(self, task: str) -> "Capabilities":
        """Self, or a ValueError saying what this model is for."""
        if task in self.tasks:
            return self
        what = f"{PIPELINES.get(task, task)} ({TASK_NAMES.get(task, task)})"
        if not self.tasks:
            raise ValueError(f"{what} cannot run this model: {self.why_not}.")
        uses = " / ".join(PIPELINES[t] for t in self.tasks)
        raise ValueError(f"{what} cannot run this model: it is a {self.family!r} model conditioned on "
                         f"{self.conditioning}; use {uses} with it.")


AUTOENCODER = "autoencoder"
CONDITIONER_NAMES = {TransformerEmbedderConfig: "transformer", ClassEmbedderConfig: "class",
                     LayoutEmbedderConfig: "layout", FrozenCLIPEmbedderConfig: "clip",
                     FrozenOpenCLIPEmbedderConfig: "openclip"}


def capabilities(model_or_config) -> Capabilities:
    """The record for a LatentDiffusion, a LatentDiffusionConfig or a standalone AutoencoderConfig."""
    cfg = getattr(model_or_config, "config", model_or_config)
    if isinstance(cfg, AutoencoderConfig):
        f = cfg.ddconfig.downsample_factor
        return Capabilities(AUTOENCODER, "none", (), False, False, False, "eps", f, f,
                            cfg.ddconfig.resolution, cfg.embed_dim, why_not="it is an autoencoder (a first stage) "
                            "alone; train a diffusion model on it first")
    if not isinstance(cfg, LatentDiffusionConfig):
        raise TypeError(f"capabilities() takes a LatentDiffusion or its config; got {type(cfg).__name__}.")
    family = cfg.task
    kind = KIND_BY_FAMILY.get(family) or _cross_attention_kind(cfg.cond_stage)
    tasks, why_not = TASKS_BY_KIND[kind], ""
    if isinstance(cfg.cond_stage, TransformerEmbedderConfig) and cfg.cond_stage.tokenizer != "clip":
        tasks, why_not = (), ("its conditioning transformer reads token ids from a tokenizer that is not "
                              "bundled (BERT ids for CompVis' text model, layout ids for its layout model), so "
                              "no prompt or layout can be encoded here; its networks load and run through "
                              "m.apply_model and the transformer's encode_tokens()")
    f = cfg.first_stage.ddconfig.downsample_factor
    if kind == "segmentation" and not math.isclose(cfg.cond_stage.multiplier ** cfg.cond_stage.n_stages * f, 1):
        tasks, why_not = (), (f"its SpatialRescaler resizes the map by {cfg.cond_stage.multiplier}^"
                              f"{cfg.cond_stage.n_stages}, which does not bring an image onto the latent grid "
                              f"(the first stage's factor is {f}), so no map fits; its networks load and run "
                              "through m.apply_model")
    guidance = {"text": True, "layout": True, "text+lr_image": True, "text+mask": True,
                "class": kind == "class" and cfg.cond_stage.null_class_present}.get(kind, False)
    grid = f * 2 ** (len(cfg.unet.channel_mult) - 1)
    return Capabilities(family, kind, tasks, prompt=kind.startswith("text") and bool(tasks), guidance=guidance,
                        dedicated_inpainting=kind in ("masked_image", "text+mask"),
                        parameterization=cfg.parameterization, factor=f, grid=grid,
                        native_size=cfg.image_size * f, latent_channels=cfg.channels,
                        conditioner=CONDITIONER_NAMES.get(type(cfg.cond_stage)), why_not=why_not,
                        max_clip_skip=cfg.cond_stage.n_blocks if CONDITIONER_NAMES.get(type(cfg.cond_stage)) in
                        ("clip", "openclip") and tasks else 1,
                        refiner=isinstance(cfg.cond_stage, GeneralConditionerConfig)
                        and "aesthetic_score" in cfg.cond_stage.input_keys)


def _cross_attention_kind(cond_stage) -> str:
    if isinstance(cond_stage, ClassEmbedderConfig):
        return "class"
    if isinstance(cond_stage, LayoutEmbedderConfig):
        return "layout"
    return "text"
