"""Train a LoRA for a text-to-image model on captioned images, and export it in kohya's format.

    python -m core.train lora --base weights/X.safetensors --data FOLDER_OR_ZIP --rank 4 --alpha 4
    train("lora", make_lora_config("weights/X.safetensors", "data/cats", rank=4), name="cats")
    export_lora("runs/cats", "weights/lora/cats.safetensors")      # then <lora:cats:1> in a prompt

The base model stays frozen; adapters (core/train/lora_network.py) around the chosen layers learn
with the LDM loss of ldm.py (eps or v target, z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, the
caption through the model's own text encoder). A config is YAML like the other stages':

    lora:   {base: weights/X.safetensors, base_config: null, rank: 4, alpha: 4.0, layers: [attn]}
    data:   data.DataConfig (an image folder; `size` left out = the base model's native size)
    train:  config.TrainConfig
    export: {name}

`train_lora` reads top to bottom: base, adapters, data, resume, then `for step`: batch, loss,
backward, clip, step, log, samples, checkpoint. The checkpoint is the usual plain dict, its "model"
the kohya state dict of the adapters (no EMA: kohya exports the trained weights, and so do we).
"""

import copy
import hashlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file
from torch.nn.utils import parametrize

from core.capabilities import capabilities
from core.checkpoints import load_model
from core.models.clip_text import FrozenOpenCLIPEmbedderConfig
from core.pipelines.txt2img import txt2img
from core.samplers import SamplingInterrupted
from core.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from core.train.config import TrainConfig, _known, stage_of
from core.train.data import DataConfig, ImageFolder, TrainData, to_tensor
from core.train.export import METADATA_RUN_ID, last_checkpoint
from core.train.latents import encode_batch
from core.train.losses import diffusion_loss, diffusion_target, min_snr_weight, q_sample
from core.train.lora_network import LoraNetwork, check_layer_groups, select_layers
from core.train.run_folder import RunFolder
from core.train.runtime import (Runtime, StopFlag, machine, sample_indices, samples_and_checkpoint,
                                set_learning_rate, step_generator)

log = logging.getLogger("core.train")


@dataclass(frozen=True)
class LoraConfig:
    base: str                            # the text-to-image model file the LoRA is trained for
    base_config: str | None = None       # its YAML / bundled config name, for files without one inside
    rank: int = 4                        # r: the adapters' inner dimension (kohya's network_dim)
    alpha: float | None = None           # scale alpha / r (kohya's network_alpha); None = rank (scale 1)
    layers: tuple[str, ...] = ("attn",)  # groups of lora_network.LAYER_GROUPS
    size: int | None = None              # training image side in pixels; None = the base's native size

    def __post_init__(self):
        if not self.base:
            raise ValueError("lora.base: give the text-to-image model file the LoRA is trained for")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be a whole number >= 1, got {self.rank!r}")
        if self.alpha is not None and not float(self.alpha) > 0:
            raise ValueError(f"lora.alpha must be > 0 (or empty for alpha = rank), got {self.alpha!r}")
        if self.size is not None and (self.size < 8 or self.size % 8):
            raise ValueError(f"lora.size must be a multiple of 8 (or empty for the base's size), got {self.size}")
        object.__setattr__(self, "alpha", float(self.rank if self.alpha is None else self.alpha))
        object.__setattr__(self, "layers", check_layer_groups(self.layers))


@dataclass(frozen=True)
class LoraRunConfig:
    lora: LoraConfig
    data: DataConfig                     # data.size: lora.size (the side the loop trains at decides)
    train: TrainConfig
    export: dict = field(default_factory=dict)          # {name}

    @property
    def stage(self) -> str:
        return "lora"


def lora_config_dict(cfg: LoraRunConfig) -> dict:
    """The config as plain values (a run folder's config.yaml, a checkpoint's "config")."""
    out = {name: json.loads(json.dumps(asdict(getattr(cfg, name)))) for name in ("lora", "data", "train")}
    return {**out, "export": copy.deepcopy(cfg.export)}


def dump_lora_config(cfg: LoraRunConfig) -> str:
    return yaml.safe_dump(lora_config_dict(cfg), sort_keys=False, default_flow_style=None, width=110)


def load_lora_config(source) -> LoraRunConfig:
    """A LoRA training config (dict, YAML path or LoraRunConfig) -> LoraRunConfig; bad values raise ValueError."""
    if isinstance(source, LoraRunConfig):
        return source
    raw = copy.deepcopy(source) if isinstance(source, dict) else yaml.safe_load(Path(source).read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("lora"), dict):
        raise ValueError("a LoRA config needs a `lora:` block {base, rank, alpha, layers}, plus `data:` and `train:`")
    unknown = sorted(set(raw) - {"lora", "data", "train", "export"})
    if unknown:
        raise ValueError(f"config: unknown top-level blocks {unknown}; valid: lora, data, train, export")
    lora = LoraConfig(**_known(LoraConfig, raw["lora"], "lora"))
    data = DataConfig(**_known(DataConfig, raw.get("data") or {}, "data"))
    train = TrainConfig(**_known(TrainConfig, raw.get("train") or {}, "train"))
    return LoraRunConfig(lora, data, train, dict(raw.get("export") or {}))


def make_lora_config(base: str, dataset: str, rank: int = 4, alpha: float | None = None, layers=("attn",),
                     steps: int = 1000, batch_size: int = 1, lr: float | None = None, *,
                     image_size: int | None = None, base_config: str | None = None, seed: int = 0,
                     name: str | None = None, **train_overrides) -> LoraRunConfig:
    """A LoRA training config. dataset: an image folder (captions in name.txt / captions.jsonl) or
    "shapes"; image_size None: the base model's native size. train_overrides: other train.* keys."""
    lora = LoraConfig(str(base), base_config, rank, alpha, tuple(layers), image_size or None)
    if dataset == "shapes":
        data = DataConfig(source="shapes")
    else:
        ImageFolder(dataset, 8)                                            # ValueError: missing or empty
        data = DataConfig(source="folder", path=str(dataset), flip=False)   # kohya's default: no flip_aug
    train = {"steps": steps, "batch_size": batch_size, "lr": lr or 1e-4, "warmup_steps": min(100, steps // 10),
             "weight_decay": 0.01, "cond_drop": 0.0, "sample_every": min(250, steps // 4 or steps),   # 4 grids
             "ckpt_every": min(250, steps // 4 or steps), "n_samples": 4, "sample_guidance": 5.0,
             "seed": seed, **train_overrides}
    return LoraRunConfig(lora, data, TrainConfig(**_known(TrainConfig, train, "train")),
                         {"name": name or f"{Path(str(dataset)).name}-lora"})


# --------------------------------------------------------------------------------------------
# The base model and its conditioning
# --------------------------------------------------------------------------------------------

def load_base(lc: LoraConfig, device: torch.device):
    """The frozen base model in float32 on `device`; ValueError unless it makes images from text."""
    m = load_model(lc.base, config=lc.base_config, device=device, dtype=torch.float32)
    caps = capabilities(m)
    if not caps.serves("txt2img"):
        what = f"a {caps.family!r} model conditioned on {caps.conditioning}" if caps.tasks else caps.why_not
        raise ValueError(f"{Path(lc.base).name} is {what}: a LoRA is trained for a text-to-image model "
                         "(one the Text to image tab lists)")
    return m.requires_grad_(False)


def text_context(m, captions: list[str], size: int):
    """apply_model's cond for captions, with gradients (a text-encoder LoRA learns through it)."""
    if getattr(m, "conditioner", None) is not None:                       # SDXL: sizes as at sampling
        out = m.conditioner(m.conditioner.make_batch(captions, original_size=(size, size), target_size=(size, size)))
        return {"c_crossattn": [out["crossattn"]], "y": out["vector"]}
    enc = m.cond_stage_model
    return enc.encode_tokens(enc.tokenize(captions).to(m.device))        # (B, L, D)


def lora_loss(m, entry: dict, captions: list[str], g: torch.Generator, tc: TrainConfig, size: int) -> torch.Tensor:
    """The LDM loss of one batch (ldm.DiffusionLoss's, the caption dropped to "" with tc.cond_drop)."""
    device = entry["mean"].device
    eps_z = torch.randn(entry["mean"].shape, generator=g).to(device)
    z0 = m.scale_factor * (entry["mean"] + entry["std"] * eps_z)                  # (B, C, h, w)
    t = torch.randint(0, m.num_timesteps, (z0.shape[0],), generator=g).to(device)
    noise = torch.randn(z0.shape, generator=g).to(device)
    drop = torch.rand(z0.shape[0], generator=g) < tc.cond_drop
    cond = text_context(m, ["" if d else c for c, d in zip(captions, drop.tolist())], size)
    pred = m.apply_model(q_sample(z0, t, noise, m.alphas_cumprod), t, cond)
    weight = min_snr_weight(t, m.alphas_cumprod, tc.min_snr_gamma, m.parameterization) if tc.min_snr_gamma else None
    return diffusion_loss(pred, diffusion_target(z0, t, noise, m.alphas_cumprod, m.parameterization), weight)


@torch.no_grad()
def sample_grid(m, captions: list[str], tc: TrainConfig, size: int, should_stop=None) -> torch.Tensor:
    """(N, 3, S, S) in [-1, 1]: the held-out captions through txt2img at fixed seeds, LoRA active.
    should_stop() True ends it early (core.samplers.SamplingInterrupted)."""
    was_training = m.model.training
    m.eval()
    try:
        with parametrize.cached():
            images = [txt2img(m, c, steps=tc.sample_steps, guidance_scale=tc.sample_guidance, sampler="ddim",
                              seed=tc.seed + 1234 + i, width=size, height=size, should_stop=should_stop)[0]
                      for i, c in enumerate(captions)]
    finally:
        m.model.train(was_training)
    return torch.stack([to_tensor(np.asarray(im.convert("RGB"))) for im in images])


def base_version(m) -> tuple[str, bool]:
    """kohya's ss_base_model_version and ss_v2 for m (its get_model_version_str_for_sd1_sd2, sdxl)."""
    cfg = m.config
    if getattr(m, "conditioner", None) is not None:
        return "sdxl_base_v1-0", False
    v2 = isinstance(cfg.cond_stage, FrozenOpenCLIPEmbedderConfig)
    if v2 or capabilities(m).conditioner == "clip":
        return ("sd_v2" if v2 else "sd_v1") + ("_v" if cfg.parameterization == "v" else ""), v2
    return f"ldm_studio_{capabilities(m).conditioner}", False              # our own text models


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

def train_lora(cfg: LoraRunConfig, run: RunFolder, rt: Runtime, resume: bool = False, max_steps: int | None = None,
               command: str = "") -> str:
    """Train (or resume) a LoRA into `run`; returns the final status ("finished" or "stopped")."""
    tc, lc = cfg.train, cfg.lora
    end = min(tc.steps, max_steps) if max_steps else tc.steps
    if rt.distributed:
        raise ValueError("LoRA training runs in one process; start it without torchrun")

    # 1. The frozen base model, and adapters around its chosen layers (up = 0: the base model exactly).
    torch.manual_seed(tc.seed)
    model = load_base(lc, rt.device)
    caps = capabilities(model)
    network = LoraNetwork(model, select_layers(model, lc.layers), lc.rank, lc.alpha).to(rt.device)
    network.attach(model)
    model.eval()
    model.model.train()                                   # the UNet's gradient checkpointing runs in train mode
    params = list(network.parameters())
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.scaler)        # fp16 autocast: loss scaling
    log.info("LoRA rank %d alpha %g on %d layers (%s) of %s: %.3fM trained parameters", lc.rank, lc.alpha,
             len(network.adapters), ", ".join(lc.layers), Path(lc.base).name, sum(p.numel() for p in params) / 1e6)

    # 2. Data: the captioned images at the base's native size (or data.size), the held-out captions.
    size = lc.size or caps.native_size
    if size % caps.grid:
        raise ValueError(f"data.size {size} must be a multiple of {caps.grid} for this model")
    data = TrainData(replace(cfg.data, size=size))
    held = TrainData(replace(cfg.data, size=size, seed=cfg.data.seed + 100_003)).batch(range(tc.n_samples))["caption"]

    # 3. Resume: adapters, optimizer, step, random generators; else the record of the run's start.
    with open(lc.base, "rb") as f:
        base_hash = hashlib.file_digest(f, "sha256").hexdigest()        # kohya's ss_new_sd_model_hash
    step, wall_time, commands, info = 0, 0.0, [], {"ss_training_started_at": str(time.time()),
                                                   "ss_session_id": str(uuid.uuid4().int % 2**31)}
    if resume and run.checkpoint_path.exists():
        ckpt = load_checkpoint(run.checkpoint_path)
        if ckpt["info"].get("ss_new_sd_model_hash") != base_hash:
            raise ValueError(f"{lc.base} is not the base model this run started from (its SHA-256 differs); "
                             "a LoRA continues on the same base only")
        network.load_kohya_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        scaler.load_state_dict(ckpt["scaler"])
        step, wall_time, commands, info = ckpt["step"], ckpt["wall_time_s"], list(ckpt["commands"]), ckpt["info"]
        restore_rng(ckpt["rng"])
        log.info("resumed from %s at step %d", run.checkpoint_path, step)
    commands.append(command)
    version, v2 = base_version(model)
    info.update(ss_base_model_version=version, ss_v2=str(v2), ss_sd_model_name=Path(lc.base).name,
                ss_new_sd_model_hash=base_hash, ss_resolution=f"({size}, {size})",
                ss_num_train_images=str(len(data.main.files) if hasattr(data.main, "files") else 0),
                ss_mixed_precision={None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[rt.amp_dtype])

    def save():
        save_checkpoint({"model": network.kohya_state_dict(), "opt": opt.state_dict(), "scaler": scaler.state_dict(),
                         "step": step,
                         "config": lora_config_dict(cfg), "rng": capture_rng(), "data_position": step * tc.grad_accum * tc.batch_size,
                         "wall_time_s": wall_time, "commands": commands, "metrics": last_metrics, "info": info,
                         "machine": machine(rt)}, run.checkpoint_path)

    def grids():                        # a stop asked while sampling ends the grid, not the wait for it
        try:
            run.save_grid(sample_grid(model, held, tc, size, lambda: stop.requested), step, nrow=tc.n_samples)
        except SamplingInterrupted:
            log.info("stop requested: the sample grid of step %d was left out", step)

    run.truncate_metrics(step)
    run.write_state(status="running", step=step, total_steps=tc.steps, error=None)
    stop, last_metrics, status = StopFlag(), {}, "finished" if end >= tc.steps else "stopped"
    sums, n_logged, train_time, session_start, wall_before = 0.0, 0, 0.0, time.perf_counter(), wall_time
    try:
        while step < end:
            started = time.perf_counter()
            lr = set_learning_rate(opt, step, tc)
            for micro in range(tc.grad_accum):
                g = step_generator(tc.seed, step, 0, micro)
                batch = data.batch(sample_indices(step, micro, rt, tc.batch_size, tc.grad_accum))
                entry = encode_batch(model, batch, rt.device, rt.autocast)                # frozen first stage
                with rt.autocast():
                    loss = lora_loss(model, entry, batch["caption"], g, tc, size) / tc.grad_accum
                scaler.scale(loss).backward()
                sums += loss.item()
            scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip or float("inf"))
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            n_logged += 1
            train_time += time.perf_counter() - started
            wall_time = wall_before + time.perf_counter() - session_start

            if step % tc.log_every == 0 or step == end:
                speed = tc.batch_size * tc.grad_accum * n_logged / train_time
                last_metrics = {"step": step, "loss": sums / n_logged, "grad_norm": float(grad_norm), "lr": lr,
                                "images_per_s": speed, "time": time.time()}
                run.log_metrics(last_metrics)
                run.write_state(status="running", step=step, images_per_s=speed,
                                eta_s=(tc.steps - step) * train_time / n_logged)
                log.info("step %d/%d loss %.4f lr %.2e %.1f img/s", step, tc.steps, sums / n_logged, lr, speed)
                sums, n_logged, train_time = 0.0, 0, 0.0
            if samples_and_checkpoint(step, end, tc, stop, rt, grids, save):
                status = "stopped"
                break
    finally:
        stop.restore()
        network.detach(model)
    run.write_state(status=status, step=step)
    return status


# --------------------------------------------------------------------------------------------
# Export: a kohya-format .safetensors
# --------------------------------------------------------------------------------------------

def is_lora_run(run_dir) -> bool:
    """Whether run_dir trains a LoRA (its state.json, else its config.yaml, says so)."""
    run = RunFolder(run_dir)
    stage = run.read_state().get("stage")
    if stage is None and run.config_path.is_file():
        stage = stage_of(yaml.safe_load(run.config_path.read_text()) or {})
    return stage == "lora"


def _tag_frequency(data: DataConfig, size: int) -> dict:
    """kohya's ss_tag_frequency: {dataset folder: {tag: count}}, tags = the captions' comma parts."""
    if data.source != "folder":
        return {}
    folder = ImageFolder(data.path, size)
    counts: dict[str, int] = {}
    for path in folder.files:
        for tag in (t.strip() for t in folder.caption(path).split(",")):
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return {Path(data.path).name: counts}


def kohya_metadata(ckpt: dict, cfg: LoraRunConfig, name: str) -> dict[str, str]:
    """The `ss_*` keys kohya's train_network writes (as strings), from the run's checkpoint."""
    lc, tc = cfg.lora, cfg.train
    size = int(ckpt["info"]["ss_resolution"].strip("()").split(",")[0])
    meta = {**ckpt["info"], "ss_network_module": "networks.lora", "ss_network_dim": str(lc.rank),
            "ss_network_alpha": str(lc.alpha), "ss_output_name": name, "ss_learning_rate": str(tc.lr),
            "ss_unet_lr": str(tc.lr) if set(lc.layers) - {"text"} else "None",
            "ss_text_encoder_lr": str(tc.lr) if "text" in lc.layers else "None",
            "ss_network_train_unet_only": str("text" not in lc.layers),
            "ss_network_train_text_encoder_only": str(set(lc.layers) == {"text"}),
            "ss_max_train_steps": str(tc.steps), "ss_steps": str(ckpt["step"]),
            "ss_lr_warmup_steps": str(tc.warmup_steps),
            "ss_lr_scheduler": tc.lr_schedule, "ss_batch_size_per_device": str(tc.batch_size),
            "ss_gradient_accumulation_steps": str(tc.grad_accum), "ss_max_grad_norm": str(tc.grad_clip),
            "ss_optimizer": f"torch.optim.AdamW(weight_decay={tc.weight_decay},betas={tc.betas})",
            "ss_seed": str(tc.seed), "ss_caption_dropout_rate": str(tc.cond_drop), "ss_clip_skip": "None",
            "ss_flip_aug": str(cfg.data.flip), "ss_training_finished_at": str(time.time()),
            "ss_tag_frequency": json.dumps(_tag_frequency(cfg.data, size)),
            "ss_training_comment": f"LDM Studio, layers {','.join(lc.layers)}"}
    if "conv" in lc.layers:                                  # LoCon: kohya's conv_dim / conv_alpha
        meta["ss_network_args"] = json.dumps({"conv_dim": str(lc.rank), "conv_alpha": str(lc.alpha)})
    return meta


def export_lora(run_dir, out, name: str | None = None, dtype: torch.dtype = torch.float32, *,
                defaults: dict | None = None, first_stage=None) -> Path:
    """Write the LoRA of `run_dir`'s last checkpoint to `out` in kohya's format (float32 unless
    `dtype`); returns the path. `<lora:NAME:1>` picks it when it lies in weights/lora/NAME.safetensors.
    defaults / first_stage belong to model exports: a LoRA refuses them."""
    if defaults or first_stage:
        raise ValueError("a LoRA file holds adapters only: --defaults and --first-stage apply to model exports")
    run, run_id, ckpt = last_checkpoint(run_dir, out)
    out = Path(out)
    cfg = load_lora_config(ckpt["config"])
    name = name or cfg.export.get("name") or run.name
    tensors = {k: v.to(dtype) for k, v in ckpt["model"].items()}
    data = safetensors_bytes(tensors)                       # kohya's sshs_model_hash: SHA-256 after the header
    header = 8 + int.from_bytes(data[:8], "little")
    metadata = {**kohya_metadata(ckpt, cfg, name), "sshs_model_hash": hashlib.sha256(data[header:]).hexdigest(),
                "ldm_studio_name": name, METADATA_RUN_ID: run_id,
                "ldm_studio_training": json.dumps({"steps": int(ckpt["step"]), "base": cfg.lora.base,
                                                   "wall_time_s": round(float(ckpt["wall_time_s"]), 1),
                                                   "machine": ckpt.get("machine", ""), "metrics": ckpt["metrics"],
                                                   "command": " && ".join(dict.fromkeys(ckpt["commands"]))})}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.chmod(0o644)
    tmp.replace(out)
    return out
