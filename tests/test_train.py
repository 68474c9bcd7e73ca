"""core.train: data, losses, EMA, checkpoints, both loops on tiny models, resume, stop, export.

Everything runs in this process on tiny models (16x16 images, 4x4 latents); the command-line,
SIGKILL and DDP tests, which need subprocesses, are in test_train_cli.py.
"""
import dataclasses
import contextlib
import json
import logging
import math
import os
import random
import re
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from torchvision.models.vgg import cfgs, make_layers

from core import load_model, save_model
from core.capabilities import capabilities
from core.models.autoencoder import build_autoencoder
from core.models.diffusion import LatentDiffusion
from core.models.unet import UNetModel
from core.train import (DataConfig, DegradationConfig, RunConfig, RunFolder, RunLockedError, TrainData, config_dict,
                        degrade, dump_config, export_run, load_config, make_config, random_mask, reexport_file,
                        train)
from core.train.config import TrainConfig
from core.train.checkpoint import capture_rng, ema_state_dict, load_checkpoint, restore_rng, save_checkpoint
from core.train.data import EVAL_PHOTOS, TRAIN_PHOTOS, resize_crop
from core.train.ema import EMA
from core.train.latents import encode_batch
from core.train.ldm import conditioning, init_from_ldm
from core.train.losses import (LPIPS, AutoencoderLossConfig, adaptive_gan_weight, autoencoder_loss, build_lpips,
                               diffusion_loss, diffusion_target, edge_map, hinge_d_loss, min_snr_weight,
                               offset_noise)
from core.train.runtime import learning_rate
from core.pipelines.layout_text import layout_vocabulary
from core.world import BACKGROUNDS, SHAPES, ShapesWorld, class_label

LDM_STAGES = ("txt2img", "class", "layout", "uncond", "sr", "inpaint")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP threads on a busy 2-core machine spin-wait
    (a tiny step takes 20x longer); the value is put back for the other test files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Tiny configs
# --------------------------------------------------------------------------------------------

def ae_config(steps=6, batch_size=4, disc_start=3, **train_kw) -> RunConfig:
    kw = dict(warmup_steps=0, log_every=1, sample_every=1000, ckpt_every=3, n_samples=2, lr=1e-3)
    kw.update(train_kw)
    cfg = make_config("autoencoder", "shapes", "tiny", steps=steps, batch_size=batch_size, image_size=16, **kw)
    return replace(cfg, data=replace(cfg.data, photo_fraction=0.0), loss=replace(cfg.loss, disc_start=disc_start))


@pytest.fixture(scope="module")
def ae_file(tmp_path_factory) -> str:
    """A tiny KL autoencoder (random weights) exported like a trained one, scale factor 0.5."""
    cfg = ae_config().model
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
    save_model(build_autoencoder(cfg), path, metadata={"ldm_studio_scale_factor": "0.5"})
    return str(path)


def ldm_config(ae_file, stage="txt2img", steps=6, **train_kw) -> RunConfig:
    kw = dict(warmup_steps=0, log_every=1, sample_every=1000, ckpt_every=3, n_samples=2, sample_steps=2, lr=1e-3)
    kw.update(train_kw)
    cfg = make_config(stage, "shapes", "tiny", steps=steps, batch_size=4, image_size=16, first_stage=ae_file, **kw)
    return replace(cfg, data=replace(cfg.data, pool_size=16, photo_fraction=0.0))


def losses_of(run_dir) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in RunFolder(run_dir).read_metrics()}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def test_image_folder_skips_broken_images_and_reads_captions(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "img0.txt").write_text("a caption from a txt file\n")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "img1.png", "text": "from jsonl"}) + "\n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    data = TrainData(DataConfig(source="folder", path=str(tmp_path), size=16, flip=False))
    with caplog.at_level(logging.WARNING, logger="core.train"):
        batch = data.batch(range(8))                        # two epochs over 4 files: every file is tried
    assert batch["image"].shape == (8, 3, 16, 16)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert data.bad_files == 1
    assert sum("broken.png" in r.getMessage() for r in caplog.records) == 1      # warned once, then skipped
    assert set(batch["caption"]) == {"a caption from a txt file", "from jsonl", ""}
    # Resize + centre crop of a 20x30 image to 16: scale 0.8 -> 24x16 (area filter), crop x 4..20.
    img0 = np.asarray(Image.open(tmp_path / "img0.png"))
    expected = cv2.resize(img0, (24, 16), interpolation=cv2.INTER_AREA)[:, 4:20]
    assert np.array_equal(resize_crop(img0, 16, None), expected)


def test_shapes_batch_has_captions_classes_and_layouts():
    data = TrainData(DataConfig(source="shapes", size=32, n_objects=1, seed=5))
    batch = data.batch([0, 1])
    world = ShapesWorld(size=32, seed=5, n_objects=1)
    for b in range(2):
        s = world[b]
        assert batch["caption"][b] == s["caption"]
        assert batch["class_label"][b] == class_label(s["scene"])
        shape, colour, *box = s["layout"][0]
        assert batch["layout"][b, 0, 0] == SHAPES.index(shape) * 6 + ["red", "green", "blue", "yellow", "purple",
                                                                      "orange"].index(colour)
        # the box clipped to the image, as a user draws it
        assert torch.allclose(batch["layout"][b, 0, 1:], torch.tensor(box, dtype=torch.float32).clamp(0, 1))
        assert (batch["layout"][b, 1:, 0] == -1).all()
        assert torch.equal(batch["image"][b], torch.from_numpy(s["image"]).permute(2, 0, 1).float() / 127.5 - 1)


def test_sr_pairs_and_masks():
    cfg = DataConfig(source="shapes", size=64, render_size=128, sr_factor=4, masks=True,
                     degradation=DegradationConfig(blur=0, noise=0, jpeg=0))
    data = TrainData(cfg)
    batch = data.batch(range(4))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["lr"].shape == (4, 3, 16, 16)
    assert batch["mask"].shape == (4, 1, 64, 64)
    # Without blur/noise/JPEG the LR image is a plain down-sample: close to the 4x4 block means.
    blocks = torch.nn.functional.avg_pool2d(batch["image"], 4)
    assert (batch["lr"] - blocks).abs().mean() < 0.05
    # Masks: binary, neither empty nor full, a function of the index.
    m = batch["mask"]
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert ((m.mean(dim=(1, 2, 3)) > 0) & (m.mean(dim=(1, 2, 3)) < 1)).all()
    assert torch.equal(data.batch([2])["mask"][0], m[2])
    assert np.array_equal(random_mask(32, np.random.default_rng(1)), random_mask(32, np.random.default_rng(1)))
    # filters: [area] makes the low-res image the 4x4 block means, rounded (what core.eval does; OpenCV's
    # fixed-point rounding may differ by one level).
    area = TrainData(dataclasses.replace(cfg, degradation=DegradationConfig(blur=0, noise=0, jpeg=0,
                                                                            filters=["area"])))
    pair = area.batch(range(4))
    exact = torch.floor((torch.nn.functional.avg_pool2d(pair["image"], 4) + 1) * 127.5 + 0.5) / 127.5 - 1
    levels = ((pair["lr"] - exact) * 127.5).abs()
    assert levels.max() < 1.01 and (levels > 0.5).float().mean() < 0.02
    with pytest.raises(ValueError, match="filters must name some of"):
        DegradationConfig(filters=["lanczos"])
    # Degradations change the low-res image.
    hr = data.sample(0)["image"]
    clean = degrade(hr, 4, np.random.default_rng(0), DegradationConfig(0, 0, 0))
    noisy = degrade(hr, 4, np.random.default_rng(0), DegradationConfig(0, 1, 1))
    assert clean.shape == noisy.shape == (16, 16, 3) and np.abs(clean.astype(int) - noisy).mean() > 0.5


def test_photo_crops_leave_out_the_evaluation_photos():
    assert not set(TRAIN_PHOTOS) & {"chelsea", "cat", "coffee", "rocket", "stereo_motorcycle"}
    assert set(EVAL_PHOTOS) == {"chelsea", "coffee", "rocket", "motorcycle_left"}
    pytest.importorskip("skimage")
    data = TrainData(DataConfig(source="photos", size=32))
    batch = data.batch(range(3))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["image"].std() > 0.05


# --------------------------------------------------------------------------------------------
# Losses, EMA, checkpoints
# --------------------------------------------------------------------------------------------

def test_diffusion_targets_and_gan_losses():
    ac = torch.linspace(0.99, 0.01, 1000)
    x0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([0, 500, 999])
    a = ac[t].view(3, 1, 1, 1)
    assert torch.equal(diffusion_target(x0, t, noise, ac, "eps"), noise)
    assert torch.allclose(diffusion_target(x0, t, noise, ac, "v"), a.sqrt() * noise - (1 - a).sqrt() * x0)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.25])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1.25) / 2))
    # Adaptive weight: ||d nll / dw|| / (||d g / dw|| + 1e-4) * disc_weight, for nll = 3 sum(w), g = sum(w^2).
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    lam = adaptive_gan_weight(3 * w.sum(), (w ** 2).sum(), w, disc_weight=0.5)
    assert lam.item() == pytest.approx(0.5 * math.sqrt(18) / (math.sqrt(4 + 16) + 1e-4), rel=1e-6)


def test_min_snr_weights_and_weighted_loss():
    ac = torch.linspace(0.999, 0.001, 1000, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    snr = (ac[t] / (1 - ac[t])).tolist()
    eps = min_snr_weight(t, ac, 5.0, "eps").tolist()
    v = min_snr_weight(t, ac, 5.0, "v").tolist()
    for k in range(3):
        assert eps[k] == pytest.approx(min(snr[k], 5.0) / snr[k], rel=1e-6)
        assert v[k] == pytest.approx(min(snr[k], 5.0) / (snr[k] + 1), rel=1e-6)
    assert eps[0] == pytest.approx(5.0 / 999, rel=1e-4) and eps[2] == pytest.approx(1.0)   # noiseless steps count less
    with pytest.raises(ValueError, match="parameterization"):
        min_snr_weight(t, ac, 5.0, "x0")
    pred, target = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))
    w = torch.tensor([0.5, 1.0, 2.0])
    assert diffusion_loss(pred, target).item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert diffusion_loss(pred, target, w).item() == pytest.approx((w * per_sample).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="min_snr_gamma"):
        TrainConfig(min_snr_gamma=0.0)


def test_autoencoder_loss_l2_term_and_logvar_init(tmp_path):
    x, rec = torch.rand(2, 3, 4, 4) * 2 - 1, torch.rand(2, 3, 4, 4) * 2 - 1
    reg = torch.tensor([3.0, 5.0])
    plain, _ = autoencoder_loss(x, rec, reg, AutoencoderLossConfig(kl_weight=0.1), "kl", None, None, None)
    both, terms = autoencoder_loss(x, rec, reg, AutoencoderLossConfig(kl_weight=0.1, pixel_l2_weight=10.0), "kl",
                                   None, None, None)
    d = x - rec
    assert plain.item() == pytest.approx(d.abs().sum().item() / 2 + 0.1 * 4.0, rel=1e-5)
    assert both.item() == pytest.approx((d.abs() + 10 * d ** 2).sum().item() / 2 + 0.1 * 4.0, rel=1e-5)
    assert terms["l1"] == pytest.approx(d.abs().mean().item(), rel=1e-5)
    # logvar_init: the run starts from a nearly deterministic posterior (the first checkpoint shows it).
    cfg = ae_config(steps=1, ckpt_every=1, logvar_init=-8.0)
    assert train("autoencoder", cfg, name="ae", runs_dir=tmp_path) == "finished"
    bias = load_checkpoint(RunFolder(tmp_path / "ae").checkpoint_path)["model"]["quant_conv.bias"]
    embed_dim = bias.shape[0] // 2
    assert bias[embed_dim:].sub(-8.0).abs().max() < 0.01       # one small Adam step from -8
    assert bias[:embed_dim].abs().max() < 1.0


def test_edge_weight_counts_errors_on_outlines_more():
    x = torch.full((1, 3, 8, 8), -1.0)
    x[..., 2:6, 2:6] = 1.0                                                  # a white square on black
    edges = edge_map(x)[0, 0]
    assert edges[0, 0] == 0 and edges[4, 4] == 0                           # flat: outside, inside
    assert edges[1, 3] == 1 and edges[2, 3] == 1 and edges[3, 3] == 0      # both sides of the outline
    reg, cfg = torch.zeros(1), AutoencoderLossConfig(edge_weight=4.0)
    on_edge, flat = x.clone(), x.clone()
    on_edge[..., 2, 3] -= 0.5                                               # the same error, on the outline
    flat[..., 4, 4] -= 0.5                                                  # ... and inside the square
    e, _ = autoencoder_loss(x, on_edge, reg, cfg, "kl", None, None, None)
    f, _ = autoencoder_loss(x, flat, reg, cfg, "kl", None, None, None)
    assert e.item() == pytest.approx(5 * f.item()) and f.item() == pytest.approx(3 * 0.5)
    faint = x * 0.25                                                        # the same square, a quarter the contrast
    assert edge_map(faint)[0, 0, 2, 3] == pytest.approx(0.25) and edge_map(faint, gain=4.0)[0, 0, 2, 3] == 1
    with pytest.raises(ValueError, match="edge_gain > 0"):
        AutoencoderLossConfig(edge_gain=0.0)
    with pytest.raises(ValueError, match="edge_weight"):
        AutoencoderLossConfig(edge_weight=-1.0)

def test_lpips_is_off_without_weights_and_loads_taming_layout(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="core.train"):
        assert build_lpips(()) is None
    assert any("LPIPS perceptual loss is off" in r.getMessage() for r in caplog.records)
    # A taming-style vgg.pth (lin*) plus torchvision's vgg16 feature keys, written as .safetensors.
    torch.manual_seed(0)
    features = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}   # vgg16.features
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    save_file(features, str(tmp_path / "vgg16.safetensors"))
    save_file(lins, str(tmp_path / "vgg_lpips.safetensors"))
    lpips = build_lpips([tmp_path / "vgg16.safetensors", tmp_path / "vgg_lpips.safetensors"])
    assert isinstance(lpips, LPIPS)
    assert torch.equal(lpips.net.slice3._modules["10"].weight, features["features.10.weight"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips(x, x).abs().max() == 0
    assert (lpips(x, x.flip(-1)) > 0).all()                  # non-negative lin weights: a distance


def test_ema_follows_the_reference_formula():
    lin = torch.nn.Linear(2, 1)
    ema = EMA(lin, decay=0.9)
    w0 = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)                                             # decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.shadow["weight"], 0.1 * w0 + 0.9 * (w0 + 1))
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)                                             # decay min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.shadow["weight"], d * (0.1 * w0 + 0.9 * (w0 + 1)) + (1 - d) * (w0 + 2))
    with ema.swapped_in(lin):
        assert torch.equal(lin.weight, ema.shadow["weight"])
    assert torch.allclose(lin.weight, w0 + 2)


def test_checkpoint_is_atomic_and_rng_round_trips(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def crash(obj, f):                                          # dies half-way through writing
        real_save(obj, f)
        f.truncate(10)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1                   # the old checkpoint is intact
    state = capture_rng()
    save_checkpoint({"rng": state}, path)                       # loads with weights_only=True
    a = (torch.rand(3), np.random.rand(), random.random())
    restore_rng(load_checkpoint(path)["rng"])
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_learning_rate_warmup_and_cosine():
    cfg = ae_config(lr_schedule="cosine", warmup_steps=10, steps=110).train
    assert learning_rate(0, cfg) == pytest.approx(cfg.lr / 10)
    assert learning_rate(9, cfg) == pytest.approx(cfg.lr)
    assert learning_rate(60, cfg) == pytest.approx(cfg.lr * (0.1 + 0.9 * 0.5))
    assert learning_rate(110, cfg) == pytest.approx(cfg.lr * 0.1)


def test_run_folder_lock(tmp_path):
    a = RunFolder(tmp_path / "r")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "lock").write_text(str(os.getppid()))      # a live process that is not us
    with pytest.raises(RunLockedError, match="being written by process"):
        a.lock()
    gone = subprocess.Popen(["true"])
    gone.wait()                                                  # a pid that no longer runs
    (tmp_path / "r" / "lock").write_text(str(gone.pid))
    a.lock()                                                     # stale: taken over
    assert (tmp_path / "r" / "lock").read_text() == str(os.getpid())
    a.unlock()
    assert not (tmp_path / "r" / "lock").exists()


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", LDM_STAGES)
def test_make_config_builds_every_stage(stage, ae_file):
    cfg = ldm_config(ae_file, stage)
    assert cfg.stage == capabilities(cfg.model).training_stage == "ldm"
    assert load_config(dump_config(cfg), "ldm") == cfg                # YAML only stores the dataclasses
    assert "target" not in dump_config(cfg)                             # no CompVis target strings of ours
    m = cfg.model
    assert m.scale_factor == 0.5                              # read from the autoencoder file
    assert m.first_stage == load_model(ae_file).cfg
    task = {"sr": "upscale-ldm", "inpaint": "inpaint-sd", "uncond": "unconditional"}.get(stage, "conditional")
    assert m.task == task
    assert m.unet.in_channels == {"sr": 7, "inpaint": 9}.get(stage, 4)
    if stage == "class":
        assert m.cond_stage.n_classes == 25 and m.cond_stage.has_null_class
    with pytest.raises(ValueError, match="run `python -m core.train ldm"):
        load_config(config_dict(ldm_config(ae_file, stage)), "autoencoder")


def test_config_errors_are_clear(ae_file):
    cfg = config_dict(ldm_config(ae_file, "sr"))
    cfg["data"]["sr_factor"] = 2
    with pytest.raises(ValueError, match="sr_factor"):
        load_config(cfg)
    cfg = config_dict(ldm_config(ae_file, "txt2img"))
    cfg["train"]["batch_sise"] = 3
    with pytest.raises(ValueError, match="batch_sise"):
        load_config(cfg)
    with pytest.raises(ValueError, match="first_stage="):
        make_config("txt2img", "shapes", "tiny")
    # The stage is told in one place (capabilities), after the model block is read in either format.
    with pytest.raises(ValueError, match="no model.target to tell its stage"):
        load_config({"model": {"params": {}}, "train": {"steps": 1}})
    with pytest.raises(ValueError, match="`loss` holds an autoencoder's loss settings"):
        load_config({**config_dict(ldm_config(ae_file)), "loss": {"disc_start": 3}})
    with pytest.raises(ValueError, match="unknown config type 'Nope'"):
        load_config({**config_dict(ldm_config(ae_file)), "model": {"type": "Nope"}})


# --------------------------------------------------------------------------------------------
# The loops
# --------------------------------------------------------------------------------------------

def test_autoencoder_loop_lowers_the_loss_and_measures_the_scale_factor(tmp_path):
    rc = cfg = ae_config(steps=24, batch_size=16, ckpt_every=24, disc_start=20)
    x = TrainData(rc.data).batch(range(1000, 1016))["image"]             # images the loop never sees
    torch.manual_seed(rc.train.seed)
    ae = build_autoencoder(rc.model)                                     # the loop's initial weights

    def l1() -> float:
        with torch.no_grad():
            return (ae(x, sample_posterior=False)[0] - x).abs().mean().item()

    before = l1()
    assert train("autoencoder", cfg, name="ae", runs_dir=tmp_path) == "finished"
    run = RunFolder(tmp_path / "ae")
    ckpt = load_checkpoint(run.checkpoint_path)
    ae.load_state_dict(ckpt["model"])
    assert l1() < 0.8 * before
    rows = run.read_metrics()
    assert [r["step"] for r in rows] == list(range(1, 25))
    assert "g_loss" not in rows[19] and "g_loss" in rows[20]              # the GAN starts at disc_start
    assert 5 < rows[-1]["psnr"] < 60 and "psnr_ema" in rows[-1]
    state = run.read_state()
    assert state["status"] == "finished" and state["step"] == 24 and state["total_steps"] == 24
    # The scale factor: 1 / std of the first batch's latents (posterior samples), EMA weights.
    ae.load_state_dict(ema_state_dict(ckpt))
    x = TrainData(rc.data).batch(range(rc.train.batch_size))["image"]
    with torch.no_grad():                                   # precision auto = fp32 on CPU
        z = ae.encode(x).sample(torch.Generator().manual_seed(rc.train.seed))
    assert ckpt["scale_factor"] == pytest.approx(1 / z.float().std().item(), rel=1e-4)
    assert sorted(p.name for p in run.samples_dir.iterdir()) == ["step_0000024.png", "step_0000024_raw.png"]


def _eval_loss(model: LatentDiffusion, x: torch.Tensor, captions) -> float:
    """eq. 1 written out: E || eps - eps_theta(sqrt(abar) z0 + sqrt(1 - abar) eps, t, tau(y)) ||^2."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z0 = model.scale_factor * model.first_stage_model.encode(x).mean
        t = torch.randint(0, 1000, (x.shape[0],), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
        c = model.cond_stage_model(captions)
        return ((model.apply_model(a.sqrt() * z0 + (1 - a).sqrt() * eps, t, c) - eps) ** 2).mean().item()


def test_offset_noise_moves_each_channels_mean_and_nothing_else():
    noise = torch.randn(4096, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    shifted = offset_noise(noise, 0.5, torch.Generator().manual_seed(1))
    offset = shifted - noise                                          # one value per sample and channel
    assert torch.allclose(offset, offset[:, :, :1, :1].expand_as(offset), atol=1e-6)
    assert offset[:, :, 0, 0].std().item() == pytest.approx(0.5, rel=0.05)
    again = offset_noise(noise, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(shifted, again)                                # from the run's generator: reproducible
    with pytest.raises(ValueError, match="offset_noise"):
        TrainConfig(offset_noise=-0.1)


@pytest.mark.parametrize("min_snr_gamma, offset", [(None, 0.0), (5.0, 0.0), (5.0, 0.1)])
def test_ldm_loop_lowers_the_loss(tmp_path, ae_file, min_snr_gamma, offset):
    rc = cfg = ldm_config(ae_file, steps=25, ckpt_every=25, log_every=5, precision="fp32",
                          min_snr_gamma=min_snr_gamma, offset_noise=offset)
    torch.manual_seed(rc.train.seed)
    before = LatentDiffusion(rc.model)                          # the loop's initial weights (same seed)
    before.first_stage_model.load_state_dict(load_model(ae_file).state_dict())
    batch = TrainData(rc.data).batch(range(8))
    loss_before = _eval_loss(before, batch["image"], batch["caption"])
    assert train("ldm", cfg, name="ldm", runs_dir=tmp_path) == "finished"
    after = LatentDiffusion(rc.model)
    after.load_state_dict(load_checkpoint(tmp_path / "ldm" / "checkpoints" / "last.pt")["model"])
    assert torch.equal(after.first_stage_model.decoder.conv_out.weight,
                       before.first_stage_model.decoder.conv_out.weight)   # the first stage stays frozen
    assert _eval_loss(after, batch["image"], batch["caption"]) < 0.8 * loss_before
    state = RunFolder(tmp_path / "ldm").read_state()
    assert state["cached_latents"] == 16                        # the pool filled, then reused


def test_resume_continues_exactly_where_it_stopped(tmp_path, ae_file):
    cfg = ldm_config(ae_file, steps=6)
    assert train("ldm", cfg, name="straight", runs_dir=tmp_path) == "finished"
    assert train("ldm", cfg, name="paused", runs_dir=tmp_path, max_steps=3) == "stopped"
    with pytest.raises(ValueError, match="--resume"):
        train("ldm", cfg, name="paused", runs_dir=tmp_path)
    assert RunFolder(tmp_path / "paused").read_state()["step"] == 3
    written = RunFolder(tmp_path / "paused").config_path       # the run folder keeps our format, read back whole
    assert load_config(written) == cfg and yaml.safe_load(written.read_text())["model"]["type"] == "LatentDiffusionConfig"
    assert train("ldm", None, name="paused", runs_dir=tmp_path, resume=True) == "finished"
    straight, paused = losses_of(tmp_path / "straight"), losses_of(tmp_path / "paused")
    assert list(paused) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert paused[step] == pytest.approx(straight[step], rel=1e-5), step
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "paused" / "checkpoints" / "last.pt")
    assert b["step"] == 6 and len(b["commands"]) == 2
    for key in a["ema"]["shadow"]:
        assert torch.allclose(a["ema"]["shadow"][key], b["ema"]["shadow"][key], atol=1e-6)


def test_sigterm_saves_and_stops(tmp_path, ae_file):
    run = RunFolder(tmp_path / "term")

    done = threading.Event()

    def stop_after_first_checkpoint():
        while not run.checkpoint_path.exists() and not done.is_set():
            time.sleep(0.01)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)                # caught by the loop's handler

    threading.Thread(target=stop_after_first_checkpoint, daemon=True).start()
    try:
        status = train("ldm", ldm_config(ae_file, steps=500, ckpt_every=2), name="term", runs_dir=tmp_path)
    finally:
        done.set()
    assert status == "stopped"
    state = run.read_state()
    ckpt = load_checkpoint(run.checkpoint_path)
    assert state["status"] == "stopped" and 2 <= state["step"] == ckpt["step"] < 500
    assert not run.lock_path.exists()


def test_failure_is_recorded(tmp_path, ae_file):
    cfg = ldm_config(ae_file, steps=2)
    cfg = replace(cfg, train=replace(cfg.train, init_from=str(tmp_path / "missing.safetensors")))
    with pytest.raises(Exception):
        train("ldm", cfg, name="bad", runs_dir=tmp_path)
    state = RunFolder(tmp_path / "bad").read_state()
    assert state["status"] == "failed" and "missing.safetensors" in state["error"]


# --------------------------------------------------------------------------------------------
# Conditioning, inpainting init, export
# --------------------------------------------------------------------------------------------

def test_conditioning_dropout_gives_the_unconditional_inputs(ae_file):
    for stage in ("txt2img", "class", "layout"):
        rc = ldm_config(ae_file, stage)
        m = LatentDiffusion(rc.model)
        entry = encode_batch(m, TrainData(rc.data).batch(range(3)), torch.device("cpu"), contextlib.nullcontext)
        drop = torch.tensor([True, False, True])
        c = conditioning(m, entry, drop)
        enc = m.cond_stage_model
        if stage == "txt2img":
            uncond = enc([""])
        elif stage == "class":
            uncond = enc(torch.tensor([24]))
        else:
            uncond = enc([[]])
        assert torch.allclose(c[0], uncond[0]) and torch.allclose(c[2], uncond[0])
        assert not torch.allclose(c[1], uncond[0])


def _saved_ldm(ae_file, stage: str, path) -> LatentDiffusion:
    """A tiny LDM of `stage` with every weight nudged off its init (zero output layers included),
    saved to path for init_from."""
    m = LatentDiffusion(ldm_config(ae_file, stage).model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_model(m, path, dtype=None)
    return m


def test_inpainting_starts_from_txt2img_with_zero_new_channels(tmp_path, ae_file):
    txt = _saved_ldm(ae_file, "txt2img", tmp_path / "txt.safetensors")
    inp = LatentDiffusion(ldm_config(ae_file, "inpaint").model)
    init_from_ldm(inp, tmp_path / "txt.safetensors")
    w = inp.model.diffusion_model.input_blocks[0][0].weight
    assert torch.equal(w[:, :4], txt.model.diffusion_model.input_blocks[0][0].weight)
    assert (w[:, 4:] == 0).all()
    z, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 700])
    c = txt.get_learned_conditioning(["a small red circle in the center on a white background", ""])
    extra = torch.randn(2, 5, 4, 4)
    with torch.no_grad():
        assert torch.allclose(inp.apply_model(z, t, {"c_concat": [extra], "c_crossattn": [c]}),
                              txt.apply_model(z, t, c), atol=1e-6)


def test_a_layout_model_starts_from_a_text_models_unet(tmp_path, ae_file):
    txt = _saved_ldm(ae_file, "txt2img", tmp_path / "txt.safetensors")
    lay = LatentDiffusion(ldm_config(ae_file, "layout").model)
    fresh = {k: v.clone() for k, v in lay.cond_stage_model.state_dict().items()}
    init_from_ldm(lay, tmp_path / "txt.safetensors")
    for key, value in txt.model.state_dict().items():
        assert torch.equal(lay.model.state_dict()[key], value), key
    assert all(torch.equal(lay.cond_stage_model.state_dict()[k], v) for k, v in fresh.items())


def test_attention_at_one_more_resolution_starts_as_the_identity(tmp_path, ae_file):
    lay = _saved_ldm(ae_file, "layout", tmp_path / "lay.safetensors")
    cfg = ldm_config(ae_file, "layout").model
    levels = len(cfg.unet.channel_mult)
    wider = replace(cfg, unet=replace(cfg.unet, attention_resolutions=tuple(2 ** i for i in range(levels))))
    more = LatentDiffusion(wider)
    assert set(more.state_dict()) > set(lay.state_dict())              # new transformer blocks
    init_from_ldm(more, tmp_path / "lay.safetensors")
    z, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 700])
    c = lay.get_learned_conditioning([[[3, 0.1, 0.1, 0.5, 0.5]], []])
    with torch.no_grad():
        assert torch.allclose(more.apply_model(z, t, c), lay.apply_model(z, t, c), atol=1e-6)
    with pytest.raises(ValueError, match="missing keys"):                 # anything else missing still fails
        init_from_ldm(LatentDiffusion(replace(cfg, unet=replace(cfg.unet, num_res_blocks=cfg.unet.num_res_blocks + 1))),
                      tmp_path / "lay.safetensors")


def test_the_background_as_a_layout_token(tmp_path, ae_file):
    # Data: the scene's background first (class 24 + its index, box the whole image), then its objects.
    data = TrainData(DataConfig(source="shapes", size=32, seed=5, layout_background=True))
    batch, world = data.batch([0, 1, 2, 3]), ShapesWorld(size=32, seed=5)
    for b in range(4):
        s = world[b]
        assert batch["layout"][b, 0].tolist() == [24 + list(BACKGROUNDS).index(s["scene"].background), 0, 0, 1, 1]
        assert (batch["layout"][b, 1:, 0] >= 0).sum() == len(s["layout"])
    # Config: the embedder must have the 3 background classes and a token for them.
    cfg = ldm_config(ae_file, "layout", steps=2)
    with pytest.raises(ValueError, match="needs n_classes: 27 .* and max_objects: 4"):
        load_config(config_dict(replace(cfg, data=replace(cfg.data, layout_background=True))))
    lay = _saved_ldm(ae_file, "layout", tmp_path / "lay.safetensors")
    cond = replace(cfg.model.cond_stage, n_classes=27, max_objects=4)
    bg = load_config(config_dict(replace(cfg, model=replace(cfg.model, cond_stage=cond),
                                         data=replace(cfg.data, layout_background=True),
                                         train=replace(cfg.train, init_from=str(tmp_path / "lay.safetensors")))))
    # init_from a 24-class layout model: its classes and box projection kept, the backgrounds new.
    grown = LatentDiffusion(bg.model)
    init_from_ldm(grown, tmp_path / "lay.safetensors")
    assert torch.equal(grown.cond_stage_model.class_embedding.weight[:24], lay.cond_stage_model.class_embedding.weight)
    assert torch.equal(grown.cond_stage_model.box_proj.weight, lay.cond_stage_model.box_proj.weight)
    # Real steps, then the exported model reads backgrounds.
    train("ldm", bg, name="bg", runs_dir=tmp_path)
    m = load_model(export_run(tmp_path / "bg", tmp_path / "w" / "bg.safetensors"))
    vocabulary = layout_vocabulary(m)
    assert vocabulary.backgrounds == ("white", "black", "gray") and vocabulary.max_objects == 3


def test_export_round_trip(tmp_path, ae_file):
    cfg = ldm_config(ae_file, steps=3)
    cfg = replace(cfg, export={**cfg.export, "defaults": {**cfg.export["defaults"], "steps": 7}})
    train("ldm", cfg, name="exp", runs_dir=tmp_path)
    out = export_run(tmp_path / "exp", tmp_path / "w" / "exp.safetensors", name="tiny-txt2img")
    m = load_model(out, dtype=torch.float16)                         # as stored (the default runs float32)
    assert m.task == "conditional" and m.scale_factor == 0.5
    meta = m.metadata
    assert meta["ldm_studio_name"] == "tiny-txt2img"
    defaults = json.loads(meta["ldm_studio_defaults"])
    assert defaults["steps"] == 7 and defaults["width"] == 16 and defaults["guidance_scale"] == 3.0
    record = json.loads(meta["ldm_studio_training"])
    assert record["steps"] == 3 and "shapes world" in record["data"] and record["metrics"]["step"] == 3
    assert set(record) == {"data", "steps", "wall_time_s", "machine", "metrics", "command", "vocab"}
    # The file holds the EMA weights (fp16), the first stage and the text encoder, whose token
    # embedding keeps only the rows of the BPE ids shapes-world captions use (pad id 0 first).
    ckpt = load_checkpoint(tmp_path / "exp" / "checkpoints" / "last.pt")
    sd = m.state_dict()
    vocab = m.cond_stage_model.cfg.vocab
    assert vocab[0] == 0 and 20 < len(vocab) < 100 and record["vocab"].startswith("49408 -> ")
    emb = "cond_stage_model.transformer.token_emb.weight"
    for key, value in ckpt["ema"]["shadow"].items():
        expected = value[torch.tensor(vocab)] if key == emb else value
        assert sd[key].dtype == torch.float16 and torch.equal(sd[key], expected.half()), key
    # ... and reads every caption exactly as the full table did; unknown words read as padding.
    full = LatentDiffusion(load_config(ckpt["config"]).model)
    full.load_state_dict({k: v.half().float() for k, v in ema_state_dict(ckpt).items()})
    caps = ["a small red star at the top left and a large blue circle in the center on a gray background", ""]
    with torch.no_grad():
        assert torch.equal(full.get_learned_conditioning(caps), m.float().get_learned_conditioning(caps))
    with pytest.warns(UserWarning, match="read as padding: elephant"):
        m.get_learned_conditioning(["a purple elephant"])
    assert torch.equal(sd["first_stage_model.decoder.conv_out.weight"],
                       load_model(ae_file).decoder.conv_out.weight.half())
    ae_out = export_run(tmp_path / "exp", tmp_path / "w" / "again.safetensors", defaults={"guidance_scale": 5})
    assert load_model(ae_out).metadata["ldm_studio_name"] == "shapes-txt2img"
    again = json.loads(load_model(ae_out).metadata["ldm_studio_defaults"])
    assert again["guidance_scale"] == 5.0 and again["steps"] == 7              # the override over the config's
    with pytest.raises(ValueError, match="unknown keys"):
        export_run(tmp_path / "exp", tmp_path / "w" / "bad.safetensors", defaults={"cfg": 5})


def test_decoder_fine_tune_keeps_the_encoder_and_swaps_into_an_ldm(tmp_path, ae_file):
    train("autoencoder", ae_config(steps=2, ckpt_every=2), name="ae", runs_dir=tmp_path)
    ft = ae_config(steps=3, ckpt_every=3, init_from=str(tmp_path / "ae"), freeze_encoder=True)
    assert train("autoencoder", ft, name="dec", runs_dir=tmp_path) == "finished"
    first = ema_state_dict(load_checkpoint(tmp_path / "ae" / "checkpoints" / "last.pt"))
    ckpt = load_checkpoint(tmp_path / "dec" / "checkpoints" / "last.pt")
    second = ema_state_dict(ckpt)
    frozen = [k for k in first if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(first[k], ckpt["model"][k]) and torch.equal(first[k], second[k]) for k in frozen)
    assert not torch.equal(first["decoder.conv_out.weight"], second["decoder.conv_out.weight"])
    # An LDM trained on the first pass takes the fine-tuned decoder at export; another encoder is refused.
    train("ldm", ldm_config(str(tmp_path / "ae"), steps=1), name="ldm", runs_dir=tmp_path)
    m = load_model(export_run(tmp_path / "ldm", tmp_path / "ldm.safetensors", first_stage=tmp_path / "dec"))
    sd = m.state_dict()
    assert torch.equal(sd["first_stage_model.decoder.conv_out.weight"], second["decoder.conv_out.weight"].half())
    assert torch.equal(sd["first_stage_model.encoder.conv_in.weight"], first["encoder.conv_in.weight"].half())
    assert json.loads(m.metadata["ldm_studio_training"])["first_stage"].startswith("decoder from")
    with pytest.raises(ValueError, match="another encoder"):
        export_run(tmp_path / "ldm", tmp_path / "bad.safetensors", first_stage=ae_file)
    # A file whose run is gone is re-exported with the decoder and new defaults; all else stays.
    plain = load_model(export_run(tmp_path / "ldm", tmp_path / "plain.safetensors"))
    again = load_model(reexport_file(tmp_path / "plain.safetensors", tmp_path / "again.safetensors",
                                     first_stage=tmp_path / "dec", defaults={"steps": 9}))
    for key, value in again.state_dict().items():
        assert torch.equal(value, sd[key]), key                   # = the export straight from the run
    assert json.loads(again.metadata["ldm_studio_defaults"]) == {**json.loads(plain.metadata["ldm_studio_defaults"]),
                                                                 "steps": 9}
    record = json.loads(again.metadata["ldm_studio_training"])
    assert record["first_stage"].startswith("decoder from") and record["steps"] == 1
    assert again.metadata["ldm_studio_name"] == plain.metadata["ldm_studio_name"]
    with pytest.raises(ValueError, match="another encoder"):
        reexport_file(tmp_path / "plain.safetensors", tmp_path / "bad.safetensors", first_stage=ae_file)
    with pytest.raises(ValueError, match="nothing to change"):
        reexport_file(tmp_path / "plain.safetensors", tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="not an LDM file"):
        reexport_file(ae_file, tmp_path / "bad.safetensors", defaults={"steps": 9})
    assert not (tmp_path / "bad.safetensors").exists()
    with pytest.raises(ValueError, match="train.init_from"):
        train("autoencoder", ae_config(steps=1, freeze_encoder=True), name="x", runs_dir=tmp_path)


SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "scripts" / "train_configs"


@pytest.mark.parametrize("name", sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml")))
def test_shipped_training_configs_load(name, ae_file):
    text = (SHIPPED_CONFIGS / f"{name}.yaml").read_text()
    for shipped in ("weights/shapes-kl-f4.safetensors", "weights/shapes-txt2img.safetensors",
                    "weights/shapes-layout.safetensors"):
        text = text.replace(shipped, ae_file)                   # first stages (and init weights) of the test's own
    cfg = load_config(text)
    assert load_config(dump_config(cfg)) == cfg                # a CompVis-style file, stored in our format
    if name.startswith("shapes-kl-f4"):
        assert cfg.stage == "autoencoder" and cfg.model.ddconfig.downsample_factor == 4
        assert cfg.train.freeze_encoder == ("-decoder" in name)
        ae = build_autoencoder(cfg.model)
        assert 0.5e6 < sum(p.numel() for p in ae.parameters()) < 4e6
        assert all(m.num_groups == cfg.model.ddconfig.num_groups for m in ae.modules() if isinstance(m, torch.nn.GroupNorm))
        return
    task = {"shapes-txt2img": "conditional", "shapes-layout": "conditional", "shapes-sr4x": "upscale-ldm",
            "shapes-inpaint": "inpaint-sd"}[re.sub(r"(-continue|-attn|-offset|-bg)?\d*$", "", name)]   # continue4, inpaint2, attn16
    assert cfg.stage == "ldm" and cfg.model.task == task and cfg.model.scale_factor == 0.5
    with torch.device("meta"):
        n = sum(p.numel() for p in UNetModel(cfg.model.unet).parameters())
    assert 4e6 < n < 8e6


@pytest.mark.parametrize("stage", ["class", "layout", "uncond", "sr", "inpaint"])
def test_every_ldm_stage_trains_samples_and_exports(stage, ae_file, tmp_path):
    cfg = ldm_config(ae_file, stage, steps=2, sample_every=2)
    if stage == "sr":
        cfg = replace(cfg, data=replace(cfg.data, render_size=32))     # 16x16 crops of 32x32 renders
    assert train("ldm", cfg, name=stage, runs_dir=tmp_path) == "finished"
    run = RunFolder(tmp_path / stage)
    grid = Image.open(run.samples_dir / "step_0000002.png")
    rows = 3 if stage in ("sr", "inpaint") else 1               # input, sample, original
    assert grid.size == (2 + 2 * 18, 2 + rows * 18)              # 2 samples of 16 px, 2 px gaps
    m = load_model(export_run(run.path, tmp_path / f"{stage}.safetensors"))
    assert m.task == {"sr": "upscale-ldm", "inpaint": "inpaint-sd", "uncond": "unconditional"}.get(stage,
                                                                                                     "conditional")
    if stage == "class":
        assert m.cond_stage_model.null_class == 24               # the CFG null class survives export


def test_vq_autoencoder_trains_and_exports(tmp_path):
    cfg = ae_config(steps=2)
    vq = replace(cfg.model, kind="vq", n_embed=32, ddconfig=replace(cfg.model.ddconfig, double_z=False))
    cfg = replace(cfg, model=vq, loss=AutoencoderLossConfig(disc_start=1, codebook_weight=1.0, disc_num_layers=2,
                                                            disc_ndf=16))
    with pytest.raises(ValueError, match="logvar_init is for KL"):       # make_config's KL default is refused
        train("autoencoder", cfg, name="vq-bad", runs_dir=tmp_path)
    cfg = replace(cfg, train=replace(cfg.train, logvar_init=None))
    assert train("autoencoder", cfg, name="vq", runs_dir=tmp_path) == "finished"
    rows = RunFolder(tmp_path / "vq").read_metrics()
    assert "codebook" in rows[0] and "g_loss" in rows[1]
    m = load_model(export_run(tmp_path / "vq", tmp_path / "vq.safetensors"))
    assert type(m).__name__ == "VQModel" and float(m.metadata["ldm_studio_scale_factor"]) > 0
