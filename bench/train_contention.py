"""Generation while a background training run trains: seconds per txt2img image with a trainer
started the way the app starts it (core.train.runs.RunManager) at several niceness / thread settings,
each against the same generation without the trainer measured right after (a shared machine's own
load changes from minute to minute, so each pair is compared, not one idle figure with all).

    python bench/train_contention.py                        # weights/shapes-txt2img.safetensors
    python bench/train_contention.py --images 3 --settings 0:0 10:1 19:1 --gen-threads 1

Generation runs in this process as the app runs it (float32 on the CPU, the model's own sampling
defaults; torch's default thread count unless --gen-threads). The trainer is the Train tab's default
run: an autoencoder, model size "small", 64 px, batch 32, on the shapes world. Each setting
NICE:THREADS (THREADS 0 = torch's default, one per core) gets a fresh trainer, which is stopped
after its images. Figures go to stdout as a Markdown table and JSON.
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


def generate(m, n: int) -> float:
    """Median seconds per image over n images at the model's own defaults (as the app's Generate)."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        pipelines.txt2img(m, PROMPT, seed=1 + i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "weights" / "shapes-txt2img.safetensors"))
    ap.add_argument("--images", type=int, default=3, help="timed images per measurement")
    ap.add_argument("--batch", type=int, default=32, help="training batch size (the Train tab's default)")
    ap.add_argument("--gen-threads", type=int, default=0, help="torch threads of generation (0: torch's default)")
    ap.add_argument("--settings", nargs="+", default=["0:0", "10:0", "0:1", "10:1", "19:1"],
                    help="NICE:THREADS of the trainer (THREADS 0: torch's default)")
    args = ap.parse_args()
    if args.gen_threads:
        torch.set_num_threads(args.gen_threads)

    m = load_model(args.model, device="cpu", dtype=torch.float32)
    generate(m, 1)                                                            # warm-up
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, generation threads "
          f"{torch.get_num_threads()}; {Path(args.model).name} at {model_defaults(m)}", flush=True)
    config = make_config("autoencoder", "shapes", "small", steps=100_000, batch_size=args.batch, image_size=64,
                         log_every=1, sample_every=100_000, ckpt_every=100_000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            nice, threads = (int(v) for v in setting.split(":"))
            runs = RunManager(Path(tmp) / "runs", nice=nice, threads=threads)
            name = f"bench-n{nice}-t{threads}"
            runs.start(config, name=name, stage="autoencoder")
            try:
                while len(runs.metrics(name)) < 3:                             # past start-up
                    if runs.status(name).status != "running":
                        raise SystemExit(f"the trainer ended: {runs.status(name).error}")
                    time.sleep(0.5)
                trainer_alone = runs.status(name).images_per_s
                busy = generate(m, args.images)
                trainer_during = runs.status(name).images_per_s
            finally:
                runs.stop(name, timeout=60.0, force=True)
            idle = generate(m, args.images)
            rows.append({"nice": nice, "threads": threads or "default", "s_per_image_training": busy,
                         "s_per_image_idle": idle, "slowdown": busy / idle,
                         "train_img_per_s_before": trainer_alone, "train_img_per_s_during": trainer_during})
            print(f"nice {nice:2d} threads {threads or 'default':>7}: {busy:.2f} s per image while training, "
                  f"{idle:.2f} s right after ({busy / idle:.1f}x); trainer {trainer_alone or 0:.1f} img/s "
                  f"before, {trainer_during or 0:.1f} img/s during; load average {os.getloadavg()[0]:.1f}", flush=True)
    print("\n| trainer nice | trainer threads | s/image training | s/image idle | slowdown | trainer img/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nice']} | {r['threads']} | {r['s_per_image_training']:.2f} | {r['s_per_image_idle']:.2f} | "
              f"{r['slowdown']:.1f}x | {r['train_img_per_s_before'] or 0:.1f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
