"""Time and peak memory of 4x upscaling for 256^2, 512^2, 1024^2 and 2048^2 outputs.

    python bench/upscale.py                                  # weights/shapes-sr4x.safetensors, its defaults
    python bench/upscale.py --sizes 256 512 1024 --steps 10 --threads 2
    python bench/upscale.py --tile 64 --vae-tile 64 --stat-tiles 4     # fixed tiles instead of the plan
    python bench/upscale.py --device cuda --sizes 256 512 1024 2048 4096
    python bench/upscale.py --sizes 1024 --cpu-bf16 off --repeats 2     # float32 throughout, 2 runs a size

Each size runs in a FRESH subprocess, so the peak of one size cannot hide in the next: the child
loads the model, renders a low-resolution test picture (size / 4 per side: smooth gradients and
discs), resets the kernel's peak-RSS counter (/proc/self/clear_refs), runs pipelines.upscale --
by default exactly as `pipelines.upscale(m, image)` does (the model's steps, the planned UNet tile
and batch, the planned decode) -- and reports wall time, the process's CPU time (on a machine
shared with other jobs the wall time is inflated; the CPU time much less), peak RSS (VmHWM; on
CUDA also torch.cuda.max_memory_allocated), the plan (UNet tile x tiles / batch, VAE tile, 0 =
untiled) and the precision the UNet and decoder ran in (bf16 autocast where the CPU has native bf16
unless --cpu-bf16 off, i.e. LDM_CPU_BF16=0 in the child). Without a weights file it builds a model of the default SR model's size
(scripts/train_configs/shapes-sr4x.yaml) with random weights; the speed and memory are the same.

Figures: README.md, "Performance".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.shipped import default_size_config  # noqa: E402

DEFAULT_SIZE = default_size_config("shapes-sr4x")   # scripts/train_configs/shapes-sr4x.yaml


def _peak_rss_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")         # resets VmHWM to the current RSS
    except OSError:
        pass


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def test_picture(side: int):
    import numpy as np
    from PIL import Image
    yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    rgb = np.stack([xx, yy, 1 - xx * yy], -1) * 200 + 30
    rng = np.random.RandomState(0)
    for _ in range(max(1, side // 16)):
        cy, cx, r = rng.rand() * side, rng.rand() * side, 2 + rng.rand() * side / 8
        rgb[(yy * (side - 1) - cy) ** 2 + (xx * (side - 1) - cx) ** 2 < r * r] = rng.rand(3) * 255
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def child(spec: dict) -> None:
    import torch

    from core import inference_dtype, load_model
    from core import pipelines, speed
    from core.checkpoints import config_from_yaml
    from core.models.diffusion import LatentDiffusion

    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"] or inference_dtype(spec["device"]))
    if spec["model"]:
        m = load_model(spec["model"], device=spec["device"], dtype=dtype)
    else:
        torch.manual_seed(0)
        m = LatentDiffusion(config_from_yaml(DEFAULT_SIZE)).eval().to(spec["device"], dtype or torch.float32)
    f = m.config.first_stage.ddconfig.downsample_factor
    lr = test_picture(spec["size"] // f)
    cuda = spec["device"].startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = _rss("VmRSS")
    _peak_rss_reset()
    settings = pipelines.SamplingSettings.resolve(pipelines.model_defaults(m), steps=spec["steps"])
    with speed.cpu_bf16_autocast(m.device, m.dtype):
        precision = "bf16 autocast" if torch.is_autocast_enabled("cpu") else str(m.dtype).removeprefix("torch.")
    plan = pipelines.plan_upscale(m, lr.width, lr.height, settings, tile=spec["tile"], vae_tile=spec["vae_tile"],
                                  dtype=m.dtype, device=m.device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = pipelines.upscale(m, lr, tile=plan.tile, steps=spec["steps"], seed=0, vae_tile=plan.vae_tile,
                            tile_batch=plan.tile_batch, vae_stat_tiles=spec["stat_tiles"])
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"size": out.size[0], "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                      "plan": f"{plan.tile}x{plan.tiles}/{plan.tile_batch}, vae {plan.vae_tile}, {precision}",
                      "rss_before_mb": round(base / 2 ** 20),
                      "peak_rss_mb": round(_rss("VmHWM") / 2 ** 20),
                      "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20) if cuda else None,
                      "tile": out.info["ldm_studio"]["tile"], "steps": out.info["ldm_studio"]["steps"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="SR weights (default: weights/*sr*.safetensors, else built)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048], help="output sides")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    ap.add_argument("--tile", type=int, default=0, help="UNet tile in input pixels (0 = planner)")
    ap.add_argument("--vae-tile", type=int, default=-1, help="VAE tile in latent pixels (-1 = planner, 0 = untiled)")
    ap.add_argument("--stat-tiles", type=int, default=0,
                    help="tiles measuring the tiled VAE's GroupNorm statistics (0 = all: exact, the default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu-bf16", choices=["auto", "off"], default="auto",
                    help="bf16 autocast for a float32 model on a CPU with native bf16 (off: LDM_CPU_BF16=0)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each size, each in a fresh process")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    model = args.model
    if model is None:
        found = sorted((ROOT / "weights").glob("*sr*.safetensors"))
        model = str(found[0]) if found else None
    print(f"model: {model or 'built (default SR size, random weights)'}; {args.steps or 'default'} steps, tile {args.tile or 'planned'}, "
          f"vae tile {args.vae_tile}, stat tiles {args.stat_tiles or 'all'}, {args.device}, {args.threads} threads, "
          f"cpu bf16 {args.cpu_bf16}")
    env = {**os.environ, **({"LDM_CPU_BF16": "0"} if args.cpu_bf16 == "off" else {})}
    print(f"{'output':>10} {'seconds':>9} {'CPU s':>8} {'peak RSS MB':>12} {'RSS before':>11} {'CUDA peak MB':>13}  plan")
    for size in [s for s in args.sizes for _ in range(args.repeats)]:
        spec = {"size": size, "model": model, "steps": args.steps, "tile": args.tile or None,
                "vae_tile": None if args.vae_tile < 0 else args.vae_tile, "device": args.device,
                "dtype": args.dtype, "threads": args.threads, "stat_tiles": args.stat_tiles or None}
        run = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                             text=True, cwd=ROOT, env=env)
        if run.returncode != 0:
            print(f"{size:>10} failed: {run.stderr.strip().splitlines()[-1] if run.stderr else run.returncode}")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{str(size) + '^2':>10} {r['seconds']:>9.1f} {r['cpu_seconds']:>8.1f} {r['peak_rss_mb']:>12} "
              f"{r['rss_before_mb']:>11} {str(r['cuda_peak_mb']):>13}  {r['plan']}", flush=True)


if __name__ == "__main__":
    main()
