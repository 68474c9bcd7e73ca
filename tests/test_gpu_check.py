"""bench/gpu_check.sh, the one prepared GPU run (issue 20), kept from rotting: its --device cpu --quick
run goes through every section on the tiny models and writes a complete report."""
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.gpu_tools import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def test_quick_cpu_run_writes_a_complete_report(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check-cpu-quick.json").read_text())
    results = report["results"]
    assert report["meta"]["plan"] == "quick" and report["anchors"]["sd21_cfg_step_64x64_ms"]["goal (H200)"] == 6.0
    assert results["correctness"]["cuda_tests"]["tests"] > 0                 # collected (skipped: no CUDA)
    image = results["correctness"]["cpu_vs_device_image"]["float32"]
    assert image["max_pixel_diff"] == 0                                     # the CPU against itself
    for unet in ("sd21_unet", "sdxl_unet"):
        errors = results["correctness"][f"{unet}_fp16_bf16_vs_fp32"]
        assert 0 < errors["float16_rel_error"] < errors["bfloat16_rel_error"] < 0.1
    speed = {(s, i): e for s, items in results.items() for i, e in items.items() if set(e) >= set(VARIANTS)}
    assert {s for s, _ in speed} == {"sd21", "sdxl", "upscale"} and len(speed) == 6
    for entry in speed.values():
        assert entry["eager"]["status"] == "ok" and entry["eager"]["median_ms"] > 0
        assert entry["compile_cuda_graphs"]["status"] == "skipped"
    assert results["sd21"]["cfg_step_8x8"]["compile"]["status"] == "ok"      # dynamo traced the UNet
    assert results["sd21"]["image_64_4_steps"]["compile"]["status"] == "ok"
    assert results["sdxl"]["memory_resident_vs_offloaded"]["decoded_finite"]
    assert "| sd21 cfg_step_8x8 |" in proc.stdout                           # the summary table printed last


def test_budget_skips_what_does_not_fit(tmp_path):
    from bench.gpu_tools import Check
    check = Check(tmp_path / "r.json", budget_s=30, meta={}, anchors={})
    assert check.run(("a", "fits"), lambda: {"x": 1}) == {"x": 1}
    assert check.run(("a", "too long"), lambda: {"x": 2}, needs_s=60) is None
    assert check.run(("a", "broken"), lambda: 1 / 0) is None
    results = json.loads((tmp_path / "r.json").read_text())["results"]["a"]
    assert results["fits"]["status"] == "ok" and results["fits"]["x"] == 1
    assert results["too long"]["status"] == "skipped" and "time budget" in results["too long"]["reason"]
    assert results["broken"]["status"] == "error" and "ZeroDivisionError" in results["broken"]["error"]


def test_an_item_running_past_the_budget_is_stopped(tmp_path):
    import time

    from bench.gpu_tools import Check
    check = Check(tmp_path / "r.json", budget_s=1.5, meta={}, anchors={})
    t0 = time.monotonic()
    assert check.run(("a", "slow"), lambda: time.sleep(30)) is None
    assert time.monotonic() - t0 < 5
    entry = json.loads((tmp_path / "r.json").read_text())["results"]["a"]["slow"]
    assert entry["status"] == "error" and entry["error"].startswith("BudgetExceeded")


def test_full_plan_unets_take_the_check_inputs_on_meta():
    """The full run's SD 2.1 and SDXL UNets (bundled configs) accept the CFG-step inputs the check
    builds: shapes only, on the meta device (no memory, no GPU)."""
    import torch

    from bench.gpu_models import FULL, sd21_config, sdxl_config, unet_inputs
    from core.models.unet import UNetModel
    for cfg_of, latent, params in ((sd21_config, FULL.sd_latent, 865.9), (sdxl_config, FULL.sdxl_latent, 2567.5)):
        cfg = cfg_of(FULL)
        with torch.device("meta"):
            unet = UNetModel(cfg.unet).half()
        assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == params
        args, kwargs = unet_inputs(cfg.unet, latent, torch.device("meta"), torch.float16)
        assert unet(*args, **kwargs).shape == (2, 4, latent, latent)
