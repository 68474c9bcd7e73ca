"""`load_model` and `save_model`: checkpoint files <-> LatentDiffusion (or a standalone autoencoder).

Loading, step by step:
1. read the file safely (files.py) -> flat state dict + metadata;
2. the config: from the file's metadata (project-native), or translated from a CompVis YAML;
3. bring the keys into our module's layout: EMA weights over `model.*` where the reference samples
   with them, SD1's HF-CLIP text keys mapped, a stored `scale_factor` taken into the config;
4. compare key sets and shapes with the model the config describes: anything missing or unexpected
   is an error naming it (strict=False loads what matches and lists the rest);
5. build the model on the meta device and load with assign=True, so a multi-GB checkpoint is never
   held twice; then cast to the requested device/dtype (schedule buffers stay float32).
"""

import dataclasses
import hashlib
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from core import inference_dtype, speed
from core.checkpoints.clip_keys import hf_clip_text_to_ours, is_hf_clip_text_keys
from core.checkpoints.bundled_configs import BUNDLED_CONFIGS
from core.checkpoints.compvis_yaml import config_from_yaml
from core.checkpoints.config_json import config_from_json, config_to_json
from core.checkpoints.detect import detect_family
from core.checkpoints.files import CheckpointError, read_checkpoint
from core.models.autoencoder import AutoencoderConfig, build_autoencoder
from core.models.clip_text import FrozenCLIPEmbedderConfig
from core.models.diffusion import COND_STAGE_FIRST_STAGE, LatentDiffusion, LatentDiffusionConfig
from core.models.schedule import LOW_SCALE_BUFFERS, SCHEDULE_BUFFERS, discrete_sigmas, make_beta_schedule
from core.models.sdxl_conditioner import GeneralConditionerConfig

METADATA_CONFIG = "ldm_studio_config"       # safetensors metadata key holding the JSON config
METADATA_FORMAT = "ldm_studio_format"
FORMAT_VERSION = "1"


def _resolve_config(path: Path, config, metadata: dict, sd: dict):
    if config is not None:
        if dataclasses.is_dataclass(config):
            return config
        if isinstance(config, str) and config in BUNDLED_CONFIGS:       # e.g. config="sd2_v"
            return BUNDLED_CONFIGS[config]()
        return config_from_yaml(config)
    if METADATA_CONFIG in metadata:
        return config_from_json(metadata[METADATA_CONFIG])
    found = detect_family(sd)                                            # no config: read the keys
    if found.config is not None:
        return BUNDLED_CONFIGS[found.config]()
    raise CheckpointError(
        f"{path.name} carries no LDM Studio config and its architecture cannot be read off its keys "
        f"(detected: {found.family}): {found.message}. Bundled configs: {', '.join(BUNDLED_CONFIGS)}; "
        "or pass the YAML it was released with, e.g. load_model(path, config='v2-inference.yaml').")


def _ema_over_model(sd: dict, use_ema: bool) -> dict:
    """Put `model_ema.*` over `model.*` when the reference would sample under ema_scope (FACTS.md 1).

    EMA buffer names are the DiffusionWrapper parameter names with every dot removed.
    """
    ema = {k[len("model_ema."):]: v for k, v in sd.items() if k.startswith("model_ema.")}
    out = {k: v for k, v in sd.items() if not k.startswith("model_ema.")}
    if not use_ema or not ema:
        return out
    model_keys = [k for k in out if k.startswith("model.")]
    missing = [k for k in model_keys if k[len("model."):].replace(".", "") not in ema]
    if missing:
        raise CheckpointError(f"the file has EMA weights (model_ema.*) but not for {len(missing)} UNet "
                              f"parameters, e.g. {missing[:3]}; load with a config that sets use_ema: False")
    for k in model_keys:
        out[k] = ema[k[len("model."):].replace(".", "")]
    return out


def _to_our_layout(sd: dict, cfg: LatentDiffusionConfig) -> tuple[dict, LatentDiffusionConfig]:
    sd = _ema_over_model(sd, cfg.use_ema)
    if "scale_factor" in sd:  # scale_by_std models store it; it overrides the config (trap 7)
        cfg = dataclasses.replace(cfg, scale_factor=float(sd.pop("scale_factor")))
    prefix = "cond_stage_model."
    if cfg.cond_stage == COND_STAGE_FIRST_STAGE:
        # `__is_first_stage__`: the cond stage IS the first stage; any copies of it are aliases.
        sd = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    elif isinstance(cfg.cond_stage, FrozenCLIPEmbedderConfig):
        sd = _hf_clip_text_at(sd, prefix)
    elif isinstance(cfg.cond_stage, GeneralConditionerConfig):      # SDXL: CLIP-L among the embedders
        for n, spec in enumerate(cfg.cond_stage.embedders):
            if isinstance(spec.embedder, FrozenCLIPEmbedderConfig):
                sd = _hf_clip_text_at(sd, f"conditioner.embedders.{n}.")
        sd = _drop_sgm_sigmas(sd, cfg)
    return sd, cfg


def _hf_clip_text_at(sd: dict, prefix: str) -> dict:
    """SD1 / SDXL files hold the CLIP ViT-L text encoder in HF key names under `prefix`: map them."""
    text = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not is_hf_clip_text_keys(text):
        return sd
    sd = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    sd.update({prefix + k: v for k, v in hf_clip_text_to_ours(text).items()})
    return sd


def _drop_sgm_sigmas(sd: dict, cfg: LatentDiffusionConfig) -> dict:
    """sgm's DiscreteDenoiser buffer `denoiser.sigmas` (some files carry it) is recomputed from the
    config; a file whose sigmas disagree was trained on another schedule, which is an error."""
    if "denoiser.sigmas" not in sd:
        return sd
    sd = dict(sd)
    stored = sd.pop("denoiser.sigmas").float()
    ours = discrete_sigmas(make_beta_schedule(cfg.beta_schedule, cfg.timesteps, cfg.linear_start,
                                              cfg.linear_end, cfg.cosine_s))
    if stored.shape != ours.shape or not torch.allclose(stored, ours, rtol=1e-2):
        raise CheckpointError(f"the file's denoiser.sigmas ({tuple(stored.shape)}, max {stored.max():.4g}) do not "
                              f"match the config's schedule ({tuple(ours.shape)}, max {ours.max():.4g}); "
                              "is this the right config for this file?")
    return sd


def _check_keys(model: nn.Module, sd: dict, strict: bool, name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong_shape = [f"{k}: file {tuple(sd[k].shape)} vs config {tuple(expected[k].shape)}"
                   for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if wrong_shape:
        raise CheckpointError(f"{name} does not match its config: {len(wrong_shape)} tensors differ in shape, "
                              f"e.g. {'; '.join(wrong_shape[:4])}. Is this the right YAML for this file?")
    if not missing and not unexpected:
        return

    def show(keys):
        return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

    msg = (f"{name} does not match its config: {len(missing)} missing keys"
           + (f" ({show(missing)})" if missing else "")
           + f", {len(unexpected)} unexpected keys" + (f" ({show(unexpected)})" if unexpected else ""))
    if strict:
        raise CheckpointError(msg + ". Is this the right YAML for this file? "
                                    "(strict=False loads what matches and keeps the rest at random init)")
    warnings.warn(msg + "; loaded with strict=False: missing weights keep their random initialisation",
                  stacklevel=3)


def _materialize_buffers(model: nn.Module) -> None:
    """Rebuild the non-persistent buffers that stayed on the meta device (open_clip's causal mask,
    the schedule of sgm models)."""
    if isinstance(model, LatentDiffusion) and model.betas.is_meta:
        with torch.device("cpu"):
            model.register_schedule()
    for module_name, module in model.named_modules():
        for buf_name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if buf_name == "attn_mask" and hasattr(module, "build_causal_mask"):
                module.attn_mask = module.build_causal_mask()
            else:
                raise RuntimeError(f"cannot rebuild buffer {module_name}.{buf_name} after a meta-device load")


def _build(cfg, sd: dict, strict: bool, name: str) -> nn.Module:
    make = (lambda: build_autoencoder(cfg)) if isinstance(cfg, AutoencoderConfig) else (lambda: LatentDiffusion(cfg))
    with torch.device("meta"):
        model = make()
    _check_keys(model, sd, strict, name)
    expected = model.state_dict()
    if strict or not (set(expected) - set(sd)):
        model.load_state_dict(sd, strict=False, assign=True)    # keys checked above
        _materialize_buffers(model)
        return model
    model = make()                                             # strict=False with gaps: real init
    model.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=False)
    return model


def _cast(model: nn.Module, device, dtype) -> nn.Module:
    """Move to device/dtype, keeping the schedule buffers (and the noise-augmentation ones) float32."""
    model.to(device=device)
    if dtype is not None:
        for name, module in model.named_children():
            if name != "low_scale_model":
                module.to(dtype=dtype)
    if isinstance(model, LatentDiffusion):
        for name in SCHEDULE_BUFFERS:
            setattr(model, name, getattr(model, name).float())
        if hasattr(model, "denoiser"):                      # sgm's sigma grid (SDXL)
            model.denoiser.sigmas = model.denoiser.sigmas.float()
        if hasattr(model, "low_scale_model"):
            for name in LOW_SCALE_BUFFERS:
                setattr(model.low_scale_model, name, getattr(model.low_scale_model, name).float())
    return model


def load_model(path: str | Path, config=None, device=None, dtype: torch.dtype | None = None,
               strict: bool = True) -> LatentDiffusion | nn.Module:
    """Load a LatentDiffusion (or a standalone first stage) from .safetensors / .ckpt.

    path:   a project-native .safetensors (config in its metadata), or an original CompVis / Stability
            checkpoint together with `config`, the YAML it was released with (path, text or dict), one
            of our config dataclasses, or a bundled config's name ("sd1", "sd2", "sd2_v", "sdxl_base",
            ...: core/checkpoints/bundled_configs.py). With no config and no metadata, the family is
            detected from the keys (core/checkpoints/detect.py) where that fixes the architecture
            (SD 1.x, SD 2 inpainting, SDXL base / refiner); otherwise the error says what to pass.
    device, dtype: where and in what precision to run (default: the CPU, in core.inference_dtype's
            precision for the device: float32 on the CPU, float16 on CUDA — not the stored dtype).
    strict: missing or unexpected keys are an error naming them; strict=False loads what matches
            and warns with the list.
    On the CPU the model's larger Conv2d / Linear layers run oneDNN with prepacked weights
    (core/speed.py: same keys, outputs equal up to float rounding; LDM_CPU_PACKED=0 turns it off).
    """
    path = Path(path)
    sd, metadata = read_checkpoint(path)
    cfg = _resolve_config(path, config, metadata, sd)
    if isinstance(cfg, LatentDiffusionConfig):
        sd, cfg = _to_our_layout(sd, cfg)
    elif not isinstance(cfg, AutoencoderConfig):
        raise CheckpointError(f"{path.name}: unsupported config type {type(cfg).__name__}")
    model = _build(cfg, sd, strict, path.name)
    device = torch.device(device or "cpu")
    model = _cast(model, device, dtype or getattr(torch, inference_dtype(device))).eval()
    if device.type == "cpu":   # oneDNN prepacked weights: same keys, same outputs up to rounding
        speed.pack_as_it_fits(model, speed.min_packed_weight(model))
    model.checkpoint_path = str(path)
    model.metadata = dict(metadata)
    return model


def save_model(model: nn.Module, path: str | Path, dtype: torch.dtype | None = torch.float16,
               metadata: dict[str, str] | None = None) -> Path:
    """Write a project-native .safetensors: weights (cast to `dtype`, schedule buffers float32) and
    the model's config as JSON in the metadata, so `load_model(path)` needs nothing else.
    The file is written to a temporary name and renamed, so a crash never leaves half a file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_model writes .safetensors files, got {path.name}")
    cfg = model.config if isinstance(model, LatentDiffusion) else getattr(model, "cfg", None)
    if cfg is None:
        raise ValueError("save_model needs a LatentDiffusion or an autoencoder built from a config")
    float32_names = set(SCHEDULE_BUFFERS) | {f"low_scale_model.{n}" for n in LOW_SCALE_BUFFERS}
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point() and key not in float32_names:
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    meta = {METADATA_FORMAT: FORMAT_VERSION, METADATA_CONFIG: config_to_json(cfg), **(metadata or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    tmp.chmod(0o644)                             # safetensors creates 0600; a model is for every user to read
    tmp.replace(path)
    return path


def model_hash(path: str | Path) -> str:
    """AUTOMATIC1111's `Model hash`: the first 10 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]
