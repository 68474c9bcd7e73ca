"""The CompVis / Stability YAML configs, translated into our dataclass configs.

The YAML is data: each `target:` is looked up in an explicit table of the classes we implement,
and any other name is an error (never an import). Parameters that only matter for training in the
reference (monitor, ckpt_path, lossconfig, cond_stage_key, ...) are ignored; parameters we do not
know are reported in a warning, so a config that asks for something we do not do does not pass
unnoticed.
"""

import dataclasses
import warnings
from pathlib import Path

import yaml

from core.models.autoencoder import AutoencoderConfig, DDConfig
from core.models.clip_text import FrozenCLIPEmbedderConfig, FrozenOpenCLIPEmbedderConfig
from core.models.conditioners import (ClassEmbedderConfig, LayoutEmbedderConfig, SpatialRescalerConfig,
                                      TransformerEmbedderConfig)
from core.models.diffusion import (COND_STAGE_FIRST_STAGE, COND_STAGE_IDENTITY, LatentDiffusionConfig,
                                   NoiseAugmentationConfig)
from core.models.unet import UNetConfig

DIFFUSION_TARGETS = {
    "ldm.models.diffusion.ddpm.LatentDiffusion": "LatentDiffusion",
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion": "LatentInpaintDiffusion",
    "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion": "LatentUpscaleDiffusion",
}
UNET_TARGETS = ("ldm.modules.diffusionmodules.openaimodel.UNetModel",)
FIRST_STAGE_TARGETS = {
    "ldm.models.autoencoder.AutoencoderKL": "kl",
    "ldm.models.autoencoder.VQModelInterface": "vq",
    "ldm.models.autoencoder.VQModel": "vq",
    "taming.models.vqgan.VQModel": "vq",
}
LOW_SCALE_TARGETS = ("ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation",)
_ENCODERS = "ldm.modules.encoders.modules."

# Reference parameters that do not change what a trained model computes.
_IGNORED = {
    "model": {"first_stage_key", "cond_stage_key", "cond_stage_trainable", "num_timesteps_cond", "log_every_t",
              "monitor", "loss_type", "ckpt_path", "ignore_keys", "load_only_unet", "use_positional_encodings",
              "learn_logvar", "logvar_init", "l_simple_weight", "original_elbo_weight", "v_posterior",
              "clip_denoised", "cond_stage_forward", "scheduler_config", "finetune_keys", "keep_finetune_dims",
              "concat_keys", "masked_image_key", "low_scale_key", "noise_level_key", "use_fp16", "ucg_training",
              "make_it_fit", "reset_ema", "reset_num_ema_updates", "concat_mode", "scale_by_std",
              "personalization_config", "c_concat_log_start", "c_concat_log_end", "embedding_reg_weight",
              "unfreeze_model", "model_lr"},
    "first_stage": {"monitor", "lossconfig", "ckpt_path", "ignore_keys", "image_key", "colorize_nlabels",
                    "remap", "sane_index_shape", "batch_resize_range", "scheduler_config", "lr_g_factor",
                    "use_ema"},
    "unet": {"ckpt_path"},
    # any conditioner (what each one reads is its config's fields, checked in _cond_stage)
    "cond": {"device", "freeze", "version", "use_tokenizer", "embedding_dropout", "pretrained", "ucg_rate"},
}


def _warn_unknown(where: str, params: dict, known: set) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        warnings.warn(f"config: {where} has parameters LDM Studio does not use: {', '.join(unknown)}",
                      stacklevel=3)


def _fields(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


def _target(block, where: str) -> tuple[str, dict]:
    if isinstance(block, str):
        return block, {}
    if not isinstance(block, dict) or "target" not in block:
        raise ValueError(f"config: {where} must have a `target:`")
    return block["target"], dict(block.get("params") or {})


def _unet(block) -> UNetConfig:
    target, params = _target(block, "unet_config")
    if target not in UNET_TARGETS:
        raise ValueError(f"config: unet_config target {target!r} is not supported; expected {UNET_TARGETS[0]}")
    known = _fields(UNetConfig)
    _warn_unknown("unet_config", params, known | _IGNORED["unet"])
    return UNetConfig(**{k: v for k, v in params.items() if k in known})


def first_stage_config(block) -> AutoencoderConfig:
    target, params = _target(block, "first_stage_config")
    if target not in FIRST_STAGE_TARGETS:
        raise ValueError(f"config: first stage {target!r} is not supported; expected one of "
                         f"{', '.join(FIRST_STAGE_TARGETS)}")
    kind = FIRST_STAGE_TARGETS[target]
    _warn_unknown("first_stage_config", params, {"embed_dim", "n_embed", "ddconfig"} | _IGNORED["first_stage"])
    ddparams = dict(params.get("ddconfig") or {})
    known = _fields(DDConfig)
    _warn_unknown("ddconfig", ddparams, known)
    ddconfig = DDConfig(**{k: v for k, v in ddparams.items() if k in known})
    return AutoencoderConfig(kind=kind, embed_dim=params["embed_dim"], ddconfig=ddconfig,
                             n_embed=params.get("n_embed"))


def _cond_stage(block):
    """A conditioner config, or "identity" / "first_stage" / None (unconditional)."""
    if block == "__is_unconditional__" or block is None:
        return None
    if block == "__is_first_stage__":
        return COND_STAGE_FIRST_STAGE
    target, p = _target(block, "cond_stage_config")
    if target == "torch.nn.Identity":
        return COND_STAGE_IDENTITY
    where = f"cond_stage_config ({target.rsplit('.', 1)[-1]})"
    check = lambda known: _warn_unknown(where, p, set(known) | _IGNORED["cond"])      # noqa: E731
    if target == _ENCODERS + "FrozenOpenCLIPEmbedder":
        check(("arch", "layer", "max_length", "text_cfg", "embed_dim", "quick_gelu"))
        extra = {k: p[k] for k in ("text_cfg", "embed_dim", "quick_gelu") if k in p}
        return FrozenOpenCLIPEmbedderConfig(arch=p.get("arch", "ViT-H-14"), layer=p.get("layer", "last"),
                                            max_length=p.get("max_length", 77), **extra)
    if target == _ENCODERS + "FrozenCLIPEmbedder":
        check(("layer", "layer_idx", "max_length", "text_config"))
        shape = dict(p.get("text_config") or {})
        version = p.get("version", "openai/clip-vit-large-patch14")
        common = {"layer": p.get("layer", "last"), "layer_idx": p.get("layer_idx"),
                  "max_length": p.get("max_length", 77)}
        if shape:  # an explicit HF CLIPTextConfig shape wins over the version name
            known = _fields(FrozenCLIPEmbedderConfig)
            _warn_unknown("cond_stage_config.text_config", shape, known | {"projection_dim", "pad_token_id",
                                                                           "bos_token_id", "eos_token_id",
                                                                           "initializer_range",
                                                                           "initializer_factor",
                                                                           "attention_dropout", "dropout"})
            return FrozenCLIPEmbedderConfig(version=version, **common,
                                            **{k: v for k, v in shape.items() if k in known})
        return FrozenCLIPEmbedderConfig.from_version(version, **common)
    if target in (_ENCODERS + "BERTEmbedder", _ENCODERS + "TransformerEmbedder"):
        known = _fields(TransformerEmbedderConfig)
        check(known)
        bert = target.endswith("BERTEmbedder")
        return TransformerEmbedderConfig(**{"tokenizer": "bert" if bert else "clip",
                                            **{k: v for k, v in p.items() if k in known}})
    if target == _ENCODERS + "ClassEmbedder":
        check(_fields(ClassEmbedderConfig))
        return ClassEmbedderConfig(embed_dim=p["embed_dim"], n_classes=p.get("n_classes", 1000),
                                   key=p.get("key", "class"), has_null_class=p.get("has_null_class"))
    if target == _ENCODERS + "SpatialRescaler":            # semantic synthesis: the map, concatenated
        known = _fields(SpatialRescalerConfig)
        check(known)
        return SpatialRescalerConfig(**{k: v for k, v in p.items() if k in known})
    # Not CompVis': our layout embedder, named so in training configs written in the CompVis style before
    # core.train stored its own format (scripts/train_configs/shapes-layout.yaml); read, never written.
    if target == "core.models.conditioners.LayoutEmbedder":
        known = _fields(LayoutEmbedderConfig)
        check(known)
        return LayoutEmbedderConfig(**{k: v for k, v in p.items() if k in known})
    raise ValueError(f"config: cond stage {target!r} is not supported. Supported: FrozenOpenCLIPEmbedder, "
                     "FrozenCLIPEmbedder, BERTEmbedder, TransformerEmbedder, ClassEmbedder, SpatialRescaler, "
                     "torch.nn.Identity, "
                     "__is_first_stage__, __is_unconditional__")


def _low_scale(block) -> NoiseAugmentationConfig:
    target, p = _target(block, "low_scale_config")
    if target not in LOW_SCALE_TARGETS:
        raise ValueError(f"config: low_scale_config target {target!r} is not supported; expected "
                         f"{LOW_SCALE_TARGETS[0]}")
    sched = dict(p.get("noise_schedule_config") or {})
    return NoiseAugmentationConfig(linear_start=sched.get("linear_start", 1e-4),
                                   linear_end=sched.get("linear_end", 2e-2),
                                   timesteps=sched.get("timesteps", 1000),
                                   beta_schedule=sched.get("beta_schedule", "linear"),
                                   max_noise_level=p.get("max_noise_level", 1000))


def config_from_yaml(source: str | Path | dict) -> LatentDiffusionConfig | AutoencoderConfig:
    """Translate a CompVis/Stability YAML (a path, YAML text, or the parsed dict); sgm (SDXL)
    configs are handed to core.checkpoints.sgm_yaml.

    A LatentDiffusion config gives a LatentDiffusionConfig; a standalone first-stage config
    (`models/first_stage_models/*/config.yaml`) gives an AutoencoderConfig.
    """
    if isinstance(source, dict):
        data = source
    else:
        text = Path(source).read_text() if Path(str(source)).suffix in (".yaml", ".yml") else str(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"config: not valid YAML: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError("config: expected a CompVis YAML with a top-level `model:` block")
    target, p = _target(data["model"], "model")
    if target.startswith("sgm."):                 # Stability's sgm configs (SDXL): their own translator
        from core.checkpoints.sgm_yaml import config_from_sgm    # (it reuses this module's pieces)
        return config_from_sgm(data)
    if target in FIRST_STAGE_TARGETS:
        return first_stage_config(data["model"])
    if target not in DIFFUSION_TARGETS:
        raise ValueError(f"config: model target {target!r} is not supported; expected one of "
                         f"{', '.join(list(DIFFUSION_TARGETS) + list(FIRST_STAGE_TARGETS))}")
    for required in ("unet_config", "first_stage_config"):
        if required not in p:
            raise ValueError(f"config: model.params has no {required}")
    cond_block = p.get("cond_stage_config", "__is_unconditional__")
    # The reference's default conditioning key (DiffusionWrapper backwards compatibility).
    key = p.get("conditioning_key")
    if key is None:
        key = "concat" if p.get("concat_mode", True) else "crossattn"
    if cond_block == "__is_unconditional__":
        key = None
    own = {"linear_start", "linear_end", "timesteps", "beta_schedule", "cosine_s", "parameterization",
           "scale_factor", "use_ema", "unet_config", "first_stage_config", "cond_stage_config",
           "low_scale_config", "given_betas", "image_size", "channels", "conditioning_key"}
    _warn_unknown("model.params", p, own | _IGNORED["model"])
    if p.get("given_betas") is not None:
        raise ValueError("config: given_betas is not supported; use beta_schedule/linear_start/linear_end")
    unet = _unet(p["unet_config"])
    first_stage = first_stage_config(p["first_stage_config"])
    return LatentDiffusionConfig(
        unet=unet,
        first_stage=first_stage,
        cond_stage=_cond_stage(cond_block),
        conditioning_key=key,
        model_class=DIFFUSION_TARGETS[target],
        parameterization=p.get("parameterization", "eps"),
        linear_start=p.get("linear_start", 1e-4),
        linear_end=p.get("linear_end", 2e-2),
        timesteps=p.get("timesteps", 1000),
        beta_schedule=p.get("beta_schedule", "linear"),
        cosine_s=p.get("cosine_s", 8e-3),
        scale_factor=p.get("scale_factor", 1.0),
        image_size=p.get("image_size", unet.image_size),
        channels=p.get("channels", first_stage.embed_dim),
        use_ema=p.get("use_ema", True),
        low_scale=_low_scale(p["low_scale_config"]) if "low_scale_config" in p else None,
    )
