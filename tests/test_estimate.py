"""Time estimates before a generation (core/pipelines/estimate.py, the Text to image tab on the CPU):
FLOPs counted on the meta device from the config, at a measured rate."""
import dataclasses

import pytest

from core import save_model
from core.pipelines.estimate import (WorkPlan, describe, flops_per_second, txt2img_work, unet_flops,
                                     vae_decode_flops)
from tests.tiny_models import tiny_model


def test_work_is_counted_from_the_config_and_scales_as_it_should():
    cfg = tiny_model("sdxl").config
    one, two = unet_flops(cfg.unet, 16, 16, 1), unet_flops(cfg.unet, 16, 16, 2)
    assert one > 0 and two == pytest.approx(2 * one)
    assert unet_flops(cfg.unet, 32, 32, 1) > 4 * one                       # attention grows faster than pixels
    work = txt2img_work(cfg, 128, 128, steps=10, n=3, guided=True)
    assert work.unet_flops == pytest.approx(3 * 10 * two)
    assert work.vae_flops == pytest.approx(3 * vae_decode_flops(cfg.first_stage, 16, 16))
    assert txt2img_work(cfg, 128, 128, 10, 3, guided=False).unet_flops == pytest.approx(3 * 10 * one)


def test_seconds_and_their_wording():
    plan = WorkPlan(3e12, 1e12)
    assert plan.seconds(seconds_per_flop=2e-11) == pytest.approx(80.0)
    assert plan.seconds(flops_per_second=1e11) == pytest.approx(80.0)     # half the matmul peak
    assert flops_per_second() > 1e8
    assert [describe(s) for s in (0.2, 42, 720, 9000)] == ["about 1 s", "about 42 s", "about 12 min", "about 2.5 h"]


def test_the_tab_shows_the_estimate_on_the_cpu_only(tmp_path, monkeypatch):
    import ui.txt2img as tab
    from ui.settings import AppSettings
    from ui.studio import Studio
    save_model(tiny_model("sdxl"), tmp_path / "weights" / "xl.safetensors")
    settings = AppSettings(weights_dir=tmp_path / "weights", outputs_dir=tmp_path / "out", runs_dir=tmp_path / "runs")
    studio = Studio.create(settings)
    monkeypatch.setattr(tab, "SHOW_FROM_SECONDS", 0)
    text = tab.time_estimate(studio, "xl.safetensors", steps=30, width=256, height=256)
    assert text.startswith("On the CPU this will take **about") and "TFLOP" in text
    assert tab.time_estimate(studio, "xl.safetensors", steps=30, width=250, height=256) == ""   # off the grid
    gpu = dataclasses.replace(studio, settings=dataclasses.replace(settings, device="cuda"))
    assert tab.time_estimate(gpu, "xl.safetensors", steps=30) == ""
