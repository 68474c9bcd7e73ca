"""Tiny models of every family in DESIGN.md's table, as CompVis-style YAML shaped like the released
configs (same targets, same structural switches), shrunk to run in milliseconds on a CPU."""

import textwrap

import torch
import yaml

from core.checkpoints.clip_keys import ours_to_hf_clip_text
from core.checkpoints.compvis_yaml import config_from_yaml
from core.models.diffusion import LatentDiffusion

_KL = """
first_stage_config:
  target: ldm.models.autoencoder.AutoencoderKL
  params:
    embed_dim: {embed}
    monitor: val/rec_loss
    ddconfig: {{double_z: true, z_channels: {embed}, resolution: 32, in_channels: 3, out_ch: 3, ch: 32,
               ch_mult: {mult}, num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}}
    lossconfig: {{target: torch.nn.Identity}}
"""
_VQ = """
first_stage_config:
  target: ldm.models.autoencoder.VQModelInterface
  params:
    embed_dim: {embed}
    n_embed: 64
    ddconfig: {{double_z: false, z_channels: {embed}, resolution: 32, in_channels: 3, out_ch: 3, ch: 32,
               ch_mult: {mult}, num_res_blocks: 1, attn_resolutions: {attn}, dropout: 0.0}}
    lossconfig: {{target: torch.nn.Identity}}
"""


def _model(target: str, params: str, unet: str, first_stage: str, cond: str, extra: str = "") -> str:
    body = textwrap.dedent(params) + textwrap.dedent(unet) + textwrap.dedent(first_stage) + textwrap.dedent(cond)
    body += textwrap.dedent(extra)
    return f"model:\n  target: {target}\n  params:\n" + textwrap.indent(body, "    ")


_LDM = "ldm.models.diffusion.ddpm.LatentDiffusion"
_SCHED = "linear_start: 0.0015\nlinear_end: 0.0195\ntimesteps: 1000\nimage_size: 8\n"
_SD_SCHED = "linear_start: 0.00085\nlinear_end: 0.0120\ntimesteps: 1000\nimage_size: 8\nchannels: 4\n"

FAMILIES: dict[str, str] = {
    # LDM unconditional (CelebA-HQ / FFHQ / LSUN-beds): VQ-f4, legacy AttentionBlock, head channels 32.
    "ldm_uncond": _model(_LDM, _SCHED + "channels: 3\nmonitor: val/loss_simple_ema\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {image_size: 8, in_channels: 3, out_channels: 3, model_channels: 32, attention_resolutions: [2],
                   num_res_blocks: 1, channel_mult: [1, 2], num_head_channels: 16}
        """, _VQ.format(embed=3, mult=[1, 1, 2], attn=[]), "cond_stage_config: __is_unconditional__\n"),
    # LDM LSUN-churches: KL-f8, scale_by_std (scale_factor buffer), scale-shift norm, resblock_updown.
    "ldm_churches": _model(_LDM, _SCHED + "channels: 4\nscale_by_std: true\nloss_type: l1\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {image_size: 4, in_channels: 4, out_channels: 4, model_channels: 32, attention_resolutions: [1, 2],
                   num_res_blocks: 1, channel_mult: [1, 2], num_heads: 2, use_scale_shift_norm: true,
                   resblock_updown: true}
        """, _KL.format(embed=4, mult=[1, 1, 1, 2]), "cond_stage_config: __is_unconditional__\n"),
    # LDM class-conditional (cin256-v2): ClassEmbedder with a null class, 1 head, cross-attention.
    "ldm_class": _model(_LDM, _SCHED + "channels: 3\ncond_stage_key: class_label\ncond_stage_trainable: true\n"
                        "conditioning_key: crossattn\nuse_ema: false\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {image_size: 8, in_channels: 3, out_channels: 3, model_channels: 32, attention_resolutions: [1, 2],
                   num_res_blocks: 1, channel_mult: [1, 2], num_heads: 1, use_spatial_transformer: true,
                   transformer_depth: 1, context_dim: 16}
        """, _VQ.format(embed=3, mult=[1, 1, 2], attn=[]), """
        cond_stage_config:
          target: ldm.modules.encoders.modules.ClassEmbedder
          params: {embed_dim: 16, n_classes: 11, key: class_label}
        """),
    # LDM text-to-image (txt2img-f8): KL-f8, BERTEmbedder (x-transformers), cross-attention.
    "ldm_txt2img": _model(_LDM, _SCHED + "channels: 4\ncond_stage_key: caption\ncond_stage_trainable: true\n"
                          "conditioning_key: crossattn\nscale_factor: 0.18215\nuse_ema: false\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {image_size: 4, in_channels: 4, out_channels: 4, model_channels: 32, attention_resolutions: [1, 2],
                   num_res_blocks: 1, channel_mult: [1, 2], num_heads: 2, use_spatial_transformer: true,
                   transformer_depth: 1, context_dim: 32, legacy: false}
        """, _KL.format(embed=4, mult=[1, 1, 1, 2]), """
        cond_stage_config:
          target: ldm.modules.encoders.modules.BERTEmbedder
          params: {n_embed: 32, n_layer: 2, vocab_size: 100, max_seq_len: 12}
        """),
    # LDM super-resolution (bsr_sr): z ++ LR image, Identity cond stage, VQ-f4, AttentionBlock.
    "ldm_sr": _model(_LDM, _SCHED + "channels: 3\nconcat_mode: true\ncond_stage_key: LR_image\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {image_size: 8, in_channels: 6, out_channels: 3, model_channels: 32, attention_resolutions: [2],
                   num_res_blocks: 1, channel_mult: [1, 2], num_head_channels: 16}
        """, _VQ.format(embed=3, mult=[1, 1, 2], attn=[]), "cond_stage_config: torch.nn.Identity\n"),
    # LDM inpainting (inpainting_big): z ++ masked-image latent ++ mask, cond stage = first stage.
    "ldm_inpaint": _model(_LDM, _SCHED + "channels: 3\nconcat_mode: true\ncond_stage_key: masked_image\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {image_size: 8, in_channels: 7, out_channels: 3, model_channels: 32, attention_resolutions: [2],
                   num_res_blocks: 1, channel_mult: [1, 2], num_heads: 2, resblock_updown: true}
        """, _VQ.format(embed=3, mult=[1, 1, 2], attn=[]), "cond_stage_config: __is_first_stage__\n"),
    # LDM semantic synthesis (semantic_synthesis256/512): z ++ SpatialRescaler(one-hot map), VQ-f4; the released
    # configs: 182 classes, n_stages 2, out_channels 3, `concat_mode: true` and no conditioning_key.
    "ldm_semantic": _model(_LDM, _SCHED + "channels: 3\nconcat_mode: true\ncond_stage_key: segmentation\n"
                           "cond_stage_trainable: true\nloss_type: l1\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {image_size: 8, in_channels: 6, out_channels: 3, model_channels: 32, attention_resolutions: [2],
                   num_res_blocks: 1, channel_mult: [1, 2], num_heads: 2}
        """, _VQ.format(embed=3, mult=[1, 1, 2], attn=[]), """
        cond_stage_config:
          target: ldm.modules.encoders.modules.SpatialRescaler
          params: {n_stages: 2, in_channels: 5, out_channels: 3}
        """),
    # LDM layout-to-image: VQ-f8 with attention, layout tokens -> a jointly trained transformer.
    "ldm_layout": _model(_LDM, _SCHED + "channels: 4\ncond_stage_key: coordinates_bbox\n"
                         "conditioning_key: crossattn\ncond_stage_trainable: true\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {image_size: 4, in_channels: 4, out_channels: 4, model_channels: 32, attention_resolutions: [1, 2],
                   num_res_blocks: 1, channel_mult: [1, 2], num_head_channels: 16, use_spatial_transformer: true,
                   transformer_depth: 1, context_dim: 32}
        """, _VQ.format(embed=4, mult=[1, 1, 1, 2], attn=[8]), """
        cond_stage_config:
          target: ldm.modules.encoders.modules.BERTEmbedder
          params: {n_embed: 32, n_layer: 1, vocab_size: 120, max_seq_len: 16}
        """),
    # SD 1.x: CLIP text encoder with HF key names in the file, conv proj, num_heads.
    "sd1": _model(_LDM, _SD_SCHED + "cond_stage_key: txt\nconditioning_key: crossattn\nscale_factor: 0.18215\n"
                  "use_ema: false\nmonitor: val/loss_simple_ema\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {image_size: 8, in_channels: 4, out_channels: 4, model_channels: 32, attention_resolutions: [1, 2],
                   num_res_blocks: 1, channel_mult: [1, 2], num_heads: 2, use_spatial_transformer: true,
                   transformer_depth: 1, context_dim: 32, use_checkpoint: true, legacy: false}
        """, _KL.format(embed=4, mult=[1, 1, 1, 2]), """
        cond_stage_config:
          target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
          params:
            text_config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2,
                          max_position_embeddings: 77, hidden_act: quick_gelu, vocab_size: 49408}
        """),
    # SD 2.x base: OpenCLIP penultimate, linear proj, head channels 64 (here 16).
    "sd2": _model(_LDM, _SD_SCHED + "cond_stage_key: txt\nconditioning_key: crossattn\nscale_factor: 0.18215\n"
                  "use_ema: false\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {use_checkpoint: true, use_fp16: true, image_size: 8, in_channels: 4, out_channels: 4,
                   model_channels: 32, attention_resolutions: [1, 2], num_res_blocks: 1, channel_mult: [1, 2],
                   num_head_channels: 16, use_spatial_transformer: true, use_linear_in_transformer: true,
                   transformer_depth: 1, context_dim: 32, legacy: false}
        """, _KL.format(embed=4, mult=[1, 1, 1, 2]), """
        cond_stage_config:
          target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
          params:
            freeze: true
            layer: penultimate
            text_cfg: {width: 32, heads: 2, layers: 2, context_length: 77, vocab_size: 49408}
        """),
    # SD 2 inpainting: LatentInpaintDiffusion, hybrid, z ++ mask ++ masked-image latent (9 channels).
    "sd2_inpaint": _model("ldm.models.diffusion.ddpm.LatentInpaintDiffusion",
                          _SD_SCHED + "cond_stage_key: txt\nconditioning_key: hybrid\nscale_factor: 0.18215\n"
                          "finetune_keys: null\nuse_ema: false\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {image_size: 8, in_channels: 9, out_channels: 4, model_channels: 32, attention_resolutions: [1, 2],
                   num_res_blocks: 1, channel_mult: [1, 2], num_head_channels: 16, use_spatial_transformer: true,
                   use_linear_in_transformer: true, transformer_depth: 1, context_dim: 32, legacy: false}
        """, _KL.format(embed=4, mult=[1, 1, 1, 2]), """
        cond_stage_config:
          target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
          params:
            layer: penultimate
            text_cfg: {width: 32, heads: 2, layers: 2, context_length: 77, vocab_size: 49408}
        """),
    # SD x4 upscaler: v-prediction, hybrid-adm, noise level as class label, KL-f4, scale 0.08333.
    "sd_x4": _model("ldm.models.diffusion.ddpm.LatentUpscaleDiffusion",
                    "parameterization: v\nlinear_start: 0.0001\nlinear_end: 0.02\ntimesteps: 1000\nimage_size: 8\n"
                    "channels: 4\nlow_scale_key: lr\nconditioning_key: hybrid-adm\nscale_factor: 0.08333\n"
                    "use_ema: false\n", """
        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params: {num_classes: 1000, image_size: 8, in_channels: 7, out_channels: 4, model_channels: 32,
                   attention_resolutions: [1, 2], num_res_blocks: 1, channel_mult: [1, 2], disable_self_attentions:
                   [true, false], num_heads: 2, use_spatial_transformer: true, use_linear_in_transformer: true,
                   transformer_depth: 1, context_dim: 32, legacy: false}
        """, _KL.format(embed=4, mult=[1, 1, 2]), """
        cond_stage_config:
          target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
          params:
            layer: penultimate
            text_cfg: {width: 32, heads: 2, layers: 2, context_length: 77, vocab_size: 49408}
        """, """
        low_scale_config:
          target: ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation
          params:
            noise_schedule_config: {linear_start: 0.0001, linear_end: 0.02}
            max_noise_level: 350
        """),
}

# SD 2.x 768-v: the base config with v-prediction.
FAMILIES["sd2_v"] = FAMILIES["sd2"].replace("  params:\n", "  params:\n    parameterization: v\n", 1)


# SDXL (Stability's sgm YAML, configs/inference/sd_xl_base.yaml / sd_xl_refiner.yaml, shrunk): DiscreteDenoiser,
# per-level transformer depth with no attention at level 0, linear proj, ADM vector y.
_SGM_DENOISER = """
denoiser_config:
  target: sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser
  params:
    num_idx: 1000
    scaling_config: {target: sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling}
    discretization_config: {target: sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization}
"""
_SGM_KL = _KL.replace("ldm.models.autoencoder", "sgm.models.autoencoder").replace(
    "ddconfig: {{", "ddconfig: {{attn_type: vanilla-xformers, ").format(embed=4, mult=[1, 1, 1, 2])
_SGM_BIGG = """
- is_trainable: false
  input_key: txt
  target: sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2
  params: {arch: ViT-bigG-14, version: laion2b_s39b_b160k, freeze: true, layer: penultimate,
           always_return_pooled: true, legacy: false, embed_dim: 24,
           text_cfg: {width: 32, heads: 2, layers: 3, context_length: 77, vocab_size: 49408}}
"""
_SGM_CLIP_L = """
- is_trainable: false
  input_key: txt
  target: sgm.modules.encoders.modules.FrozenCLIPEmbedder
  params:
    layer: hidden
    layer_idx: 2
    text_config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 3, num_attention_heads: 2,
                  max_position_embeddings: 77, hidden_act: quick_gelu, vocab_size: 49408}
"""


def _sizes(*keys: str) -> str:
    return "".join(f"- {{is_trainable: false, input_key: {k}, target: sgm.modules.encoders.modules."
                   f"ConcatTimestepEmbedderND, params: {{outdim: 8}}}}\n" for k in keys)


def _sgm_model(unet: str, embedders: str) -> str:
    body = ("scale_factor: 0.13025\ndisable_first_stage_autocast: true\n" + textwrap.dedent(_SGM_DENOISER)
            + textwrap.dedent(unet) + "conditioner_config:\n  target: sgm.modules.GeneralConditioner\n"
            + "  params:\n    emb_models:\n" + textwrap.indent(textwrap.dedent(embedders), "      ")
            + textwrap.dedent(_SGM_KL))
    return "model:\n  target: sgm.models.diffusion.DiffusionEngine\n  params:\n" + textwrap.indent(body, "    ")


# SDXL base: context = CLIP-L hidden (32) ++ bigG penultimate (32) = 64; y = pooled (24) + 3 x 2 x 8 = 72.
FAMILIES["sdxl"] = _sgm_model("""
    network_config:
      target: sgm.modules.diffusionmodules.openaimodel.UNetModel
      params: {adm_in_channels: 72, num_classes: sequential, use_checkpoint: true, in_channels: 4, out_channels: 4,
               model_channels: 32, attention_resolutions: [4, 2], num_res_blocks: 1, channel_mult: [1, 2, 2],
               num_head_channels: 16, use_linear_in_transformer: true, transformer_depth: [1, 1, 2],
               context_dim: 64, spatial_transformer_attn_type: softmax-xformers}
    """, _SGM_CLIP_L + _SGM_BIGG + _sizes("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple"))
# SDXL refiner: bigG only (context 32); y = pooled (24) + 2 x 2 x 8 + 8 (aesthetic score) = 64.
FAMILIES["sdxl_refiner"] = _sgm_model("""
    network_config:
      target: sgm.modules.diffusionmodules.openaimodel.UNetModel
      params: {adm_in_channels: 64, num_classes: sequential, use_checkpoint: true, in_channels: 4, out_channels: 4,
               model_channels: 32, attention_resolutions: [4, 2], num_res_blocks: 1, channel_mult: [1, 1, 2, 2],
               num_head_channels: 16, use_linear_in_transformer: true, transformer_depth: 2,
               context_dim: [32, 32], spatial_transformer_attn_type: softmax-xformers}
    """, _SGM_BIGG + _sizes("original_size_as_tuple", "crop_coords_top_left", "aesthetic_score"))
# SDXL inpainting (A1111's configs/sd_xl_inpaint.yaml, the released sd_xl_base_1.0_inpainting_0.1 file): the base
# with in_channels 9, [z, mask, masked-image latent].
FAMILIES["sdxl_inpaint"] = FAMILIES["sdxl"].replace("in_channels: 4, out_channels: 4", "in_channels: 9, out_channels: 4")
SGM_FAMILIES = ("sdxl", "sdxl_refiner")             # the families with recorded sgm references
# Variants of a family (not separate families: detection calls them by their family's name).
# shapes_class: the project's shapes class model (core/train/config.py stage "class"), 24 classes
# and a null class for guidance, as ldm_class otherwise.
# layout: the project's layout model (stage "layout"): the shapes world's 24 classes, at most 3 objects,
# our LayoutEmbedder in place of CompVis' layout-token transformer, as ldm_layout otherwise.
VARIANTS = {"shapes_class": FAMILIES["ldm_class"].replace("n_classes: 11, key: class_label",
                                                          "n_classes: 25, key: class_label, has_null_class: true"),
            "layout": FAMILIES["ldm_layout"].replace(
                "target: ldm.modules.encoders.modules.BERTEmbedder\n      params: {n_embed: 32, n_layer: 1, "
                "vocab_size: 120, max_seq_len: 16}",
                "target: core.models.conditioners.LayoutEmbedder\n      params: {embed_dim: 32, n_classes: 24, "
                "max_objects: 3}")}
# layout_background: a layout model trained with the background as a token (data.layout_background):
# 24 objects + white, black, gray; the background and at most 3 objects.
VARIANTS["layout_background"] = VARIANTS["layout"].replace("n_classes: 24, max_objects: 3",
                                                            "n_classes: 27, max_objects: 4")


def tiny_model(family: str, seed: int = 0) -> LatentDiffusion:
    """A tiny model of `family` with random weights (every zero-initialised output layer made
    non-zero, so outputs depend on every weight)."""
    torch.manual_seed(seed)
    model = LatentDiffusion(config_from_yaml(yaml.safe_load({**FAMILIES, **VARIANTS}[family])))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.eval()


def fp16_overflowing_sr_model() -> tuple[LatentDiffusion, torch.Tensor]:
    """A tiny LDM-SR whose first stage overflows float16 (activations beyond 65504) and a latent z
    for it: what the float16 decode's fallback to a float32 copy is tested with."""
    m = tiny_model("ldm_sr")
    z = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.first_stage_model.post_quant_conv.bias.fill_(65000.0)
        m.first_stage_model.post_quant_conv.weight.mul_(1000)
    return m, z


def original_state_dict(model: LatentDiffusion, family: str, ema: bool = False) -> dict:
    """The model's weights in the reference checkpoint layout (what CompVis / Stability files hold).

    ema=True adds `model_ema.*` buffers (dot-stripped names) holding DIFFERENT values from model.*,
    plus decay/num_updates, as LDM training checkpoints do.
    """
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    hf_clip_prefix = {"sd1": "cond_stage_model.", "sdxl": "conditioner.embedders.0.",
                      "sdxl_inpaint": "conditioner.embedders.0."}.get(family)
    if hf_clip_prefix:
        text = {k[len(hf_clip_prefix):]: sd.pop(k) for k in list(sd) if k.startswith(hf_clip_prefix)}
        sd.update({hf_clip_prefix + k: v for k, v in ours_to_hf_clip_text(text).items()})
    if family == "ldm_churches":
        sd["scale_factor"] = torch.tensor(0.5)
    if ema:
        for k in [k for k in sd if k.startswith("model.")]:
            sd["model_ema." + k[len("model."):].replace(".", "")] = sd[k] + 0.01 * torch.randn_like(sd[k])
        sd["model_ema.decay"] = torch.tensor(0.9999)
        sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return sd


@torch.no_grad()
def example_inputs(model: LatentDiffusion, family: str, batch: int = 2, seed: int = 1):
    """(x_noisy, t, cond) that exercise every conditioning path of `family`."""
    g = torch.Generator().manual_seed(seed)
    f = 2 ** (len(model.config.first_stage.ddconfig.ch_mult) - 1)
    side = 16 if family.startswith("sdxl") else model.config.unet.image_size   # sgm: image_size is 1024 px
    x = torch.randn(batch, model.config.channels, side, side, generator=g)
    t = torch.tensor([10, 900][:batch] + [500] * max(0, batch - 2))
    image = torch.rand(batch, 3, side * f, side * f, generator=g) * 2 - 1
    if family in ("ldm_uncond", "ldm_churches"):
        cond = None
    elif family == "ldm_class":
        cond = model.get_learned_conditioning(torch.tensor([3, 10][:batch]))
    elif family in ("ldm_txt2img", "ldm_layout"):
        vocab = model.config.cond_stage.vocab_size
        cond = model.get_learned_conditioning(torch.randint(0, vocab, (batch, model.config.cond_stage.max_seq_len),
                                                            generator=g))
    elif family == "ldm_sr":
        cond = torch.rand(batch, 3, side, side, generator=g) * 2 - 1          # LR image at latent size
    elif family == "ldm_semantic":
        labels = torch.randint(0, model.config.cond_stage.in_channels, (batch, side * f, side * f), generator=g)
        one_hot = torch.nn.functional.one_hot(labels, model.config.cond_stage.in_channels).permute(0, 3, 1, 2)
        cond = model.get_learned_conditioning(one_hot.float())                # (B, 3, side, side), concatenated
    elif family == "ldm_inpaint":
        mask = (torch.rand(batch, 1, side, side, generator=g) > 0.5).float() * 2 - 1
        cond = {"c_concat": [torch.cat([model.get_learned_conditioning(image), mask], dim=1)]}
    elif family == "sd2_inpaint":
        mask = (torch.rand(batch, 1, side, side, generator=g) > 0.5).float()
        cond = {"c_concat": [torch.cat([mask, model.encode_first_stage(image)], dim=1)],
                "c_crossattn": [model.get_learned_conditioning(["a red circle", ""][:batch])]}
    elif family == "sd_x4":
        lr = torch.rand(batch, 3, side, side, generator=g) * 2 - 1
        level = torch.tensor([20] * batch)
        x_aug, level = model.low_scale_model(lr, level, generator=g)
        cond = {"c_concat": [x_aug], "c_crossattn": [model.get_learned_conditioning(["a photo", ""][:batch])],
                "c_adm": level}
    elif family.startswith("sdxl"):
        batch_dict = {"txt": ["a large red circle in the center", ""][:batch],
                      "original_size_as_tuple": torch.tensor([[1024, 1024], [768, 1024]][:batch]),
                      "crop_coords_top_left": torch.tensor([[0, 0], [16, 32]][:batch]),
                      "target_size_as_tuple": torch.tensor([[1024, 1024], [768, 1024]][:batch]),
                      "aesthetic_score": torch.tensor([[6.0], [2.5]][:batch])}
        cond = model.get_learned_conditioning({k: batch_dict[k] for k in model.conditioner.cfg.input_keys})
        if family == "sdxl_inpaint":
            mask = (torch.rand(batch, 1, side, side, generator=g) > 0.5).float()
            cond["c_concat"] = [torch.cat([mask, model.encode_first_stage(image)], dim=1)]
    else:  # sd1, sd2, sd2_v
        cond = model.get_learned_conditioning(["a large red circle in the center", ""][:batch])
    return x, t, cond
