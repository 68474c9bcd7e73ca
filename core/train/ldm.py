"""The latent diffusion training loop (Rombach et al. 2022, Sec. 3.2-3.3, eq. 1 and 2).

    L_LDM = E_{z0 = E(x), c, eps ~ N(0, I), t ~ U{0..T-1}} || target - eps_theta(z_t, t, tau_theta(c)) ||^2

with target eps (or v), z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, the first stage E frozen, the
conditioning encoder tau_theta (text transformer, class or layout embedder) trained jointly with the
UNet, and c replaced by the empty caption / null class / empty layout 10% of the time so that
classifier-free guidance works (Ho & Salimans 2022). Dense conditions are concatenated to z_t:
the low-res image for super-resolution (LDM-SR), mask ++ masked-image latent for inpainting (SD2).

`train_ldm` reads top to bottom: model, data, resume, then `for step`: batch, loss, backward, clip,
step, EMA, log, samples, checkpoint.
"""

import contextlib
import dataclasses
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.capabilities import capabilities
from core.models.attention import SpatialTransformer
from core.models.diffusion import LatentDiffusion
from core.samplers import sample
from core.train.checkpoint import (capture_rng, first_stage_state_dict, load_checkpoint, restore_rng, save_checkpoint,
                                   trained_state_dict)
from core.train.config import RunConfig, config_dict
from core.train.data import DataConfig, TrainData
from core.train.ema import EMA
from core.train.latents import LatentSource, encode_batch
from core.train.losses import diffusion_loss, diffusion_target, min_snr_weight, offset_noise, q_sample
from core.train.run_folder import RunFolder
from core.train.runtime import (Runtime, StopFlag, all_reduce_mean, check_replicas, machine,
                                sample_indices, samples_and_checkpoint, set_learning_rate, step_generator)

log = logging.getLogger("core.train")


# --------------------------------------------------------------------------------------------
# Weights from earlier stages
# --------------------------------------------------------------------------------------------

def load_first_stage(model: LatentDiffusion, path) -> None:
    model.first_stage_model.load_state_dict(first_stage_state_dict(path), strict=True)


def init_from_ldm(model: LatentDiffusion, path) -> None:
    """Start from another LDM's weights. A wider first conv (txt2img -> SD2 inpainting, 4 -> 9 input
    channels) keeps the old weights for z and starts the new channels at zero, and attention at
    resolutions the file has none (a larger attention_resolutions) starts as the identity, so the
    fine-tune begins as the model it starts from."""
    sd = {k: v.float() for k, v in trained_state_dict(path).items()}
    own = model.state_dict()
    if _conditioner_keys(sd) != _conditioner_keys(own):
        # Another conditioning (text model -> layout model): the UNet and the first stage start from
        # the file, the new conditioning encoder from scratch.
        sd = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
        sd.update({k: v for k, v in own.items() if k.startswith("cond_stage_model.")})
        log.info("init_from: %s has another conditioning encoder; it starts from scratch", path)
    for name in _new_transformers(model, sd):
        # Attention at a resolution the file has none: the new block starts as initialised, its
        # proj_out zero, so it adds nothing and the model begins as the file's.
        sd.update({k: v for k, v in own.items() if k.startswith(name + ".")})
        log.info("init_from: %s is new (attention at one more resolution); it starts as the identity", name)
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"init_from {path}: the model does not match this config ({len(missing)} missing keys, "
                         f"e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    for key, value in sd.items():
        if value.shape == own[key].shape:
            continue
        if key == "model.diffusion_model.input_blocks.0.0.weight" and value.shape[1] < own[key].shape[1] \
                and value.shape[0] == own[key].shape[0]:
            wide = torch.zeros_like(own[key])
            wide[:, :value.shape[1]] = value                              # z first, new channels zero
            sd[key] = wide
            log.info("init_from: widened %s from %d to %d input channels (new ones zero)",
                     key, value.shape[1], own[key].shape[1])
        elif key == "cond_stage_model.class_embedding.weight" and value.shape[0] < own[key].shape[0] \
                and value.shape[1:] == own[key].shape[1:]:
            grown = own[key].clone()
            grown[:value.shape[0]] = value                                # old classes kept, new ones as initialised
            sd[key] = grown
            log.info("init_from: %s grew from %d to %d classes (new ones as initialised)",
                     key, value.shape[0], own[key].shape[0])
        else:
            raise ValueError(f"init_from {path}: {key} has shape {tuple(value.shape)}, this config needs "
                             f"{tuple(own[key].shape)}")
    model.load_state_dict(sd, strict=True)


def _new_transformers(model: LatentDiffusion, state_dict: dict) -> list[str]:
    """The UNet's SpatialTransformer blocks of which state_dict has no key at all."""
    return [name for name, module in model.named_modules() if isinstance(module, SpatialTransformer)
            and not any(k.startswith(name + ".") for k in state_dict)]


def _conditioner_keys(state_dict: dict) -> set:
    return {k for k in state_dict if k.startswith("cond_stage_model.")}


# --------------------------------------------------------------------------------------------
# Conditioning
# --------------------------------------------------------------------------------------------

def conditioning(model: LatentDiffusion, entry: dict, drop: torch.Tensor | None = None):
    """The `cond` of apply_model from latent entries (latents.py); `drop` (B,) bool replaces the
    conditioning by the unconditional one (empty caption, null class, empty layout) where True."""
    enc, caps = model.cond_stage_model, capabilities(model)
    context = None
    if caps.conditioner == "transformer":
        tokens = entry["tokens"]
        if drop is not None:
            empty = enc.tokenize([""]).to(tokens.device)                   # (1, L)
            tokens = torch.where(drop[:, None], empty, tokens)
        context = enc.encode_tokens(tokens)                                # (B, L, D)
    elif caps.conditioner == "class":
        labels = entry["class_label"]
        if (labels < 0).any():
            raise ValueError("class-conditional training needs a class label for every image: use "
                             "single-object shapes scenes (data.n_objects: 1)")
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, enc.null_class), labels)
        context = enc(labels)                                              # (B, 1, D)
    elif caps.conditioner == "layout":
        layout = entry["layout"]                                           # (B, K, 5)
        classes = layout[..., 0].long()
        if drop is not None:
            classes = torch.where(drop[:, None], torch.full_like(classes, -1), classes)
        K = enc.cfg.max_objects
        if (classes[:, K:] >= 0).any():
            raise ValueError(f"a training layout has more objects than the layout embedder's max_objects ({K})")
        pad = K - classes.shape[1]                                         # < 0: crops empty slots
        classes = F.pad(classes, (0, pad), value=-1)                       # (B, max_objects)
        boxes = F.pad(layout[..., 1:], (0, 0, 0, pad))                     # (B, max_objects, 4)
        context = enc.encode_tensors(classes, boxes)
    elif enc is not None:
        raise ValueError(f"training with a frozen {type(enc).__name__} is not supported here")
    if caps.family == "upscale-ldm":
        return {"c_concat": [entry["lr"]]}
    if caps.family == "inpaint-sd":
        masked = model.scale_factor * entry["masked"]
        return {"c_concat": [torch.cat([entry["mask"], masked], dim=1)], "c_crossattn": [context]}
    return context


class DiffusionLoss(nn.Module):
    """One forward = the LDM loss of a batch; a module so that DistributedDataParallel can wrap it
    (the trainable conditioning encoder runs inside, so its gradients are all-reduced too)."""

    def __init__(self, model: LatentDiffusion, min_snr_gamma: float | None = None):
        super().__init__()
        self.model = model
        self.min_snr_gamma = min_snr_gamma

    def forward(self, z0, t, noise, entry: dict, drop):
        m = self.model
        cond = conditioning(m, entry, drop)
        z_t = q_sample(z0, t, noise, m.alphas_cumprod)                               # (B, C, h, w)
        pred = m.apply_model(z_t, t, cond)
        weight = None
        if self.min_snr_gamma:
            weight = min_snr_weight(t, m.alphas_cumprod, self.min_snr_gamma, m.parameterization)
        return diffusion_loss(pred, diffusion_target(z0, t, noise, m.alphas_cumprod, m.parameterization), weight)


@torch.no_grad()
def sample_grid(model: LatentDiffusion, held: dict, images: torch.Tensor, cfg: RunConfig, rt: Runtime):
    """Samples for the held-out conditioning at fixed seeds, as one (N, 3, H, W) grid batch:
    one row of samples; SR and inpainting add rows with the input and the original."""
    tc = cfg.train
    n = held["mean"].shape[0]
    shape = (n, model.config.channels, *held["mean"].shape[-2:])
    cond = conditioning(model, held)
    uncond = None
    if model.cond_stage_model is not None:
        uncond = conditioning(model, held, drop=torch.ones(n, dtype=torch.bool, device=rt.device))
        if isinstance(uncond, dict):
            uncond = uncond["c_crossattn"][0]
    with rt.autocast():
        z = sample(model, cond, uncond, guidance_scale=tc.sample_guidance if uncond is not None else 1.0,
                   steps=tc.sample_steps, sampler="ddim", shape=shape, seed=tc.seed + 1234)
        x = model.decode_first_stage(z).float()
    rows = [x]
    family = capabilities(model).family
    if family == "upscale-ldm":
        rows = [F.interpolate(held["lr"], size=x.shape[-2:], mode="bicubic"), x, images]
    elif family == "inpaint-sd":
        mask = F.interpolate(held["mask"], size=x.shape[-2:], mode="nearest")
        rows = [images * (mask < 0.5), x, images]
    return torch.cat([r.float().cpu() for r in rows])


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

def train_ldm(cfg: RunConfig, run: RunFolder, rt: Runtime, resume: bool = False, max_steps: int | None = None,
              command: str = "") -> str:
    """Train (or resume) an LDM into `run`; returns the final status ("finished" or "stopped")."""
    tc = cfg.train
    end = min(tc.steps, max_steps) if max_steps else tc.steps

    # 1. Model: the LatentDiffusion with its frozen first stage; the UNet and (for our own text,
    #    class and layout encoders) the conditioning encoder are trained.
    torch.manual_seed(tc.seed)
    model = LatentDiffusion(cfg.model)
    resuming = resume and run.checkpoint_path.exists()
    if not resuming:                                       # (a resumed run has all weights in its checkpoint)
        if cfg.first_stage_path:
            load_first_stage(model, cfg.first_stage_path)
        else:
            log.warning("no first_stage_config.params.ckpt_path: the first stage keeps random weights")
        if tc.init_from:
            init_from_ldm(model, tc.init_from)
    model.first_stage_model.requires_grad_(False).eval()
    if model.cond_stage_model is not None and not capabilities(model).joint_conditioner:
        model.cond_stage_model.requires_grad_(False)
    model.to(rt.device)
    if tc.channels_last:
        model.model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    ema = EMA(model, tc.ema_decay)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.scaler)
    log.info("LDM %s: %.2fM trained parameters (%s), first stage frozen, scale factor %.4f",
             capabilities(model).family, sum(p.numel() for p in params) / 1e6, type(model.model.diffusion_model).__name__,
             model.scale_factor)

    # 2. Data: latents and conditioning inputs, cached in memory for synthetic data.
    data = TrainData(cfg.data)
    source = LatentSource(data, model, rt.device, rt.autocast, cache=cfg.data.cache_latents and data.synthetic,
                          pool_size=cfg.data.pool_size, seed=cfg.data.seed + rt.rank)
    held_batch = TrainData(_held_out(cfg.data)).batch(range(tc.n_samples))
    held = encode_batch(model, held_batch, rt.device, rt.autocast)

    # 3. Resume: weights, EMA, optimizer, step, random generators (the data position follows the step).
    step, wall_time, commands = 0, 0.0, []
    if resuming:
        ckpt = load_checkpoint(run.checkpoint_path)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        step, wall_time, commands = ckpt["step"], ckpt.get("wall_time_s", 0.0), list(ckpt.get("commands", []))
        restore_rng(ckpt["rng"])
        log.info("resumed from %s at step %d", run.checkpoint_path, step)
    commands.append(command)

    # 4. The step as a module: DistributedDataParallel under torchrun, torch.compile on request.
    net = DiffusionLoss(model, tc.min_snr_gamma)
    if rt.distributed:
        net = DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                      broadcast_buffers=False)
    if tc.compile:
        net = torch.compile(net)

    def save():
        if not rt.is_main:
            return
        save_checkpoint({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                         "scaler": scaler.state_dict(), "step": step, "config": config_dict(cfg), "rng": capture_rng(),
                         "data_position": step * tc.grad_accum * tc.batch_size * rt.world_size,
                         "wall_time_s": wall_time, "commands": commands, "metrics": last_metrics,
                         "machine": machine(rt)},
                        run.checkpoint_path)

    def grids():
        if not rt.is_main:
            return
        model.eval()
        with ema.swapped_in(model):
            run.save_grid(sample_grid(model, held, held_batch["image"], cfg, rt), step, nrow=tc.n_samples)
        run.save_grid(sample_grid(model, held, held_batch["image"], cfg, rt), step, raw=True, nrow=tc.n_samples)
        model.train()
        model.first_stage_model.eval()

    if rt.is_main:
        run.truncate_metrics(step)
        run.write_state(status="running", step=step, total_steps=tc.steps, error=None)
    stop = StopFlag()
    model.train()
    model.first_stage_model.eval()
    images_per_step = tc.batch_size * tc.grad_accum * rt.world_size
    last_metrics: dict = {}
    sums, n_logged, train_time = {"loss": 0.0, "grad_norm": 0.0}, 0, 0.0
    session_start, wall_before = time.perf_counter(), wall_time
    status = "finished" if end >= tc.steps else "stopped"
    try:
        while step < end:
            started = time.perf_counter()
            lr = set_learning_rate(opt, step, tc)
            for micro in range(tc.grad_accum):
                g = step_generator(tc.seed, step, rt.rank, micro)
                entry = source.get(sample_indices(step, micro, rt, tc.batch_size, tc.grad_accum))
                eps_z = torch.randn(entry["mean"].shape, generator=g).to(rt.device)
                z0 = model.scale_factor * (entry["mean"] + entry["std"] * eps_z)          # (B, C, h, w)
                t = torch.randint(0, model.num_timesteps, (z0.shape[0],), generator=g).to(rt.device)
                noise = torch.randn(z0.shape, generator=g).to(rt.device)
                drop = (torch.rand(z0.shape[0], generator=g) < tc.cond_drop).to(rt.device)
                if tc.offset_noise:                    # drawn last: runs without it keep their noise
                    noise = offset_noise(noise, tc.offset_noise, g)
                if tc.channels_last:
                    z0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (z0, noise))
                last_micro = micro == tc.grad_accum - 1
                no_sync = net.no_sync() if rt.distributed and not last_micro else contextlib.nullcontext()
                with no_sync:
                    with rt.autocast():
                        loss = net(z0, t, noise, entry, drop) / tc.grad_accum
                    scaler.scale(loss).backward()
                sums["loss"] += loss.item()
            scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip or float("inf"))
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            ema.update(model)
            step += 1
            sums["grad_norm"] += float(grad_norm)
            n_logged += 1
            train_time += time.perf_counter() - started
            wall_time = wall_before + time.perf_counter() - session_start

            if step % tc.log_every == 0 or step == end:
                means = all_reduce_mean(rt, {k: v / n_logged for k, v in sums.items()})
                speed = images_per_step * n_logged / train_time
                last_metrics = {"step": step, **means, "lr": lr, "images_per_s": speed, "time": time.time()}
                if rt.is_main:
                    run.log_metrics(last_metrics)
                    run.write_state(status="running", step=step, images_per_s=speed,
                                    eta_s=(tc.steps - step) * train_time / n_logged, cached_latents=source.cached)
                    log.info("step %d/%d loss %.4f lr %.2e %.1f img/s", step, tc.steps, means["loss"], lr, speed)
                sums, n_logged, train_time = dict.fromkeys(sums, 0.0), 0, 0.0
            if samples_and_checkpoint(step, end, tc, stop, rt, grids, save):
                status = "stopped"
                break
    finally:
        stop.restore()
    check_replicas(rt, model)
    if rt.is_main:
        run.write_state(status=status, step=step)
    return status


def _held_out(data_cfg: DataConfig) -> DataConfig:
    """The fixed samples the grids are conditioned on: another seed of the same data."""
    return dataclasses.replace(data_cfg, seed=data_cfg.seed + 100_003)
