"""The GPU path, proven in one prepared run: correctness, speed and memory in one JSON report.

    bash bench/gpu_check.sh                       # on a GPU machine: the full check, about 7 minutes
    bash bench/gpu_check.sh --device cpu --quick  # tiny models on a CPU: every code path in seconds (a test runs it)
    python3 bench/gpu_check.py --only sd21 --budget-s 200

bench/gpu_check.sh installs carried wheels (open_clip, ftfy, wcwidth: bench/README.md) and runs this
under a hard time limit. Sections, in order (each item guarded: a failure is recorded and the next item
runs; a global budget skips what would not fit):

  correctness  the suite's CUDA-marked tests (tests/test_cuda.py); the shipped text-to-image model's
               image from CPU-seeded noise on the CPU vs the device (max pixel difference); SD 2.1 and
               SDXL UNets (random weights) in float16 / bfloat16 vs float32 on the device (relative error)
  sd21         SD 2.1 base (random weights): the UNet's CFG step at 64x64 latents, VAE decode 512^2 and
               1024^2, a 50-step 512^2 image through core.pipelines.txt2img: each eager, torch.compile,
               and compile + CUDA graphs, with peak memory
  sdxl         SDXL base: the UNet's CFG step at 128x128; peak memory resident vs offloaded
  upscale      core.pipelines.upscale of the shipped shapes-sr4x to 2048^2, tiled

--quick uses the test suite's tiny models at scaled-down sizes (bench/gpu_models.QUICK). The report
goes to $OUT when set (the device machine), else bench/results/, as gpu_check-<device>[-quick].json.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import gpu_sections  # noqa: E402
from bench.gpu_models import FULL, QUICK  # noqa: E402
from bench.gpu_summary import summary  # noqa: E402
from bench.gpu_tools import Check  # noqa: E402

SECTIONS = {"correctness": (gpu_sections.tests, gpu_sections.cpu_vs_device, gpu_sections.precision),
            "sd21": (gpu_sections.sd21,), "sdxl": (gpu_sections.sdxl,), "upscale": (gpu_sections.upscale,)}
ANCHORS = {
    "sd21_cfg_step_64x64_ms": {"stable-fast (H100)": 9.6, "TensorRT (H100)": 11.6, "goal (H200)": 6.0,
                               "H200 compute floor (about)": 2.0},
    "sd21_image_512_50_steps_s": {"goal (H200)": 0.35},
}
DEFAULT_BUDGET_S = {"full": 420, "quick": 240}   # the shell's hard limit is 480 s (bench/gpu_check.sh)


def environment(device: torch.device, plan) -> dict:
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv[1:],
            "device": str(device), "plan": plan.name, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "machine": platform.node()}
    try:
        import open_clip
        meta["open_clip"] = open_clip.__version__
    except ImportError as exc:
        meta["open_clip"] = f"missing ({exc}): carry the wheels (bench/README.md)"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    tf32={"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
                    cudnn_benchmark=torch.backends.cudnn.benchmark,
                    sdpa={"flash": torch.backends.cuda.flash_sdp_enabled(),
                          "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled()})
    return meta


def context(args, device: torch.device, plan) -> SimpleNamespace:
    """What the sections read: device, inference dtype, plan, compile backend, and which variants
    run. On the CPU, torch.compile traces with dynamo alone (backend 'eager': inductor's C++ build
    of one UNet takes minutes on 2 cores) and only for the SD 2.1 step and image, unless
    --compile-all: dynamo alone takes about 10 s per model there."""
    skip, compile_only, reason = {}, None, None
    if device.type != "cuda":
        skip["compile_cuda_graphs"] = "CUDA graphs need a CUDA device"
        if not args.compile_all:
            compile_only = {("sd21", "cfg_step"), ("sd21", "image")}
            reason = "on the CPU only the SD 2.1 step and image are compiled (dynamo ~10 s per model); --compile-all"
    if args.no_compile:
        skip["compile"] = skip["compile_cuda_graphs"] = "--no-compile"
    backend = args.compile_backend or ("eager" if device.type == "cpu" else "inductor")
    dtype = {"cuda": torch.float16}.get(device.type, torch.float32)     # core.inference_dtype's choice
    return SimpleNamespace(device=device, dtype=dtype, plan=plan, backend=backend, skip_variants=skip,
                           compile_only=compile_only, compile_only_reason=reason)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="tiny models at small sizes (seconds on a CPU)")
    p.add_argument("--budget-s", type=float, help="global time budget (default: full 420, quick 240)")
    p.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these sections")
    p.add_argument("--compile-backend", help="torch.compile backend (default: inductor on CUDA; on the CPU "
                                             "'eager', dynamo alone: inductor's CPU build takes minutes)")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--compile-all", action="store_true", help="on the CPU too, compile every item")
    p.add_argument("--out-dir", type=Path, help="default: $OUT, else bench/results")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device here; use --device cpu (with --quick for the test run)")
        return 2
    plan = QUICK if args.quick else FULL
    out_dir = args.out_dir or Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    path = out_dir / f"gpu_check-{device.type}{'-quick' if args.quick else ''}.json"
    check = Check(path, args.budget_s or DEFAULT_BUDGET_S[plan.name], environment(device, plan), ANCHORS)
    ctx = context(args, device, plan)
    check.report["meta"].update(compile_backend=ctx.backend, dtype=str(ctx.dtype), skipped_variants=ctx.skip_variants)
    print(f"gpu_check: {check.report['meta'].get('gpu', device)}, plan {plan.name}, budget {check.budget_s:.0f} s, "
          f"report {path}", flush=True)
    with torch.no_grad():
        for name in args.only or SECTIONS:
            for section in SECTIONS[name]:
                try:
                    section(check, ctx)
                except Exception as exc:  # noqa: BLE001 - a broken section must not stop the others
                    check.record((name, f"{section.__name__}_section_error"),
                                 {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]})
            release(check, name, device)
    check.save()
    print(summary(check.report))
    print(f"\nreport: {path}")
    return 1 if count_errors(check.report["results"]) else 0


def release(check, name: str, device: torch.device) -> None:
    """Drop what a section left (compiled code, cached blocks) and record what is still allocated:
    a section's models must not stay on the device under the next one."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        check.report["meta"].setdefault("allocated_after_section_mib", {})[name] = round(
            torch.cuda.memory_allocated(device) / 2**20, 1)


def count_errors(node) -> int:
    if isinstance(node, dict):
        if node.get("status") == "error":
            return 1
        return sum(count_errors(v) for v in node.values())
    return 0


if __name__ == "__main__":
    sys.exit(main())
