"""Training configs: RunConfig and the dataclasses in it; YAML is only how they are stored.

    cfg = make_config("txt2img", "shapes", "small", first_stage="weights/shapes-kl-f4.safetensors")
    cfg.stage                      # "ldm": capabilities(cfg.model).training_stage, the one place that tells
    text = dump_config(cfg)        # YAML in LDM Studio's format
    load_config(text) == cfg

A config file has these blocks:
    model:   LDM Studio's format: the model config as a project file's `ldm_studio_config` metadata
             holds it (core/checkpoints/config_json.py: each dataclass with its `type:`), complete;
             or a CompVis-style block (`target:` ...), read by the one YAML translator,
             core.checkpoints.config_from_yaml (scripts/train_configs/*.yaml are such). In a CompVis
             first-stage block `lossconfig.params` are the loss settings; in an LDM block
             `first_stage_config.params.ckpt_path` names the trained autoencoder (an exported
             .safetensors or a run folder), whose architecture and scale factor fill in `ddconfig`,
             `embed_dim` and `scale_factor` when they are left out.
    first_stage_path:  ours: the trained autoencoder an LDM's first stage is loaded from
    loss:    ours: losses.AutoencoderLossConfig (autoencoders)
    data:    data.DataConfig
    train:   TrainConfig below
    export:  optional {name, defaults: {sampler, karras, steps, guidance_scale, eta, width, height}}

`make_config(stage, dataset, model_size, steps, batch_size, lr, ...)` builds a RunConfig (the app's
Train tab); `load_config` reads either format; `dump_config` / `config_dict` write ours.
"""

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.capabilities import capabilities
from core.checkpoints import config_from_yaml, read_checkpoint
from core.checkpoints.config_json import (
    config_from_json,
    config_from_plain,
    config_to_plain,
)
from core.models.autoencoder import AutoencoderConfig, DDConfig
from core.models.conditioners import (
    ClassEmbedderConfig,
    LayoutEmbedderConfig,
    TransformerEmbedderConfig,
)
from core.models.diffusion import COND_STAGE_IDENTITY, LatentDiffusionConfig
from core.models.unet import UNetConfig
from core.train.data import DataConfig
from core.world import BACKGROUND_CLASS0, BACKGROUNDS
from core.train.losses import AutoencoderLossConfig

STAGES = ("autoencoder", "ldm", "lora")          # lora: core/train/lora.py (a `lora:` block, no model)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
METADATA_SCALE_FACTOR = "ldm_studio_scale_factor"     # an exported autoencoder's latent scale factor
BLOCKS = ("model", "first_stage_path", "loss", "data", "train", "export")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10000                   # optimizer steps in the whole run
    batch_size: int = 32                 # images per process per micro-step
    grad_accum: int = 1                  # micro-steps per optimizer step
    lr: float = 1e-4                     # peak learning rate (after warm-up)
    lr_schedule: str = "constant"        # "constant" (the reference's) or "cosine" (to 10% of lr)
    warmup_steps: int = 500              # linear warm-up from 0
    betas: tuple[float, float] = (0.9, 0.999)   # Adam(W) betas; the reference autoencoders use (0.5, 0.9)
    weight_decay: float = 0.01           # AdamW (LDM); the autoencoder uses Adam without decay
    grad_clip: float = 1.0               # max gradient norm; 0 = no clipping
    ema_decay: float = 0.9999            # EMA of the trained weights (with the reference's warm-up)
    precision: str = "auto"              # auto: fp32 on CPU, bf16 autocast on bf16-capable GPUs, fp16 on older GPUs
    compile: bool = False                # torch.compile the training step's network
    channels_last: bool = False          # NHWC memory layout for the convolutions
    device: str = "auto"                 # auto: cuda when available (the local rank's GPU), else cpu
    threads: int = 0                     # CPU threads for torch (0: torch's default, one per core). On a
                                         # machine shared with other jobs, 1 avoids OpenMP spin-waiting
    seed: int = 0                        # noise, timesteps, conditioning dropout, initial weights
    log_every: int = 10                  # steps between metrics.jsonl lines / state.json updates
    sample_every: int = 500              # steps between sample grids (and at the end)
    ckpt_every: int = 500                # steps between checkpoints (and at stop and end)
    n_samples: int = 8                   # images per sample grid
    sample_steps: int = 20               # DDIM steps for the grids
    sample_guidance: float = 3.0         # classifier-free guidance scale for the grids
    cond_drop: float = 0.1               # LDM: conditioning dropout, so classifier-free guidance works
    lpips_weights: tuple[str, ...] = ()  # autoencoder: local LPIPS/VGG16 weight files (none: no LPIPS)
    init_from: str | None = None         # start from trained weights: LDM: an LDM's (txt2img -> inpainting);
                                         # autoencoder: an autoencoder's (file or run folder)
    freeze_encoder: bool = False         # autoencoder: train the decoder only (encoder and quant_conv frozen),
                                         # so the latent space an LDM was trained in stays the same (as
                                         # Stable Diffusion's fine-tuned ft-MSE decoder)
    min_snr_gamma: float | None = None   # LDM: Min-SNR-gamma loss weighting (Hang et al. 2023; 5 there);
                                         # None: the reference's uniform weighting
    offset_noise: float = 0.0            # LDM: the training noise gets this times one N(0, 1) value per sample
                                         # and latent channel (Guttenberg 2023), so the model can move a whole
                                         # image's tone from pure noise; 0: off (the reference)
    logvar_init: float | None = None     # KL autoencoder: initial bias of the posterior's log-variance
                                         # channels (quant_conv). None: default init, where the sampled
                                         # latent's noise (std ~1-10) drowns the signal for a long time;
                                         # -8 (std 0.02) starts nearly deterministic, as trained VAEs end

    def __post_init__(self):
        if isinstance(self.lpips_weights, str):
            object.__setattr__(self, "lpips_weights", (self.lpips_weights,))
        object.__setattr__(self, "lpips_weights", tuple(self.lpips_weights or ()))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "sample_every", "ckpt_every", "n_samples",
                     "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ValueError(f"train.cond_drop must be in [0, 1), got {self.cond_drop}")
        if not 0.0 <= self.offset_noise <= 1.0:
            raise ValueError(f"train.offset_noise must be in [0, 1] (0.1 is usual), got {self.offset_noise}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"train.min_snr_gamma must be > 0 (or null for uniform weights), got {self.min_snr_gamma}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("train.lr must be > 0, train.warmup_steps and train.grad_clip >= 0")


@dataclass(frozen=True)
class RunConfig:
    model: AutoencoderConfig | LatentDiffusionConfig
    data: DataConfig
    train: TrainConfig
    loss: AutoencoderLossConfig | None = None            # autoencoders (None there: the defaults)
    first_stage_path: str | None = None                  # LDM: the trained autoencoder's weights
    export: dict = field(default_factory=dict)           # {name, defaults}

    def __post_init__(self):
        if self.stage == "autoencoder" and self.loss is None:
            object.__setattr__(self, "loss", AutoencoderLossConfig())
        if self.stage == "ldm" and self.loss is not None:
            raise ValueError("config: `loss` holds an autoencoder's loss settings; a latent diffusion model has none")

    @property
    def stage(self) -> str:
        """"autoencoder" or "ldm", as the model's capabilities say (never read off a target string)."""
        return capabilities(self.model).training_stage


def require_stage(cfg: RunConfig, stage: str | None) -> RunConfig:
    """cfg, or a ValueError when the command line asks for the other stage."""
    if stage is not None and stage != cfg.stage:
        what = "an autoencoder" if cfg.stage == "autoencoder" else "a latent diffusion model"
        raise ValueError(f"this config trains {what}; run `python -m core.train {cfg.stage} --config ...`")
    return cfg


def _known(cls, block: dict, where: str) -> dict:
    if not isinstance(block, dict):
        raise ValueError(f"config: {where} must be a mapping of settings, got {block!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(block) - names)
    if unknown:
        raise ValueError(f"config: {where} has unknown keys {unknown}; valid keys: {sorted(names)}")
    return dict(block)


def first_stage_source(path: str | Path) -> tuple[AutoencoderConfig, float | None]:
    """The autoencoder config and latent scale factor stored with a trained first stage: an exported
    .safetensors (autoencoder or LDM) or a run folder (runs/NAME, its checkpoints/last.pt)."""
    path = Path(path)
    if path.is_dir():
        from core.train.checkpoint import load_checkpoint
        ckpt = load_checkpoint(path / "checkpoints" / "last.pt")
        model = load_config(ckpt["config"]).model
        if isinstance(model, LatentDiffusionConfig):
            return model.first_stage, model.scale_factor
        return model, ckpt.get("scale_factor")
    _, metadata = read_checkpoint(path)
    if "ldm_studio_config" not in metadata:
        raise ValueError(f"{path} carries no LDM Studio config; give a file written by "
                         "`python -m core.train export` or a run folder")
    model = config_from_json(metadata["ldm_studio_config"])
    if isinstance(model, LatentDiffusionConfig):
        return model.first_stage, model.scale_factor
    scale = metadata.get(METADATA_SCALE_FACTOR)
    return model, None if scale is None else float(scale)


def _fill_first_stage(params: dict, init_from: str | None) -> str | None:
    """Complete a CompVis LDM block's first stage (and scale factor) from the trained autoencoder."""
    fs = params["first_stage_config"]
    if not isinstance(fs, dict):
        raise ValueError("config: model.params.first_stage_config must be a block with a target")
    fs_params = dict(fs.get("params") or {})
    path = fs_params.get("ckpt_path") or init_from
    if path is not None and ("ddconfig" not in fs_params or "scale_factor" not in params):
        ae, scale = first_stage_source(path)
        if "ddconfig" not in fs_params:
            fs_params.update(embed_dim=ae.embed_dim, ddconfig=dataclasses.asdict(ae.ddconfig))
            if ae.n_embed is not None:
                fs_params["n_embed"] = ae.n_embed
        if "scale_factor" not in params:
            if scale is None:
                raise ValueError(f"{path} has no latent scale factor; set model.params.scale_factor")
            params["scale_factor"] = scale
        params["first_stage_config"] = {**fs, "params": fs_params}
    elif path is None and "ddconfig" not in fs_params:
        raise ValueError("config: first_stage_config needs params.ckpt_path (a trained autoencoder) or a full "
                         "ddconfig")
    return fs_params.get("ckpt_path")


def _compvis_model(block: dict, init_from: str | None):
    """(model config, loss config or None, first-stage path) from a CompVis-style model block."""
    block = copy.deepcopy(block)
    params = block.setdefault("params", {})
    first_stage_path = None
    if "first_stage_config" in params:            # a diffusion model's block: its first stage may be a file
        first_stage_path = _fill_first_stage(params, init_from)
    model = config_from_yaml({"model": block})
    loss = None
    if isinstance(model, AutoencoderConfig):
        loss_params = (params.get("lossconfig") or {}).get("params") or {}
        loss = AutoencoderLossConfig(**_known(AutoencoderLossConfig, loss_params, "lossconfig.params"))
    return model, loss, first_stage_path


def _read(source) -> dict:
    if isinstance(source, dict):
        return copy.deepcopy(source)
    is_file = isinstance(source, Path) or Path(str(source)).suffix in (".yaml", ".yml")
    text = Path(source).read_text() if is_file else str(source)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"config: not valid YAML: {err}") from None


def model_config(raw: dict, init_from: str | None = None):
    """(model config, loss, first-stage path) of a config file's `model:` block, in either format."""
    block = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(block, dict) or not ({"type", "target"} & set(block)):
        raise ValueError("config: the model block needs `type:` (LDM Studio's format) or `target:` (a CompVis-style "
                         "block); without either there is no model.target to tell its stage")
    if "target" in block:
        for ours in ("loss", "first_stage_path"):
            if ours in raw:
                raise ValueError(f"config: `{ours}` belongs to LDM Studio's format; in a CompVis-style model block "
                                 "give lossconfig.params / first_stage_config.params.ckpt_path instead")
        return _compvis_model(block, init_from)
    loss = raw.get("loss")
    loss = None if loss is None else AutoencoderLossConfig(**_known(AutoencoderLossConfig, loss, "loss"))
    return config_from_plain(block, "the config's model block"), loss, raw.get("first_stage_path")


def stage_of(raw: dict) -> str:
    """The stage a config file's dict trains (the run manager asks before launching): "lora" for a
    `lora:` block (core/train/lora.py), else its model block read, then capabilities(model).training_stage."""
    if isinstance(raw, dict) and isinstance(raw.get("lora"), dict):
        return "lora"
    return capabilities(model_config(raw)[0]).training_stage


def load_config(source, stage: str | None = None) -> RunConfig:
    """Read a training config (a YAML path, YAML text or dict, in either format) into a RunConfig."""
    raw = _read(source)
    if isinstance(raw, dict) and isinstance(raw.get("lora"), dict):
        raise ValueError("this config trains a LoRA: run `python -m core.train lora --config ...` "
                         "(core.train.lora.load_lora_config reads it)")
    if not isinstance(raw, dict) or "model" not in raw:
        raise ValueError("a training config needs a `model:` block, plus `data:` and `train:`")
    unknown = sorted(set(raw) - set(BLOCKS))
    if unknown:
        raise ValueError(f"config: unknown top-level blocks {unknown}; valid: {', '.join(BLOCKS)}")
    train = TrainConfig(**_known(TrainConfig, raw.get("train") or {}, "train"))
    data = DataConfig(**_known(DataConfig, raw.get("data") or {}, "data"))
    model, loss, first_stage_path = model_config(raw, train.init_from)
    cfg = require_stage(RunConfig(model, data, train, loss, first_stage_path, dict(raw.get("export") or {})), stage)
    if cfg.stage == "ldm":
        _check_ldm(cfg.model, cfg.data)
    return cfg


def _plain(obj) -> dict:
    """A flat config dataclass as YAML-safe values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def config_dict(cfg: RunConfig) -> dict:
    """The config in LDM Studio's format, as plain values (a run folder's config.yaml, a checkpoint's "config")."""
    out = {"model": config_to_plain(cfg.model)}
    if cfg.first_stage_path is not None:
        out["first_stage_path"] = str(cfg.first_stage_path)
    if cfg.loss is not None:
        out["loss"] = _plain(cfg.loss)
    out.update(data=_plain(cfg.data), train=_plain(cfg.train))
    if cfg.export:
        out["export"] = copy.deepcopy(cfg.export)
    return out


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_dict(cfg), sort_keys=False, default_flow_style=None, width=110)


def _check_ldm(m: LatentDiffusionConfig, data: DataConfig) -> None:
    f = m.first_stage.ddconfig.downsample_factor
    extra = {"upscale-ldm": 3, "inpaint-sd": 1 + m.channels}.get(m.task, 0)
    if m.task not in ("conditional", "unconditional", "upscale-ldm", "inpaint-sd"):
        raise ValueError(f"training {m.task!r} models is not supported; train text/class/layout/unconditional "
                         "(LatentDiffusion), SR (concat + torch.nn.Identity) or SD2-style inpainting "
                         "(LatentInpaintDiffusion, hybrid)")
    if m.unet.in_channels != m.channels + extra:
        raise ValueError(f"unet_config.in_channels is {m.unet.in_channels} but a {m.task} model with "
                         f"{m.channels} latent channels needs {m.channels + extra}")
    if m.task == "upscale-ldm" and data.sr_factor != f:
        raise ValueError(f"a super-resolution LDM reads the low-res image at latent resolution: set "
                         f"data.sr_factor to the first stage's factor {f}")
    if m.task == "inpaint-sd" and not data.masks:
        raise ValueError("an inpainting LDM needs masks: set data.masks: true")
    if isinstance(m.cond_stage, TransformerEmbedderConfig) and m.cond_stage.tokenizer != "clip":
        raise ValueError("a jointly trained text encoder needs tokenizer: clip (open_clip's BPE works offline)")
    if m.cond_stage not in (None, COND_STAGE_IDENTITY) and data.source != "shapes" and \
            not isinstance(m.cond_stage, TransformerEmbedderConfig):
        raise ValueError("class and layout conditioning come from the shapes world: set data.source: shapes")
    if data.layout_background:
        n = BACKGROUND_CLASS0 + len(BACKGROUNDS)
        if not isinstance(m.cond_stage, LayoutEmbedderConfig) or m.cond_stage.n_classes != n \
                or m.cond_stage.max_objects < 4:
            raise ValueError(f"data.layout_background adds the background as a layout token: the layout embedder "
                             f"needs n_classes: {n} (24 objects + {len(BACKGROUNDS)} backgrounds) and max_objects: 4")


# --------------------------------------------------------------------------------------------
# make_config: the app's Train tab
# --------------------------------------------------------------------------------------------

def _ae(ch: int, mult: tuple, image_size: int) -> AutoencoderConfig:
    return AutoencoderConfig(kind="kl", embed_dim=4, ddconfig=DDConfig(
        z_channels=4, resolution=image_size, double_z=True, ch=ch, ch_mult=mult, num_res_blocks=1,
        attn_resolutions=(), dropout=0.0))


def _unet(mc: int, mult: tuple, nrb: int, attn: tuple) -> dict:
    return {"model_channels": mc, "channel_mult": mult, "num_res_blocks": nrb, "attention_resolutions": attn,
            "num_head_channels": 32}


# Model sizes, as small factory tables (DiT's habit): autoencoders (of image side S) and UNets on S/4 latents.
AUTOENCODER_SIZES = {
    "tiny": lambda size: _ae(32, (1, 1, 2), size),      # ~0.9M: tests and smoke runs
    "small": lambda size: _ae(32, (1, 2, 4), size),     # ~2.7M: the shapes-world default
    "base": lambda size: _ae(64, (1, 2, 2), size),      # ~3.8M
}
UNET_SIZES = {
    "tiny": lambda: _unet(32, (1, 2), 1, (2,)),
    "small": lambda: _unet(64, (1, 2, 2), 1, (2, 4)),       # ~6.6M with a 64-wide context
    "base": lambda: _unet(64, (1, 2, 2), 2, (2, 4)),        # ~9.9M
}
TEXT_ENCODER_SIZES = {"tiny": (32, 1), "small": (64, 4), "base": (64, 6)}    # (width, layers)
LDM_STAGES = ("txt2img", "class", "layout", "uncond", "sr", "inpaint")
AUTOENCODER_LOSS = AutoencoderLossConfig(disc_start=2000, kl_weight=1e-6, disc_weight=0.5, disc_num_layers=2,
                                         disc_ndf=32, pixel_l2_weight=10.0)


def make_config(stage: str, dataset: str = "shapes", model_size: str = "small", steps: int = 10000,
                batch_size: int = 32, lr: float | None = None, *, image_size: int = 64,
                first_stage: str | None = None, init_from: str | None = None, precision: str = "auto",
                seed: int = 0, name: str | None = None, **train_overrides) -> RunConfig:
    """A training config (what `load_config` reads back from `dump_config`'s YAML).

    stage: "autoencoder", or an LDM stage: "txt2img" (jointly trained text encoder, open_clip tokens),
        "class" (24 shapes-world classes + null), "layout", "uncond", "sr" (4x, concat LR image) or
        "inpaint" (SD2's 9-channel layout; give init_from = a txt2img model to fine-tune).
    dataset: "shapes", "photos" or the path of an image folder (captions from name.txt / captions.jsonl).
    model_size: "tiny", "small" or "base". first_stage: the trained autoencoder (LDM stages): an exported
        .safetensors or its run folder, read here for its architecture and latent scale factor.
    train_overrides: any other train.* key (log_every, sample_every, grad_accum, ...).
    """
    if model_size not in UNET_SIZES:
        raise ValueError(f"model_size must be one of {list(UNET_SIZES)}, got {model_size!r}")
    if stage not in ("autoencoder",) + LDM_STAGES:
        raise ValueError(f"stage must be 'autoencoder' or one of {LDM_STAGES}, got {stage!r}")
    source = dataset if dataset in ("shapes", "photos") else "folder"
    data = {"source": source, "size": image_size, **({"path": dataset} if source == "folder" else {})}
    train = {"steps": steps, "batch_size": batch_size, "precision": precision, "seed": seed,
             "warmup_steps": min(500, steps // 10), "sample_every": max(1, min(500, steps // 10)),
             "ckpt_every": max(1, min(500, steps // 10)), **train_overrides}
    export = {"name": name or (f"{dataset}-{stage}" if source != "folder" else Path(dataset).name + f"-{stage}")}
    if init_from is not None:                       # LDM stages: the UNet where shapes allow (ldm.init_from_ldm)
        train["init_from"] = init_from
    if stage == "autoencoder":
        if source == "shapes":
            data["photo_fraction"] = 0.2           # photos too, so the SR model's latents cover them
        train.update(lr=lr or 2e-4, betas=(0.5, 0.9), weight_decay=0.0)
        train.setdefault("logvar_init", -8.0)       # a nearly deterministic posterior at the start
        return RunConfig(AUTOENCODER_SIZES[model_size](image_size), DataConfig(**data), TrainConfig(**train),
                         AUTOENCODER_LOSS, export=export)
    if first_stage is None and init_from is None:
        raise ValueError(f"stage {stage!r} trains in the latent space of an autoencoder: give first_stage= "
                         "(an exported autoencoder .safetensors or its run folder)")
    ae, scale = first_stage_source(first_stage or init_from)
    if scale is None:
        raise ValueError(f"{first_stage or init_from} has no latent scale factor (train the autoencoder to its "
                         "end, or export it, first)")
    model = _ldm(stage, model_size, image_size, ae, scale)
    if stage == "class":
        data["n_objects"] = 1
    elif stage == "sr":
        data.update(sr_factor=ae.ddconfig.downsample_factor, render_size=4 * image_size)
        if source == "shapes":
            data["photo_fraction"] = 0.3
    elif stage == "inpaint":
        data["masks"] = True
    train.update(lr=lr or 2e-4)
    train.setdefault("min_snr_gamma", 5.0)          # bench/results/min_snr_ab.json: 2x the accuracy at step 700
    if stage in ("txt2img", "class", "layout", "inpaint"):
        export["defaults"] = {"sampler": "ddim", "karras": False, "steps": 50, "guidance_scale": 3.0,
                              "eta": 0.0, "width": image_size, "height": image_size}
    cfg = RunConfig(model, DataConfig(**data), TrainConfig(**train), first_stage_path=first_stage, export=export)
    _check_ldm(cfg.model, cfg.data)
    return cfg


def _ldm(stage: str, model_size: str, image_size: int, ae: AutoencoderConfig, scale: float) -> LatentDiffusionConfig:
    """The LatentDiffusionConfig of an LDM stage on the autoencoder `ae` (latents of side image_size / f)."""
    f, z = ae.ddconfig.downsample_factor, ae.embed_dim
    unet = {"image_size": image_size // f, "in_channels": z, "out_channels": z, **UNET_SIZES[model_size]()}
    width, layers = TEXT_ENCODER_SIZES[model_size]
    cross_attention = {"use_spatial_transformer": True, "context_dim": width, "transformer_depth": 1,
                       "legacy": False}
    cond, key, model_class, schedule = None, "crossattn", "LatentDiffusion", (0.00085, 0.012)
    if stage in ("txt2img", "inpaint"):
        cond = TransformerEmbedderConfig(n_embed=width, n_layer=layers, vocab_size=49408, max_seq_len=32, heads=4,
                                         dim_head=width // 4, tokenizer="clip", with_logits=False)
    elif stage == "class":
        cond = ClassEmbedderConfig(embed_dim=width, n_classes=25, key="class_label", has_null_class=True)
    elif stage == "layout":
        cond = LayoutEmbedderConfig(embed_dim=width, n_classes=24, max_objects=3)
    elif stage == "uncond":
        key = None
    elif stage == "sr":                             # z ++ the low-res image, concatenated (LDM-SR)
        cond, key, schedule = COND_STAGE_IDENTITY, "concat", (0.0015, 0.0155)
        unet.update(in_channels=z + 3, attention_resolutions=(4,))
    if stage == "inpaint":                          # z (4) ++ mask (1) ++ masked-image latent (4), SD2's layout
        key, model_class = "hybrid", "LatentInpaintDiffusion"
        unet["in_channels"] = 2 * z + 1
    if stage in ("txt2img", "inpaint", "class", "layout"):
        unet.update(cross_attention)
    return LatentDiffusionConfig(unet=UNetConfig(**unet), first_stage=ae, cond_stage=cond, conditioning_key=key,
                                 model_class=model_class, linear_start=schedule[0], linear_end=schedule[1],
                                 timesteps=1000, scale_factor=scale, image_size=image_size // f, channels=z,
                                 use_ema=False)
