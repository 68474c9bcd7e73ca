"""Seconds per image of txt2img, and per UNet step, on the default text-to-image model.

    python bench/txt2img.py                                   # weights/shapes-txt2img.safetensors
    python bench/txt2img.py --model path.safetensors --steps 50 --images 4 --threads 2
    python bench/txt2img.py --device cuda --dtype float16

Without a weights file it builds a model of the default model's size (shapes-txt2img: KL-f4 ch 32,
UNet mc 64 mult 1-2-2 with cross-attention at 8x8 and 4x4, a 4-layer width-64 text transformer;
scripts/train_configs/shapes-txt2img.yaml) with random weights: the speed is the same, the
pictures are noise. One warm-up image, then --images timed images (one seed each, the pipeline's
own loop). "UNet step" is the median wall time of one m.apply_model call (batch 2 with guidance),
measured inside the same runs. Expected runtime on a 2-core CPU: well under a minute.

Measured with --threads 1 on the build machine's 2-core AMD EPYC (shared with a training run): the
default model weights/shapes-txt2img.safetensors in float32, 64x64, DDIM 50 steps, CFG 3: 1.43 s
per image, 28.5 ms per UNet step (in the file's float16 on the CPU: 23.1 s per image).
Session 10, --threads 1, the same kind of machine (AMD EPYC, 2 cores, idle), the round-8 model:
DDIM 50 steps 0.68 s per image, DPM++ 2M 30 steps (its defaults now) 0.42 s, 13.1-13.3 ms per UNet
step (4 images each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.shipped import default_size_config  # noqa: E402
from core import inference_dtype, load_model  # noqa: E402
from core.checkpoints import config_from_yaml  # noqa: E402
from core.models.diffusion import LatentDiffusion  # noqa: E402
from core import pipelines  # noqa: E402

DEFAULT_SIZE = default_size_config("shapes-txt2img")   # scripts/train_configs/shapes-txt2img.yaml
PROMPT = "a large red circle at the top left and a small blue star in the center on a gray background"


def get_model(path: str | None, device: str, dtype):
    candidates = [Path(path)] if path else sorted((ROOT / "weights").glob("*txt2img*.safetensors"))
    if candidates and candidates[0].is_file():
        return load_model(candidates[0], device=device, dtype=dtype), str(candidates[0])
    if path:
        raise SystemExit(f"no such model file: {path}")
    torch.manual_seed(0)
    m = LatentDiffusion(config_from_yaml(DEFAULT_SIZE)).eval().to(device=device, dtype=dtype or torch.float32)
    return m, "built (default size, random weights)"


def compare_kernels(m, args, kw) -> None:
    """Seconds per image, packed and plain kernels alternately (A B B A ...) in this one process."""
    from core import speed
    runs = {"packed": contextlib.nullcontext, "plain": speed.plain_kernels}
    times = {name: [] for name in runs}
    for name, context in runs.items():                                       # warm-up, both
        with context():
            pipelines.txt2img(m, PROMPT, seed=0, **kw)
    for i in range(args.images):
        for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
            with runs[name]():
                t0 = time.perf_counter()
                pipelines.txt2img(m, PROMPT, seed=1 + i, **kw)
                times[name].append(time.perf_counter() - t0)
    packed, plain = statistics.median(times["packed"]), statistics.median(times["plain"])
    print(f"{args.sampler} x {args.steps} steps, {torch.get_num_threads()} threads, {args.images} images each")
    print(f"  seconds per image: packed {packed:.3f}, plain {plain:.3f} (packed / plain {packed / plain:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="weights file (default: weights/*txt2img*.safetensors)")
    ap.add_argument("--steps", type=int, default=50, help="sampling steps per image")
    ap.add_argument("--sampler", default="ddim", help="sampler name")
    ap.add_argument("--images", type=int, default=3, help="timed images (after one warm-up)")
    ap.add_argument("--size", type=int, default=None, help="image side (default: the model's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                    help="weights dtype (default: float32 on the CPU, float16 on CUDA, as the app)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--kernels", action="store_true",
                    help="time images alternately with the oneDNN-packed kernels (the CPU default) and with "
                         "torch's plain ones (core/speed.py), and print both medians")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or inference_dtype(args.device))
    m, source = get_model(args.model, args.device, dtype)

    step_times: list[float] = []
    inner = m.apply_model

    def timed(*a, **k):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = inner(*a, **k)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - t0)
        return out

    m.apply_model = timed
    kw = dict(steps=args.steps, sampler=args.sampler, width=args.size, height=args.size)
    if args.kernels:
        return compare_kernels(m, args, kw)
    pipelines.txt2img(m, PROMPT, seed=0, **kw)                               # warm-up
    step_times.clear()
    t0 = time.perf_counter()
    images = pipelines.txt2img(m, PROMPT, seed=1, n=args.images, **kw)
    per_image = (time.perf_counter() - t0) / args.images
    step = statistics.median(step_times)
    info = images[0].info["ldm_studio"]
    result = {"model": source, "device": args.device, "dtype": str(next(m.parameters()).dtype),
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "size": f"{info['width']}x{info['height']}", "sampler": info["sampler"], "steps": info["steps"],
              "guidance_scale": info["guidance_scale"], "unet_calls_per_image": len(step_times) / args.images,
              "s_per_image": round(per_image, 4), "ms_per_unet_step": round(1000 * step, 3)}
    print(f"model: {source}")
    print(f"{result['size']}, {result['sampler']} x {result['steps']} steps, CFG {result['guidance_scale']}, "
          f"{result['device']} {result['dtype']}, {result['threads']} threads")
    print(f"  seconds per image : {per_image:.3f}")
    print(f"  ms per UNet step  : {1000 * step:.2f} (batch 2 with guidance; "
          f"{result['unet_calls_per_image']:.0f} calls per image)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
