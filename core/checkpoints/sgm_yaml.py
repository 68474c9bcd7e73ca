"""Stability's `sgm` YAML configs (SDXL: `configs/inference/sd_xl_base.yaml`, `sd_xl_refiner.yaml`),
translated into our dataclass configs.

As for the CompVis YAML (compvis_yaml.py), the file is data: each `target:` is looked up in the
explicit tables below and anything else is an error, never an import. An sgm `DiffusionEngine`
becomes a LatentDiffusionConfig with model_class "DiffusionEngine":

    denoiser_config      DiscreteDenoiser(num_idx) + EpsScaling | VScaling + LegacyDDPMDiscretization
                         -> parameterization, timesteps, linear_start / linear_end
    network_config       sgm UNetModel -> UNetConfig (always SpatialTransformers; sgm has no `legacy`)
    conditioner_config   GeneralConditioner -> GeneralConditionerConfig, one EmbedderSpec per emb_model
    first_stage_config   sgm AutoencoderKL -> the same KL autoencoder as the LDM one (same keys)

Tiny test towers are described in an embedder's params the way the CompVis translator accepts
them: `text_config` (HF CLIPTextConfig fields) for the CLIP embedder, `text_cfg` + `embed_dim`
(open_clip fields) for the OpenCLIP one.
"""

import warnings

from core.checkpoints.compvis_yaml import _cond_stage, _target, _warn_unknown, first_stage_config
from core.models.autoencoder import AutoencoderConfig
from core.models.diffusion import LatentDiffusionConfig
from core.models.sdxl_conditioner import (ConcatTimestepEmbedderNDConfig, EmbedderSpec,
                                          FrozenOpenCLIPEmbedder2Config, GeneralConditionerConfig)
from core.models.unet import UNetConfig

_SGM = "sgm.modules."
DIFFUSION_TARGET = "sgm.models.diffusion.DiffusionEngine"
DENOISER_TARGET = _SGM + "diffusionmodules.denoiser.DiscreteDenoiser"
SCALINGS = {_SGM + "diffusionmodules.denoiser_scaling.EpsScaling": "eps",
            _SGM + "diffusionmodules.denoiser_scaling.VScaling": "v"}
DISCRETIZATION_TARGET = _SGM + "diffusionmodules.discretizer.LegacyDDPMDiscretization"
UNET_TARGET = _SGM + "diffusionmodules.openaimodel.UNetModel"
CONDITIONER_TARGETS = (_SGM + "GeneralConditioner", _SGM + "encoders.modules.GeneralConditioner")
FIRST_STAGE_TARGETS = {"sgm.models.autoencoder.AutoencoderKL": "ldm.models.autoencoder.AutoencoderKL",
                       "sgm.models.autoencoder.AutoencoderKLInferenceWrapper": "ldm.models.autoencoder.AutoencoderKL"}
# sgm embedder -> the CompVis embedder whose params it shares (read by compvis_yaml._cond_stage).
_EMB = _SGM + "encoders.modules."
SAME_AS_COMPVIS = {_EMB + "FrozenCLIPEmbedder": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}
OPENCLIP2_TARGET = _EMB + "FrozenOpenCLIPEmbedder2"
SIZE_EMBEDDER_TARGET = _EMB + "ConcatTimestepEmbedderND"

# sgm parameters that do not change what a trained model computes.
_IGNORED_MODEL = {"disable_first_stage_autocast", "loss_fn_config", "sampler_config", "optimizer_config",
                  "scheduler_config", "network_wrapper", "ckpt_path", "use_ema", "ema_decay_rate",
                  "input_key", "log_keys", "no_cond_log", "compile_model", "en_and_decode_n_samples_a_time"}
_IGNORED_UNET = {"use_checkpoint", "spatial_transformer_attn_type", "use_fp16"}
_UNET_KNOWN = {"in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
               "dropout", "channel_mult", "conv_resample", "dims", "num_classes", "num_heads",
               "num_head_channels", "num_heads_upsample", "use_scale_shift_norm", "resblock_updown",
               "transformer_depth", "context_dim", "disable_self_attentions", "num_attention_blocks",
               "use_linear_in_transformer", "adm_in_channels"}
_UNSUPPORTED_UNET = ("disable_middle_self_attn", "disable_middle_transformer")
_EMBEDDER_ENTRY = {"target", "params", "input_key", "is_trainable", "ucg_rate", "legacy_ucg_value"}


def _denoiser(block) -> dict:
    target, p = _target(block, "denoiser_config")
    if target != DENOISER_TARGET:
        raise ValueError(f"config: denoiser {target!r} is not supported; expected {DENOISER_TARGET}")
    _warn_unknown("denoiser_config", p, {"num_idx", "scaling_config", "discretization_config",
                                         "do_append_zero", "quantize_c_noise", "flip"})
    if not p.get("quantize_c_noise", True) or p.get("flip", True) is not True:
        raise ValueError("config: DiscreteDenoiser with quantize_c_noise: False or flip: False is not supported")
    scaling, _ = _target(p.get("scaling_config"), "denoiser_config.scaling_config")
    if scaling not in SCALINGS:
        raise ValueError(f"config: denoiser scaling {scaling!r} is not supported; expected one of "
                         f"{', '.join(SCALINGS)}")
    disc, dp = _target(p.get("discretization_config"), "denoiser_config.discretization_config")
    if disc != DISCRETIZATION_TARGET:
        raise ValueError(f"config: discretization {disc!r} is not supported; expected {DISCRETIZATION_TARGET}")
    _warn_unknown("discretization_config", dp, {"linear_start", "linear_end", "num_timesteps"})
    timesteps = dp.get("num_timesteps", 1000)
    if p.get("num_idx", timesteps) != timesteps:
        raise ValueError(f"config: DiscreteDenoiser num_idx {p['num_idx']} differs from the discretization's "
                         f"{timesteps} timesteps; not supported")
    return {"parameterization": SCALINGS[scaling], "timesteps": timesteps,
            "linear_start": dp.get("linear_start", 0.00085), "linear_end": dp.get("linear_end", 0.0120)}


def _unet(block) -> UNetConfig:
    target, p = _target(block, "network_config")
    if target != UNET_TARGET:
        raise ValueError(f"config: network {target!r} is not supported; expected {UNET_TARGET}")
    for name in _UNSUPPORTED_UNET:
        if p.get(name):
            raise ValueError(f"config: network_config.{name}: True is not supported")
    _warn_unknown("network_config", p, _UNET_KNOWN | _IGNORED_UNET | set(_UNSUPPORTED_UNET))
    params = {k: v for k, v in p.items() if k in _UNET_KNOWN}
    context_dim = params.get("context_dim")
    if isinstance(context_dim, (list, tuple)):
        # The refiner lists one width per transformer block; they must agree (sgm asserts the same).
        if len(set(context_dim)) != 1:
            raise ValueError(f"config: network_config.context_dim {context_dim} mixes widths; not supported")
        params["context_dim"] = context_dim[0]
    return UNetConfig(image_size=128, use_spatial_transformer=context_dim is not None, legacy=False, **params)


def _embedder(entry, n: int) -> EmbedderSpec:
    where = f"conditioner_config.emb_models[{n}]"
    target, p = _target(entry, where)
    _warn_unknown(where, entry, _EMBEDDER_ENTRY)
    if entry.get("is_trainable"):
        warnings.warn(f"config: {where} is_trainable: True; LDM Studio runs every embedder frozen", stacklevel=3)
    if "input_key" not in entry:
        raise ValueError(f"config: {where} needs an input_key")
    if target in SAME_AS_COMPVIS:
        config = _cond_stage({"target": SAME_AS_COMPVIS[target], "params": p})
    elif target == OPENCLIP2_TARGET:
        known = {"arch", "layer", "max_length", "text_cfg", "embed_dim", "quick_gelu", "legacy",
                 "always_return_pooled"}
        _warn_unknown(where, p, known | {"version", "device", "freeze"})
        config = FrozenOpenCLIPEmbedder2Config(**{k: v for k, v in p.items() if k in known})
    elif target == SIZE_EMBEDDER_TARGET:
        _warn_unknown(where, p, {"outdim"})
        config = ConcatTimestepEmbedderNDConfig(outdim=p["outdim"])
    else:
        raise ValueError(f"config: embedder {target!r} is not supported. Supported: "
                         f"{', '.join([*SAME_AS_COMPVIS, OPENCLIP2_TARGET, SIZE_EMBEDDER_TARGET])}")
    return EmbedderSpec(input_key=entry["input_key"], embedder=config)


def _conditioner(block, native_size: int) -> GeneralConditionerConfig:
    target, p = _target(block, "conditioner_config")
    if target not in CONDITIONER_TARGETS:
        raise ValueError(f"config: conditioner {target!r} is not supported; expected {CONDITIONER_TARGETS[0]}")
    _warn_unknown("conditioner_config", p, {"emb_models"})
    return GeneralConditionerConfig(tuple(_embedder(e, n) for n, e in enumerate(p.get("emb_models") or [])),
                                    native_size=native_size)


def _first_stage(block) -> AutoencoderConfig:
    target, p = _target(block, "first_stage_config")
    if target not in FIRST_STAGE_TARGETS:
        raise ValueError(f"config: first stage {target!r} is not supported; expected one of "
                         f"{', '.join(FIRST_STAGE_TARGETS)}")
    ddconfig = dict(p.get("ddconfig") or {})
    if ddconfig.get("attn_type") == "vanilla-xformers":       # the same attention, another kernel
        ddconfig["attn_type"] = "vanilla"
    return first_stage_config({"target": FIRST_STAGE_TARGETS[target], "params": {**p, "ddconfig": ddconfig}})


def config_from_sgm(data: dict) -> LatentDiffusionConfig:
    """Translate a parsed sgm YAML (top-level `model:` with target DiffusionEngine)."""
    target, p = _target(data["model"], "model")
    if target != DIFFUSION_TARGET:
        raise ValueError(f"config: model target {target!r} is not supported; expected {DIFFUSION_TARGET}")
    for required in ("denoiser_config", "network_config", "conditioner_config", "first_stage_config"):
        if required not in p:
            raise ValueError(f"config: model.params has no {required}")
    _warn_unknown("model.params", p, {"scale_factor", "denoiser_config", "network_config", "conditioner_config",
                                      "first_stage_config"} | _IGNORED_MODEL)
    unet = _unet(p["network_config"])
    first_stage = _first_stage(p["first_stage_config"])
    f = first_stage.ddconfig.downsample_factor
    image_size = 1024 // f                                   # SDXL base and refiner train at 1024^2
    return LatentDiffusionConfig(
        unet=unet,
        first_stage=first_stage,
        cond_stage=_conditioner(p["conditioner_config"], native_size=image_size * f),
        conditioning_key="hybrid" if unet.in_channels > first_stage.embed_dim else "crossattn",
        model_class="DiffusionEngine",
        scale_factor=p.get("scale_factor", 1.0),
        image_size=image_size,
        channels=first_stage.embed_dim,
        use_ema=False,
        **_denoiser(p["denoiser_config"]),
    )
