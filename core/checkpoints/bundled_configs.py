"""The configs of the released Stable Diffusion checkpoints, as our dataclasses (no YAML, no download).

For files that carry no config (most `.safetensors` people have), `detect.py` names the family from
the state dict and `load_model` builds the model from the factory here. Each factory equals what our
translator makes of the released YAML (tests/test_sdxl.py checks SDXL's against the YAML itself):

    sd1          stable-diffusion  configs/stable-diffusion/v1-inference.yaml
    sd1_inpaint  runwayml          v1-inpainting-inference.yaml
    sd2 / sd2_v  stablediffusion   v2-inference.yaml / v2-inference-v.yaml
    sd2_inpaint  stablediffusion   v2-inpainting-inference.yaml
    sdxl_base    generative-models configs/inference/sd_xl_base.yaml
    sdxl_refiner generative-models configs/inference/sd_xl_refiner.yaml
    sdxl_inpaint A1111's configs/sd_xl_inpaint.yaml (sd_xl_base_1.0_inpainting_0.1): the base, in_channels 9
"""
import dataclasses

from core.models.autoencoder import AutoencoderConfig, DDConfig
from core.models.clip_text import FrozenCLIPEmbedderConfig, FrozenOpenCLIPEmbedderConfig
from core.models.diffusion import LatentDiffusionConfig
from core.models.sdxl_conditioner import (ConcatTimestepEmbedderNDConfig, EmbedderSpec,
                                          FrozenOpenCLIPEmbedder2Config, GeneralConditionerConfig)
from core.models.unet import UNetConfig


def kl_f8() -> AutoencoderConfig:
    """The KL-f8 autoencoder of SD 1/2 and SDXL (embed 4, ch 128, mult 1-2-4-4, no attention but mid)."""
    return AutoencoderConfig(kind="kl", embed_dim=4, ddconfig=DDConfig(
        double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=(1, 2, 4, 4),
        num_res_blocks=2, attn_resolutions=(), dropout=0.0))


def _sd(unet: UNetConfig, cond_stage, image_size: int = 64, **kw) -> LatentDiffusionConfig:
    return LatentDiffusionConfig(unet=unet, first_stage=kl_f8(), cond_stage=cond_stage,
                                 conditioning_key=kw.pop("conditioning_key", "crossattn"), linear_start=0.00085,
                                 linear_end=0.0120, timesteps=1000, scale_factor=0.18215, image_size=image_size,
                                 channels=4, **{"use_ema": False, **kw})


def _sd_unet(in_channels: int = 4, **kw) -> UNetConfig:
    return UNetConfig(image_size=32, in_channels=in_channels, out_channels=4, model_channels=320,
                      attention_resolutions=(4, 2, 1), num_res_blocks=2, channel_mult=(1, 2, 4, 4),
                      use_spatial_transformer=True, transformer_depth=1, use_checkpoint=True, legacy=False, **kw)


def sd1(in_channels: int = 4) -> LatentDiffusionConfig:
    return _sd(_sd_unet(in_channels, num_heads=8, context_dim=768), FrozenCLIPEmbedderConfig())


def sd1_inpaint() -> LatentDiffusionConfig:
    return dataclasses.replace(sd1(in_channels=9), model_class="LatentInpaintDiffusion", conditioning_key="hybrid",
                               use_ema=True)


def sd2(in_channels: int = 4) -> LatentDiffusionConfig:
    return _sd(_sd_unet(in_channels, num_head_channels=64, context_dim=1024, use_linear_in_transformer=True,
                        use_fp16=True),
               FrozenOpenCLIPEmbedderConfig(arch="ViT-H-14", layer="penultimate"))


def sd2_v() -> LatentDiffusionConfig:
    return dataclasses.replace(sd2(), parameterization="v", image_size=96)


def sd2_inpaint() -> LatentDiffusionConfig:
    return dataclasses.replace(sd2(in_channels=9), model_class="LatentInpaintDiffusion", conditioning_key="hybrid")


def _sgm_unet(**kw) -> UNetConfig:
    return UNetConfig(image_size=128, in_channels=4, out_channels=4, num_classes="sequential", num_res_blocks=2,
                      attention_resolutions=(4, 2), num_head_channels=64, use_linear_in_transformer=True,
                      use_spatial_transformer=True, legacy=False, **kw)


def _sizes(*keys: str) -> tuple[EmbedderSpec, ...]:
    return tuple(EmbedderSpec(k, ConcatTimestepEmbedderNDConfig(outdim=256)) for k in keys)


def _sgm(unet: UNetConfig, embedders: tuple) -> LatentDiffusionConfig:
    return LatentDiffusionConfig(unet=unet, first_stage=kl_f8(), cond_stage=GeneralConditionerConfig(embedders, 1024),
                                 conditioning_key="crossattn", model_class="DiffusionEngine", linear_start=0.00085,
                                 linear_end=0.0120, timesteps=1000, scale_factor=0.13025, image_size=128,
                                 channels=4, use_ema=False)


def sdxl_base() -> LatentDiffusionConfig:
    """SDXL 1.0 base: context CLIP-L (768) ++ bigG (1280) = 2048; y = 1280 + 3 x 512 = 2816."""
    unet = _sgm_unet(model_channels=320, channel_mult=(1, 2, 4), transformer_depth=(1, 2, 10),
                     context_dim=2048, adm_in_channels=2816)
    clip_l = FrozenCLIPEmbedderConfig(layer="hidden", layer_idx=11)
    return _sgm(unet, (EmbedderSpec("txt", clip_l), EmbedderSpec("txt", FrozenOpenCLIPEmbedder2Config()),
                       *_sizes("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")))


def sdxl_refiner() -> LatentDiffusionConfig:
    """SDXL 1.0 refiner: context bigG (1280); y = 1280 + 2 x 512 + 256 (aesthetic score) = 2560."""
    unet = _sgm_unet(model_channels=384, channel_mult=(1, 2, 4, 4), transformer_depth=4, context_dim=1280,
                     adm_in_channels=2560)
    return _sgm(unet, (EmbedderSpec("txt", FrozenOpenCLIPEmbedder2Config()),
                       *_sizes("original_size_as_tuple", "crop_coords_top_left", "aesthetic_score")))


def sdxl_inpaint() -> LatentDiffusionConfig:
    """SDXL 1.0 inpainting: the base UNet with [z, mask, masked-image latent] in (4 + 1 + 4 = 9 channels)."""
    base = sdxl_base()
    return dataclasses.replace(base, unet=dataclasses.replace(base.unet, in_channels=9), conditioning_key="hybrid")


BUNDLED_CONFIGS = {"sd1": sd1, "sd1_inpaint": sd1_inpaint, "sd2": sd2, "sd2_v": sd2_v, "sd2_inpaint": sd2_inpaint,
                   "sdxl_base": sdxl_base, "sdxl_refiner": sdxl_refiner, "sdxl_inpaint": sdxl_inpaint}
