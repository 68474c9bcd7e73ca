"""LatentDiffusion: the UNet, the first stage and the conditioner tied together with the schedule.

Rombach et al. 2022, Sec. 3. The attribute paths are the reference checkpoint's prefixes:
`model.diffusion_model` (UNet inside the DiffusionWrapper), `first_stage_model`, `cond_stage_model`,
`low_scale_model` (x4 upscaler), and the schedule buffers at the top level. Names and semantics of
the methods follow the CompVis code (`apply_model`, `get_learned_conditioning`,
`encode_first_stage`, `decode_first_stage`), with two deliberate differences documented on the
methods: encoding is deterministic by default, and noise comes from an explicit generator.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.models.autoencoder import AutoencoderConfig, DiagonalGaussianDistribution, build_autoencoder
from core.models.conditioners import SpatialRescalerConfig
from core.models.conditioners_registry import build_conditioner
from core.models.schedule import LOW_SCALE_BUFFERS, discrete_sigmas, make_beta_schedule, schedule_buffers
from core.models.sdxl_conditioner import GeneralConditioner, GeneralConditionerConfig
from core.models.unet import UNetConfig, UNetModel

CONDITIONING_KEYS = (None, "crossattn", "concat", "hybrid", "adm", "hybrid-adm")
MODEL_CLASSES = ("LatentDiffusion", "LatentInpaintDiffusion", "LatentUpscaleDiffusion",
                 "DiffusionEngine")   # sgm's (SDXL): conditioner at `conditioner`, no schedule buffers saved
# cond_stage values that are not a conditioner network: the LR image passes through as it is
# (LDM-SR, `torch.nn.Identity`), or the masked image is encoded by the first stage (LDM
# inpainting, `__is_first_stage__`).
COND_STAGE_IDENTITY = "identity"
COND_STAGE_FIRST_STAGE = "first_stage"


@dataclass(frozen=True)
class NoiseAugmentationConfig:
    """The x4 upscaler's `ImageConcatWithNoiseAugmentation` (FACTS.md section 9)."""
    linear_start: float = 1e-4
    linear_end: float = 2e-2
    timesteps: int = 1000              # its own schedule, whatever max_noise_level is
    beta_schedule: str = "linear"
    max_noise_level: int = 350


@dataclass(frozen=True)
class LatentDiffusionConfig:
    unet: UNetConfig
    first_stage: AutoencoderConfig
    cond_stage: Any = None                  # a conditioner config, "identity", "first_stage" or None
    conditioning_key: str | None = "crossattn"
    model_class: str = "LatentDiffusion"    # or LatentInpaintDiffusion / LatentUpscaleDiffusion
    parameterization: str = "eps"           # what the UNet predicts: "eps" or "v"
    linear_start: float = 1e-4
    linear_end: float = 2e-2
    timesteps: int = 1000
    beta_schedule: str = "linear"
    cosine_s: float = 8e-3
    scale_factor: float = 1.0               # latents = scale_factor * E(x)
    image_size: int = 32                    # latent side the model was trained at
    channels: int = 4                       # latent channels (the UNet's output)
    use_ema: bool = True                    # sample with model_ema.* when the file has them
    low_scale: NoiseAugmentationConfig | None = None

    def __post_init__(self):
        if self.conditioning_key not in CONDITIONING_KEYS:
            raise ValueError(f"conditioning_key {self.conditioning_key!r} is not one of {CONDITIONING_KEYS}")
        if self.model_class not in MODEL_CLASSES:
            raise ValueError(f"model_class {self.model_class!r} is not one of {MODEL_CLASSES}")
        if self.parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization must be 'eps' or 'v', got {self.parameterization!r}")
        if self.model_class == "LatentUpscaleDiffusion" and self.low_scale is None:
            raise ValueError("LatentUpscaleDiffusion needs a low_scale (noise augmentation) config")
        if (self.model_class == "DiffusionEngine") != isinstance(self.cond_stage, GeneralConditionerConfig):
            raise ValueError("a GeneralConditioner (SDXL) goes with model_class 'DiffusionEngine' and only there")
        if isinstance(self.cond_stage, SpatialRescalerConfig) and self.conditioning_key != "concat":
            raise ValueError(f"a SpatialRescaler's map is concatenated to z: conditioning_key must be 'concat', "
                             f"got {self.conditioning_key!r}")

    @property
    def task(self) -> str:
        """What the model does, read off its conditioning layout."""
        if self.model_class == "LatentUpscaleDiffusion":
            return "upscale-sd"            # z ++ noised LR image; noise level as class label
        if self.model_class == "LatentInpaintDiffusion" or (self.model_class == "DiffusionEngine"
                                                            and self.conditioning_key == "hybrid"):
            return "inpaint-sd"            # z ++ mask ++ masked-image latent (SD 1.5 / 2 / SDXL inpainting)
        if self.cond_stage == COND_STAGE_FIRST_STAGE:
            return "inpaint-ldm"           # z ++ masked-image latent ++ mask (+-1)
        if self.cond_stage == COND_STAGE_IDENTITY and self.conditioning_key == "concat":
            return "upscale-ldm"           # z ++ LR image
        if isinstance(self.cond_stage, SpatialRescalerConfig):
            return "semantic-ldm"          # z ++ the segmentation map, resized and channel-mapped
        if self.cond_stage is None:
            return "unconditional"
        return "conditional"               # text, class or layout through cross-attention


class DiffusionWrapper(nn.Module):
    """Routes the conditioning into the UNet (the reference's DiffusionWrapper, FACTS.md section 9)."""

    def __init__(self, diffusion_model: UNetModel, conditioning_key: str | None):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = conditioning_key

    def forward(self, x, t, c_concat: list | None = None, c_crossattn: list | None = None, c_adm=None,
                y=None):
        """y: SDXL's ADM vector (B, adm_in_channels) for 'crossattn' / 'hybrid' (sgm's "vector")."""
        key = self.conditioning_key
        if y is not None and key not in ("crossattn", "hybrid"):
            raise ValueError(f"a vector y is read by 'crossattn' / 'hybrid' models, not {key!r}")
        if key is None:
            return self.diffusion_model(x, t)
        if key in ("concat", "hybrid", "hybrid-adm"):
            x = torch.cat([x, *c_concat], dim=1)                 # (B, C_in, H, W)
        if key == "concat":
            return self.diffusion_model(x, t)
        if key == "adm":
            return self.diffusion_model(x, t, y=c_crossattn[0])
        context = torch.cat(c_crossattn, dim=1)                  # (B, L, D): tokens concatenated
        y = c_adm if key == "hybrid-adm" else y
        return self.diffusion_model(x, t, context=context, y=y)


class NoiseAugmentation(nn.Module):
    """Noises the x4 upscaler's low-res image: x_aug = sqrt(abar[n]) lr + sqrt(1 - abar[n]) noise."""

    def __init__(self, cfg: NoiseAugmentationConfig):
        super().__init__()
        self.max_noise_level = cfg.max_noise_level
        buffers = schedule_buffers(make_beta_schedule(cfg.beta_schedule, cfg.timesteps, cfg.linear_start,
                                                      cfg.linear_end))
        for name in LOW_SCALE_BUFFERS:
            self.register_buffer(name, buffers[name])

    def forward(self, x, noise_level: torch.Tensor, generator: torch.Generator | None = None):
        """x (B, 3, h, w) in [-1, 1]; noise_level (B,) int in [0, max_noise_level]."""
        if (noise_level < 0).any() or (noise_level > self.max_noise_level).any():
            raise ValueError(f"noise level must be in [0, {self.max_noise_level}], got {noise_level.tolist()}")
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)  # drawn on the CPU
        a = self.sqrt_alphas_cumprod[noise_level].to(x.dtype)[:, None, None, None]
        s = self.sqrt_one_minus_alphas_cumprod[noise_level].to(x.dtype)[:, None, None, None]
        return a * x + s * noise, noise_level


class LatentDiffusion(nn.Module):
    def __init__(self, cfg: LatentDiffusionConfig):
        super().__init__()
        self.config = cfg
        self.parameterization = cfg.parameterization
        self.conditioning_key = cfg.conditioning_key
        self.scale_factor = cfg.scale_factor
        self.model = DiffusionWrapper(UNetModel(cfg.unet), cfg.conditioning_key)
        self.first_stage_model = build_autoencoder(cfg.first_stage)
        if cfg.model_class == "DiffusionEngine":
            self.conditioner = GeneralConditioner(cfg.cond_stage)      # `conditioner.embedders.N`
            self.cond_stage_model = None
        else:
            self.cond_stage_model = build_conditioner(cfg.cond_stage)  # None for identity/first stage
        if cfg.low_scale is not None:
            self.low_scale_model = NoiseAugmentation(cfg.low_scale)
        self.register_schedule()

    def register_schedule(self) -> None:
        """The schedule buffers, float32 (T,), computed from the config (FACTS.md section 6). sgm
        files do not store them (its discretisation recomputes them), so there they are not saved
        and a meta-device load rebuilds them with this."""
        cfg = self.config
        betas = make_beta_schedule(cfg.beta_schedule, cfg.timesteps, cfg.linear_start, cfg.linear_end,
                                   cfg.cosine_s)
        sgm = cfg.model_class == "DiffusionEngine"
        for name, value in schedule_buffers(betas).items():
            self.register_buffer(name, value, persistent=not sgm)
        if sgm:  # sgm's DiscreteDenoiser grid at its attribute path `denoiser.sigmas` (not saved)
            self.denoiser = nn.Module()
            self.denoiser.register_buffer("sigmas", discrete_sigmas(betas), persistent=False)

    # ---- properties people coming from the CompVis code look for -------------------------------
    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def task(self) -> str:
        return self.config.task

    # ---- the denoiser ----------------------------------------------------------------------------
    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The UNet's prediction (eps or v) for x_noisy (B, C, H, W) at integer timesteps t (B,).

        cond: a tensor (wrapped as c_concat for 'concat' models, else c_crossattn), or a dict with
        lists under 'c_concat' / 'c_crossattn' and a tensor under 'c_adm', as in the reference.
        """
        if not isinstance(cond, dict):
            key = "c_concat" if self.conditioning_key == "concat" else "c_crossattn"
            cond = {key: cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **cond)

    @torch.no_grad()
    def get_learned_conditioning(self, batch, force_zero_embeddings=None, **sizes):
        """Conditioning tokens from prompts, class labels or layouts, as the UNet's context.

        For LDM inpainting (`__is_first_stage__`) the batch is the masked image in [-1, 1], encoded
        by the first stage; for LDM-SR (identity) it is returned as it is.
        SDXL (DiffusionEngine): the reference's batch dict ("txt", "original_size_as_tuple", ...)
        or prompts with original_size=, crop_coords=, target_size= (and the refiner's
        aesthetic_score=) -> {"c_crossattn": [context (B, 77, D)], "y": vector (B, adm_in_channels)};
        force_zero_embeddings=["txt"] zeroes the text embedders' outputs (the base's uncond).
        """
        if self.config.model_class == "DiffusionEngine":
            if not isinstance(batch, dict):
                batch = self.conditioner.make_batch(batch, **sizes)
            elif sizes:
                raise ValueError(f"give sizes inside the batch dict or with prompts, not both: {sorted(sizes)}")
            out = self.conditioner(batch, force_zero_embeddings or ())
            return {"c_crossattn": [out["crossattn"]], "y": out["vector"]}
        if force_zero_embeddings or sizes:
            raise ValueError("force_zero_embeddings and sizes apply to SDXL (sgm) models only")
        if self.config.cond_stage == COND_STAGE_FIRST_STAGE:
            return self.encode_first_stage(batch)
        if self.config.cond_stage == COND_STAGE_IDENTITY:
            return batch
        if self.cond_stage_model is None:
            raise ValueError("this model is unconditional: it takes no prompt, class or layout")
        return self.cond_stage_model(batch)

    # ---- the first stage ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor, sample: bool = False,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> latent (B, C, H/f, W/f), multiplied by scale_factor.

        KL: the posterior mean (deterministic); with sample=True a posterior sample drawn with
        `generator`, like the reference's get_first_stage_encoding. VQ: the pre-quantisation h.
        """
        x = x.to(next(self.first_stage_model.parameters()).dtype)
        h = self.first_stage_model.encode(x)
        if isinstance(h, DiagonalGaussianDistribution):
            h = h.sample(generator=generator) if sample else h.mode()
        return self.scale_factor * h

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, C, h, w) -> image (B, 3, h*f, w*f) in about [-1, 1]; VQ quantises first."""
        z = z.to(next(self.first_stage_model.parameters()).dtype)
        return self.first_stage_model.decode(z / self.scale_factor)
