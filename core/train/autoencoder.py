"""The first-stage training loop (Rombach et al. 2022, Sec. 3.1 and App. G; Esser et al. 2021).

An autoencoder (E, D) learns x ~ D(E(x)) with L1 + LPIPS + a patch-based adversarial loss, regularised
by a small KL towards N(0, I) (KL models) or by vector quantisation (VQ models); losses.py has the
terms. Two optimizers, as in the reference: Adam(0.5, 0.9) for the autoencoder, the same for the
PatchGAN discriminator, which starts after `disc_start` steps.

When training ends (and at every checkpoint), the latent scale factor 1 / std(z) is measured on the
first data batch with the EMA weights (the reference's scale_by_std) and saved with the model, so
the diffusion model later sees latents of about unit variance.

`train_autoencoder` reads top to bottom: model, data, resume, then `for step`: batch, loss, backward,
clip, step (autoencoder, then discriminator), EMA, log, samples, checkpoint.
"""

import contextlib
import dataclasses
import logging
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from core.eval.metrics import psnr
from core.models.autoencoder import AutoencoderKL, build_autoencoder
from core.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint, trained_state_dict
from core.train.config import RunConfig, config_dict
from core.train.data import TrainData
from core.train.ema import EMA
from core.train.losses import NLayerDiscriminator, autoencoder_loss, build_lpips, hinge_d_loss
from core.train.run_folder import RunFolder
from core.train.runtime import (Runtime, StopFlag, all_reduce_mean, check_replicas, learning_rate, machine,
                                sample_indices, step_generator)

log = logging.getLogger("core.train")


@torch.no_grad()
def latent_scale_factor(ae, images: torch.Tensor, rt: Runtime, seed: int) -> float:
    """1 / std of the latents of `images` (posterior samples for KL, pre-quantisation h for VQ)."""
    with rt.autocast():
        h = ae.encode(images.to(rt.device))
    if isinstance(ae, AutoencoderKL):
        h = h.sample(torch.Generator().manual_seed(seed))
    return float(1.0 / h.float().std())


@torch.no_grad()
def reconstruct(ae, images: torch.Tensor, rt: Runtime) -> torch.Tensor:
    with rt.autocast():
        h = ae.encode(images.to(rt.device))
        z = h.mode() if isinstance(ae, AutoencoderKL) else h
        return ae.decode(z).float().cpu()


def train_autoencoder(cfg: RunConfig, run: RunFolder, rt: Runtime, resume: bool = False,
                      max_steps: int | None = None, command: str = "") -> str:
    """Train (or resume) a first stage into `run`; returns the final status ("finished" or "stopped")."""
    tc, lc = cfg.train, cfg.loss
    end = min(tc.steps, max_steps) if max_steps else tc.steps
    kind = cfg.model.kind

    # 1. Model, discriminator and (with local weights) LPIPS.
    torch.manual_seed(tc.seed)
    ae = build_autoencoder(cfg.model).to(rt.device)
    if tc.init_from:                                # (a resumed run's checkpoint overrides this below)
        ae.load_state_dict({k: v.float() for k, v in trained_state_dict(tc.init_from).items()}, strict=True)
        log.info("initial weights from %s", tc.init_from)
    elif tc.logvar_init is not None:                # (a fresh start only: trained weights carry their own)
        if not isinstance(ae, AutoencoderKL):
            raise ValueError("train.logvar_init is for KL autoencoders (it sets the posterior's log-variance)")
        with torch.no_grad():                       # quant_conv's output is (mean, logvar), embed_dim each
            ae.quant_conv.bias[cfg.model.embed_dim:] = tc.logvar_init
    if tc.freeze_encoder:
        if not tc.init_from:
            raise ValueError("train.freeze_encoder fine-tunes a trained decoder: give train.init_from too")
        ae.encoder.requires_grad_(False)
        ae.quant_conv.requires_grad_(False)
    disc = NLayerDiscriminator(lc.disc_in_channels, lc.disc_ndf, lc.disc_num_layers).to(rt.device)
    lpips = build_lpips(tc.lpips_weights) if lc.perceptual_weight > 0 else None
    if lpips is not None:
        lpips.to(rt.device)
    if tc.channels_last:
        ae.to(memory_format=torch.channels_last)
        disc.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in ae.parameters() if p.requires_grad], lr=tc.lr, betas=tc.betas,
                            weight_decay=tc.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    ema = EMA(ae, tc.ema_decay)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.scaler)
    log.info("%s autoencoder: %.2fM parameters (%.2fM trained), f=%d, %d latent channels; discriminator %.2fM "
             "from step %d", kind.upper(), sum(p.numel() for p in ae.parameters()) / 1e6,
             sum(p.numel() for p in ae.parameters() if p.requires_grad) / 1e6, cfg.model.ddconfig.downsample_factor,
             cfg.model.embed_dim, sum(p.numel() for p in disc.parameters()) / 1e6, lc.disc_start)

    # 2. Data, and the fixed held-out images of the reconstruction grids.
    data = TrainData(cfg.data)
    held = TrainData(dataclasses.replace(cfg.data, seed=cfg.data.seed + 100_003)).batch(range(tc.n_samples))["image"]
    first_batch = data.batch(range(tc.batch_size))["image"]

    # 3. Resume: weights, EMA, both optimizers, step, random generators.
    step, wall_time, commands, scale_factor = 0, 0.0, [], None
    if resume and run.checkpoint_path.exists():
        ckpt = load_checkpoint(run.checkpoint_path)
        ae.load_state_dict(ckpt["model"])
        disc.load_state_dict(ckpt["disc"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        opt_d.load_state_dict(ckpt["opt_disc"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        step, wall_time, commands = ckpt["step"], ckpt.get("wall_time_s", 0.0), list(ckpt.get("commands", []))
        scale_factor = ckpt.get("scale_factor")
        restore_rng(ckpt["rng"])
        log.info("resumed from %s at step %d", run.checkpoint_path, step)
    commands.append(command)

    # 4. DistributedDataParallel under torchrun; torch.compile on request.
    net, net_d = ae, disc
    if rt.distributed:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net, net_d = DistributedDataParallel(ae, device_ids=ids), DistributedDataParallel(disc, device_ids=ids)
    if tc.compile:
        net = torch.compile(net)

    def save():
        nonlocal scale_factor
        if not rt.is_main:
            return
        with ema.swapped_in(ae):
            scale_factor = latent_scale_factor(ae, first_batch, rt, tc.seed)
        save_checkpoint({"model": ae.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                         "disc": disc.state_dict(), "opt_disc": opt_d.state_dict(), "scaler": scaler.state_dict(),
                         "step": step, "config": config_dict(cfg), "rng": capture_rng(), "scale_factor": scale_factor,
                         "data_position": step * tc.grad_accum * tc.batch_size * rt.world_size,
                         "wall_time_s": wall_time, "commands": commands, "metrics": last_metrics,
                         "machine": machine(rt)},
                        run.checkpoint_path)

    def grids() -> float:
        """Reconstruction grids (originals above, reconstructions below); returns the EMA PSNR."""
        ae.eval()
        with ema.swapped_in(ae):
            rec_ema = reconstruct(ae, held, rt)
        rec_raw = reconstruct(ae, held, rt)
        ae.train()
        run.save_grid(torch.cat([held, rec_ema]), step, nrow=tc.n_samples)
        run.save_grid(torch.cat([held, rec_raw]), step, raw=True, nrow=tc.n_samples)
        return float(psnr(held, rec_ema.clamp(-1, 1), data_range=2.0, dim=(1, 2, 3)).mean())

    if rt.is_main:
        run.truncate_metrics(step)
        run.write_state(status="running", step=step, total_steps=tc.steps, error=None)
    stop = StopFlag()
    ae.train()
    disc.train()
    last_layer = ae.get_last_layer()
    images_per_step = tc.batch_size * tc.grad_accum * rt.world_size
    last_metrics: dict = {}
    sums, n_logged, train_time = {}, 0, 0.0
    session_start, wall_before = time.perf_counter(), wall_time
    status = "finished" if end >= tc.steps else "stopped"
    try:
        while step < end:
            started = time.perf_counter()
            lr = learning_rate(step, tc)
            for group in opt.param_groups + opt_d.param_groups:
                group["lr"] = lr
            gan_on = lc.disc_factor > 0 and step >= lc.disc_start
            terms_sum: dict = {}
            for micro in range(tc.grad_accum):
                g = step_generator(tc.seed, step, rt.rank, micro)
                x = data.batch(sample_indices(step, micro, rt, tc.batch_size, tc.grad_accum))["image"].to(rt.device)
                if tc.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                last_micro = micro == tc.grad_accum - 1
                # Autoencoder: reconstruction, regulariser and (after disc_start) the adversarial term.
                # The discriminator is read, not trained, here: its weights are frozen for this pass.
                disc.requires_grad_(False)
                with (net.no_sync() if rt.distributed and not last_micro else contextlib.nullcontext()):
                    with rt.autocast():
                        if kind == "kl":
                            rec, posterior = net(x, generator=g)
                            reg = posterior.kl()                                      # (B,)
                        else:
                            rec, reg = net(x)                                         # codebook loss
                        loss, terms = autoencoder_loss(x, rec, reg, lc, kind, lpips, disc if gan_on else None,
                                                       last_layer)
                    scaler.scale(loss / tc.grad_accum).backward()
                disc.requires_grad_(True)
                # Discriminator: hinge loss on real images and (detached) reconstructions, one pass.
                if gan_on:
                    with (net_d.no_sync() if rt.distributed and not last_micro else contextlib.nullcontext()):
                        with rt.autocast():
                            logits_real, logits_fake = net_d(torch.cat([x, rec.detach()])).float().chunk(2)
                            d_loss = lc.disc_factor * hinge_d_loss(logits_real, logits_fake)
                        scaler.scale(d_loss / tc.grad_accum).backward()
                    terms.update(d_loss=d_loss.item(), logits_real=logits_real.mean().item(),
                                 logits_fake=logits_fake.mean().item())
                batch_psnr = psnr(x, rec.detach().clamp(-1, 1), data_range=2.0, dim=(1, 2, 3))   # (B,)
                terms.update(loss=loss.item(), psnr=float(batch_psnr.mean()))
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + v / tc.grad_accum
            scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(ae.parameters(), tc.grad_clip or float("inf"))
            scaler.step(opt)
            if gan_on:
                scaler.unscale_(opt_d)
                torch.nn.utils.clip_grad_norm_(disc.parameters(), tc.grad_clip or float("inf"))
                scaler.step(opt_d)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            ema.update(ae)
            step += 1
            terms_sum["grad_norm"] = float(grad_norm)
            for k, v in terms_sum.items():
                sums[k] = sums.get(k, 0.0) + v
            n_logged += 1
            train_time += time.perf_counter() - started
            wall_time = wall_before + time.perf_counter() - session_start

            stopping = stop.check(rt)
            psnr_ema = None
            if rt.is_main and (step % tc.sample_every == 0 or step == end):
                psnr_ema = grids()
            if step % tc.log_every == 0 or step == end:
                means = all_reduce_mean(rt, {k: v / n_logged for k, v in sorted(sums.items())})
                speed = images_per_step * n_logged / train_time
                last_metrics = {"step": step, **means, "lr": lr, "images_per_s": speed, "time": time.time()}
                if psnr_ema is not None:
                    last_metrics["psnr_ema"] = psnr_ema
                if rt.is_main:
                    run.log_metrics(last_metrics)
                    run.write_state(status="running", step=step, images_per_s=speed,
                                    eta_s=(tc.steps - step) * train_time / n_logged)
                    log.info("step %d/%d loss %.2f l1 %.4f psnr %.2f lr %.2e %.1f img/s", step, tc.steps,
                             means["loss"], means["l1"], means["psnr"], lr, speed)
                sums, n_logged, train_time = {}, 0, 0.0
            if step % tc.ckpt_every == 0 or step == end or stopping:
                save()
            if stopping:
                status = "stopped"
                log.info("stop requested: checkpoint saved at step %d", step)
                break
    finally:
        stop.restore()
    check_replicas(rt, ae)
    if rt.is_main:
        run.write_state(status=status, step=step, scale_factor=scale_factor)
        log.info("latent scale factor (1/std of the first batch's latents, EMA weights): %s", scale_factor)
    return status
