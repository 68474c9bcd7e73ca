"""Generation while a background training run trains: seconds per txt2img image idle, and with a
trainer started the way the app starts it (core.train.runs.RunManager) at several niceness / thread
settings; and what each setting costs the training (its images/s alone and during generation).

    python bench/train_contention.py                        # weights/shapes-txt2img.safetensors
    python bench/train_contention.py --images 3 --settings 0:0 10:1 19:1

Generation runs in this process as the app runs it (float32 on the CPU, torch's default thread
count, the model's own sampling defaults). The trainer is the Train tab's default run: an autoencoder,
model size "small", 64 px, batch 32, on the shapes world. Each setting NICE:THREADS (THREADS 0 =
torch's default, one per core) gets a fresh trainer; its speed alone is measured over --alone seconds
first, then --images images are generated while it trains. Figures go to stdout as a table and JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import load_model, pipelines  # noqa: E402
from core.pipelines.defaults import model_defaults  # noqa: E402
from core.train.config import make_config  # noqa: E402
from core.train.runs import RunManager  # noqa: E402

PROMPT = "a large red circle at the top left and a small blue star in the center on a gray background"


def generate(m, n: int, seed: int) -> list[float]:
    """Seconds of each of n images at the model's own defaults (as the app's Generate)."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        pipelines.txt2img(m, PROMPT, seed=seed + i)
        times.append(time.perf_counter() - t0)
    return times


def train_speed(runs: RunManager, name: str, since: float, until: float, batch: int) -> float | None:
    """Training images/s between two wall-clock times, from metrics.jsonl's per-step times."""
    rows = [r for r in runs.metrics(name) if since <= r.get("time", 0) <= until]
    if len(rows) < 2:
        return None
    return (rows[-1]["step"] - rows[0]["step"]) * batch / (rows[-1]["time"] - rows[0]["time"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "weights" / "shapes-txt2img.safetensors"))
    ap.add_argument("--images", type=int, default=3, help="timed images per setting")
    ap.add_argument("--alone", type=float, default=20.0, help="seconds the trainer's speed is measured alone")
    ap.add_argument("--batch", type=int, default=32, help="training batch size (the Train tab's default)")
    ap.add_argument("--settings", nargs="+", default=["0:0", "0:1", "10:0", "10:1", "19:1"],
                    help="NICE:THREADS of the trainer (THREADS 0: torch's default)")
    args = ap.parse_args()

    m = load_model(args.model, device="cpu", dtype=torch.float32)
    generate(m, 1, seed=0)                                                    # warm-up
    idle = generate(m, args.images, seed=1)
    rows = [{"setting": "idle (no training)", "s_per_image": statistics.median(idle), "all": idle}]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"generation threads {torch.get_num_threads()}; {Path(args.model).name} at {model_defaults(m)}")
    print(f"idle: {statistics.median(idle):.2f} s per image ({', '.join(f'{t:.2f}' for t in idle)})", flush=True)

    config = make_config("autoencoder", "shapes", "small", steps=100_000, batch_size=args.batch, image_size=64,
                         log_every=1, sample_every=100_000, ckpt_every=100_000)
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            nice, threads = (int(v) for v in setting.split(":"))
            runs = RunManager(Path(tmp) / "runs", nice=nice, threads=threads)
            name = f"bench-n{nice}-t{threads}"
            runs.start(config, name=name, stage="autoencoder")
            try:
                while len(runs.metrics(name)) < 2:                             # past start-up and step 1
                    if runs.status(name).status != "running":
                        raise SystemExit(f"the trainer ended: {runs.status(name).error}")
                    time.sleep(0.5)
                t0 = time.time()
                time.sleep(args.alone)
                alone = train_speed(runs, name, t0, time.time(), args.batch)
                t1 = time.time()
                busy = generate(m, args.images, seed=1)
                during = train_speed(runs, name, t1, time.time(), args.batch)
            finally:
                runs.stop(name, timeout=60.0, force=True)
            rows.append({"setting": f"training, nice {nice}, {threads or 'default'} threads",
                         "s_per_image": statistics.median(busy), "all": busy,
                         "train_img_per_s_alone": alone, "train_img_per_s_during": during})
            print(f"nice {nice:2d} threads {threads or 'default':>7}: {statistics.median(busy):.2f} s per image "
                  f"({', '.join(f'{t:.2f}' for t in busy)}); training {alone or 0:.1f} img/s alone, "
                  f"{during or 0:.1f} img/s during generation", flush=True)
    again = generate(m, args.images, seed=1)
    rows.append({"setting": "idle again", "s_per_image": statistics.median(again), "all": again})
    print(f"idle again: {statistics.median(again):.2f} s per image")
    print("\n| setting | s per image (median) | x idle | training img/s alone | training img/s during |")
    print("|---|---|---|---|---|")
    for r in rows:
        alone, during = (f"{r[k]:.1f}" if r.get(k) else "" for k in ("train_img_per_s_alone", "train_img_per_s_during"))
        print(f"| {r['setting']} | {r['s_per_image']:.2f} | {r['s_per_image'] / rows[0]['s_per_image']:.1f} | "
              f"{alone} | {during} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
