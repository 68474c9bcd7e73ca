"""Our UNet against diffusers' UNet2DConditionModel on the same weights: numerics, speed, memory.

    python bench/unet.py                      # plain python: our UNet only
    .bench-venv/bin/python bench/unet.py      # with diffusers (see bench/README.md for the venv)
    .bench-venv/bin/python bench/unet.py --quick
    .bench-venv/bin/python bench/unet.py --layout sdxl            # SDXL base: bf16, 128x128 latents
    .bench-venv/bin/python bench/unet.py --device cuda --channels-last --compile --cuda-graphs

--layout sd21 (default) is Stability's `v2-inference.yaml` (SD 2.0/2.1 base, 865M parameters); --layout
sdxl is `sd_xl_base.yaml` (2.57B parameters, context 77x2048, ADM vector 2816); both read by our own
YAML translator (bench/unet_layouts.py). Weights are random but fixed (a torch.Generator seed, every
tensor non-zero, including the zero-initialised `out_layers.3`, `proj_out` and `out.2`), written once
to a cache directory: ours in the CompVis layout, and diffusers' layout made by diffusers' own
converter for original-LDM checkpoints (`diffusers.loaders.single_file_utils`). diffusers is only
ever imported in the bench venv; it is not a project dependency.

1. Numerics: batch 2, 4x32x32 latents, t = [10, 900]; the models run one after the other in one
   subprocess (one float32 copy held at a time: SDXL's is 10.3 GB); relative error
   ||ours - diffusers|| / ||diffusers|| in float32, must be < 1e-5 (and, unless --quick, each model's
   bfloat16 output against the float32 one). SDXL: also diffusers' own size embedding of the
   time ids against ours (the tail of y).
2. Timing: batch 2 (one classifier-free-guidance step); both models loaded in one subprocess and run
   alternately (A B B A ...), so that other jobs on a shared machine slow both alike; median (and
   min) milliseconds of --repeats forwards each after --warmup ones, under torch.inference_mode, with
   the same torch.set_num_threads for both.
3. Memory: one fresh subprocess per (latent size, dtype, implementation), so that nothing leaks from
   one measurement into the next; the weights are assigned from the file (held once) and the peak is
   what the first forward adds on top of them: on CPU the rise of the peak resident set (VmHWM, reset
   through /proc/self/clear_refs just before the forward), on CUDA torch.cuda.max_memory_allocated
   minus the memory allocated before it.
Before any of it, on the CPU, the parent refuses a run whose models cannot fit the memory available.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_tools import CudaGraphed  # noqa: E402
# BATCH, CONTEXT_LEN, V2_INFERENCE, inputs, seeded_init_, seeded_unet: also imported from here by
# bench/gpu_models.py, bench/load_memory.py and tests.
from bench.unet_layouts import (BASELINES, BATCH, CONTEXT_LEN, DTYPES, LAYOUTS, V2_INFERENCE, forward_fn,  # noqa: E402,F401
                                inputs, load, prepare_weights, seeded_init_, seeded_unet, step_args,
                                step_inputs, weight_bytes)
from core import speed  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Child processes: one measurement each
# ---------------------------------------------------------------------------------------------

def _proc_status(field: str) -> int:
    """A /proc/self/status field in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child_numerics(spec: dict) -> dict:
    """Ours, then diffusers, at 32x32 in float32 (and bfloat16): one model alive at a time."""
    cache, layout, results = Path(spec["cache"]), spec["layout"], {}
    inp = step_inputs(layout, "cpu", torch.float32, 32)
    low = {k: v.bfloat16() if v.is_floating_point() and k != "time_ids" else v for k, v in inp.items()}
    out = {}
    for impl in ("ours", "diffusers"):
        model, packed = load(impl, cache, "cpu", torch.float32, layout)
        with torch.inference_mode():
            results[impl, "fp32"] = forward_fn(impl, model)(*step_args(impl, inp)).float()
            if packed:                      # else "ours" already ran torch's plain kernels
                results["ours-plain", "fp32"] = forward_fn("ours-plain", model)(*step_args(impl, inp)).float()
            if impl == "diffusers" and "y" in inp:
                fourier = model.add_time_proj(inp["time_ids"].flatten()).reshape(len(inp["y"]), -1)
                out["size embedding ours vs diffusers"] = rel(inp["y"][:, -fourier.shape[1]:], fourier)
            if spec["bf16"]:
                model = model.to(torch.bfloat16)
                results[impl, "bf16"] = forward_fn(impl, model)(*step_args(impl, low)).float()
        del model

    ref = results["diffusers", "fp32"]
    out["fp32 ours vs diffusers"] = rel(results["ours", "fp32"], ref)
    if ("ours-plain", "fp32") in results:
        out["fp32 ours-plain vs diffusers"] = rel(results["ours-plain", "fp32"], ref)
    out["output rms"] = ref.pow(2).mean().sqrt().item()
    if spec["bf16"]:
        out["bf16 ours vs fp32"] = rel(results["ours", "bf16"], ref)
        out["bf16 diffusers vs fp32"] = rel(results["diffusers", "bf16"], ref)
        out["bf16 ours vs bf16 diffusers"] = rel(results["ours", "bf16"], results["diffusers", "bf16"])
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def prepared_step(impl: str, spec: dict):
    """Load one model as spec asks (dtype, channels_last, compile, CUDA graph); return (step, model,
    packed). "ours-plain", "ours-unfused" and "ours-unblocked" reuse spec["ours_model"] when given (one copy of
    the weights)."""
    device, dtype = spec["device"], DTYPES[spec["dtype"]]
    reuses = impl in ("ours-plain", *BASELINES)
    model, packed = spec.get("ours_model") if reuses else None, False
    if model is None:
        model, packed = load("diffusers" if impl == "diffusers" else "ours", Path(spec["cache"]), device, dtype,
                             spec["layout"], pack=impl != "ours-plain")
    args = step_args(impl, step_inputs(spec["layout"], device, dtype, spec["size"]))
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        args = (args[0].contiguous(memory_format=torch.channels_last),) + args[1:]
    fn = forward_fn(impl, model)
    if spec["compile"]:
        fn = torch.compile(fn)
    if not spec["cuda_graphs"]:
        return (lambda: fn(*args)), model, packed
    if not device.startswith("cuda"):
        raise ValueError("--cuda-graphs needs --device cuda")
    graphed = CudaGraphed(fn, warmup=3)     # bench/gpu_tools.py: warm-up on a side stream, capture
    graphed(*args)                           # captured here; later calls copy the inputs in and replay
    return (lambda: graphed(*args)), model, packed


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of the tensors returned by operators inside the mode and still alive: the forward's
    activations, exactly, whatever the allocator does (weights and inputs, created outside, are not
    counted; neither is scratch memory an operator frees before it returns).

    Each new storage is counted once (views share it) and uncounted by a finalizer when torch frees
    it (a storage's Python object lives as long as the storage itself).
    """

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.counted = 0, 0, set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.counted.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            # Opaque oneDNN tensors (packed weights, core/speed.py) have no storage: weights, not activations.
            if isinstance(t, torch.Tensor) and not t.is_mkldnn and t.untyped_storage().nbytes():
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.counted:
                    self.counted.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out


def child_memory(spec: dict) -> dict:
    """Peak memory the first forward adds on top of the loaded weights, one model per process."""
    cuda = spec["device"].startswith("cuda")
    with torch.inference_mode():
        if cuda:
            # Before loading: a CUDA graph's warm-up and capture happen inside prepared_step, and its
            # memory pool belongs to the forward; the weights are subtracted by their size.
            torch.cuda.init()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        step, model, packed = prepared_step(spec["impl"], spec)
        if cuda:
            base += sum(t.nbytes for t in list(model.parameters()) + list(model.buffers()))
        else:
            base = _proc_status("VmRSS") if _reset_peak_rss() else _proc_status("VmHWM")
            base *= 1024  # KiB -> bytes
        # The tracker sees eager ops only: under torch.compile or a CUDA graph it is left out.
        tracker = None if spec["compile"] or spec["cuda_graphs"] else LiveTensorPeak()
        with tracker or contextlib.nullcontext():
            step()
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = _proc_status("VmHWM") * 1024 - base
    return {"peak_mib": peak / 2**20, "tensors_mib": tracker.peak / 2**20 if tracker else None, "packed": packed}


def child_time(spec: dict) -> dict:
    """Both models in one process, timed alternately (A B B A A B ...), so that load from other jobs
    on a shared machine falls on both alike. Per forward and model: wall-clock milliseconds, and the
    process's CPU milliseconds (user + system, all threads), which other jobs disturb less."""
    cuda = spec["device"].startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = {impl: [] for impl in spec["impls"]}
    cpu_times = {impl: [] for impl in spec["impls"]}
    packed = winograd = False
    with torch.inference_mode():
        steps = {}
        # diffusers first: ours then decides on its packed copy (speed.packing_fits) with both loaded.
        for impl in sorted(spec["impls"], key=["diffusers", "ours", "ours-plain", *BASELINES].index):
            steps[impl], model, packed_now = prepared_step(impl, spec)
            if impl == "ours":
                spec, packed = {**spec, "ours_model": model}, packed_now
                winograd = any(type(m) is speed.WinogradConv2d for m in model.modules())
        for impl, step in steps.items():
            for _ in range(spec["warmup"]):
                step()
        sync()
        for r in range(spec["repeats"]):
            for impl in (spec["impls"] if r % 2 == 0 else spec["impls"][::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                steps[impl]()
                sync()
                times[impl].append((time.perf_counter() - t0) * 1e3)
                cpu_times[impl].append((time.process_time() - c0) * 1e3)
    return {"wall": times, "cpu": cpu_times, "packed": packed, "winograd": winograd}


def run_child(spec: dict) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Parent: machine, numerics, the table
# ---------------------------------------------------------------------------------------------

def machine(device: str, threads: int) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {cores} cores usable, torch {torch.__version__}, {threads} torch threads"
    if importlib.util.find_spec("diffusers"):
        import diffusers
        text += f", diffusers {diffusers.__version__}"
    if device.startswith("cuda"):
        text += f", GPU {torch.cuda.get_device_name(device)}"
    if hasattr(os, "getloadavg"):
        text += ", load average %.2f" % os.getloadavg()[0]
    return text


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="sd21",
                   help="sd21: v2-inference.yaml (default); sdxl: sd_xl_base.yaml (bf16, 128x128 by default)")
    p.add_argument("--quick", action="store_true", help="the smallest default size only, 1 timed forward, "
                   "no bf16 numerics")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int, nargs="+", help="latent sizes (default sd21: 32 64, --quick 32; sdxl: 128)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES),
                   help="default fp32 bf16 on CPU (sdxl: bf16 only; fp32 if asked and it fits), fp16 bf16 on CUDA")
    p.add_argument("--impls", nargs="+", choices=["ours", "ours-plain", *BASELINES, "diffusers"],
                   help="default: ours, ours-plain (sd21 on CPU, when packing is on) and diffusers when importable; "
                        "ours-unfused: packed with the transformers' GEGLU unfused (speed.PackedGEGLU's baseline); "
                        "ours-unblocked: packed with attention and feed-forwards in one piece (speed."
                        "BlockedCrossAttention's and BlockedFeedForward's baseline); ours-direct: packed with "
                        "every 3x3 convolution direct (speed.WinogradConv2d's baseline)")
    p.add_argument("--warmup", type=int, help="untimed forwards first (default CPU 1, CUDA 3)")
    p.add_argument("--repeats", type=int, help="timed forwards (default CPU 3, CUDA 20; --quick 1)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch.set_num_threads for both models (default: the usable cores)")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and input (both models)")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward (both models)")
    p.add_argument("--cuda-graphs", action="store_true", help="capture one forward in a CUDA graph, replay it")
    p.add_argument("--seed", type=int, default=0, help="weight seed")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ldm-bench-unet",
                   help="where the seeded weights are written once: <cache>/seed0 for sd21 (about 7 GB with "
                        "diffusers), <cache>/sdxl-seed0 for sdxl (about 21 GB)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args()


HEADROOM = 2 << 30   # activations, allocator and library caches beside the weights (SDXL 128x128 bf16: < 1 GiB)


def check_memory(layout: str, dtypes: list, impls: list, write_weights: bool, numerics: bool,
                 available: int | None = None) -> None:
    """Refuse (SystemExit) a CPU run whose largest process would not fit `available` bytes (default:
    the memory available now): writing the weights and the numerics hold one float32 model, the
    timing process one model per implementation in each dtype (ours-plain shares ours' weights)."""
    from core.pipelines.memory import available_memory
    available = available_memory("cpu") if available is None else available
    fp32 = weight_bytes(layout, torch.float32)
    copies = len({"diffusers" if impl == "diffusers" else "ours" for impl in impls})
    needs = [("writing the weights (one float32 model)", fp32)] if write_weights else []
    needs += [("the numerics (one float32 model at a time)", fp32)] if numerics else []
    needs += [(f"timing in {d} ({copies} models in one process)", copies * fp32 * DTYPES[d].itemsize // 4)
              for d in dtypes]
    for what, weights in needs:
        need = int(weights * 1.1) + HEADROOM
        if need > available:
            raise SystemExit(
                f"--layout {layout}: {what} needs about {need / 2**30:.1f} GiB ({weights / 2**30:.1f} GiB of weights "
                f"+ activations), but only {available / 2**30:.1f} GiB is available now. "
                + ("Leave fp32 out (--dtypes bf16) or " if "fp32" in what else "")
                + "time one implementation at a time (--impls ours, then --impls diffusers), or free memory.")


def main() -> None:
    args = parse_args()
    if args.child:
        spec = json.loads(args.child)
        torch.set_num_threads(spec["threads"])
        modes = {"numerics": child_numerics, "time": child_time, "memory": child_memory}
        result = modes[spec["mode"]](spec)
        print(json.dumps(result))
        return

    lay = LAYOUTS[args.layout]
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device; use --device cpu")
    has_diffusers = importlib.util.find_spec("diffusers") is not None
    # SDXL's packed copy does not fit beside diffusers' model in 23 GiB: ours is plain there
    plain = not cuda and speed.CPU_PACKED and lay.name == "sd21"
    impls = args.impls or (["ours"] + (["ours-plain"] if plain else []) + (["diffusers"] if has_diffusers else []))
    if "diffusers" in impls and not has_diffusers:
        raise SystemExit("diffusers is not importable here; run with .bench-venv/bin/python (bench/README.md)")
    sizes = args.sizes or (list(lay.sizes[:1]) if args.quick else list(lay.sizes))
    dtypes = args.dtypes or (["fp16", "bf16"] if cuda else list(lay.cpu_dtypes))
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    repeats = args.repeats or (1 if args.quick else (20 if cuda else 3))
    cache = args.cache / lay.cache_name.format(seed=args.seed)
    options = [o for o in ("channels_last", "compile", "cuda_graphs") if getattr(args, o)]
    if not cuda:
        missing = not (cache / "ours.safetensors").exists() or (
            "diffusers" in impls and not (cache / "diffusers.safetensors").exists())
        check_memory(lay.name, dtypes, impls, missing, "diffusers" in impls)

    print(f"# {lay.title}: ours vs diffusers\n\nmachine: {machine(args.device, args.threads)}")
    t_start = time.perf_counter()
    prepare_weights(cache, args.seed, "diffusers" in impls, lay.name)
    conditioning = f"context {BATCH}x{CONTEXT_LEN}x{lay.context_dim}" + (
        f", y {BATCH}x{lay.pooled_dim + 6 * 256} (pooled {lay.pooled_dim} ++ 6 time ids x 256)" if lay.pooled_dim else "")
    if "diffusers" in impls:
        report_numerics(run_child({"mode": "numerics", "cache": str(cache), "threads": args.threads,
                                   "bf16": not args.quick, "layout": lay.name}), conditioning)

    results = {}  # (size, dtype, impl) -> timings and memory, or {"error": str}
    for size in sizes:
        for dtype in dtypes:
            spec = {"device": args.device, "dtype": dtype, "size": size, "cache": str(cache), "layout": lay.name,
                    "threads": args.threads, "warmup": warmup, "repeats": repeats,
                    "channels_last": args.channels_last, "compile": args.compile, "cuda_graphs": args.cuda_graphs}
            timed = run_child({**spec, "mode": "time", "impls": impls})
            for impl in impls:
                mem = run_child({**spec, "mode": "memory", "impl": impl})
                error = timed.get("error") or mem.get("error")
                results[size, dtype, impl] = {"error": error} if error else {
                    "times_ms": timed["wall"][impl], "cpu_ms": timed["cpu"][impl], **mem,
                    "packed_timed": timed["packed"], "winograd": timed["winograd"]}
                shown = error or ("  ".join(f"{t:.0f}" for t in timed["wall"][impl]) + " ms (cpu "
                                  + "  ".join(f"{t:.0f}" for t in timed["cpu"][impl]) + f" ms), {mem['peak_mib']:.0f} MiB RSS")
                print(f"  {size}x{size} {dtype} {impl}: {shown}", flush=True)

    print(f"\n## Speed and memory ({args.device}, batch {BATCH}, {conditioning}, "
          f"{repeats} timed forwards each after {warmup} warm-up"
          f"{', ' + ', '.join(options) if options else ''})\n")
    print_table(results, "GPU" if cuda else "RSS")
    print(f"\nwhole run: {time.perf_counter() - t_start:.0f} s; "
          f"load average at the end {os.getloadavg()[0]:.2f} (a shared machine makes figures noisy)")


def report_numerics(num: dict, conditioning: str) -> None:
    print(f"\n## Numerics (CPU, batch 2, 4x32x32, {conditioning}, t = [10, 900]; one model at a time)\n")
    if "error" in num:
        print(f"numerics failed: {num['error']}")
        return
    for key, value in num.items():
        print(f"- {key}: {value:.3e}" + ("  (relative error)" if "vs" in key else ""))
    if "fp32 ours-plain vs diffusers" not in num:
        print("- ours ran torch's plain kernels in float32 (speed.packing_fits: the packed copy does not fit)")
    verdict = "OK" if num["fp32 ours vs diffusers"] < 1e-5 else "MISMATCH (> 1e-5)"
    print(f"- fp32 verdict: {verdict}")


def print_table(results: dict, rss: str) -> None:
    print(f"| config | impl | dtype | median ms | min ms | median CPU ms | peak {rss} MiB | peak tensors MiB "
          "| ours/diffusers time | ours/diffusers CPU time | ours/diffusers peak tensors |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def ratio(a, b, fmt="{:.2f}"):
        return fmt.format(a / b) if a is not None and b else ""
    unpacked, direct = [], []
    for (size, dtype, impl), r in results.items():
        config = f"{size}x{size} latents"
        if r.get("error"):
            print(f"| {config} | {impl} | {dtype} | failed | | | | | | | |")
            continue
        if impl == "ours" and rss == "RSS" and not (r["packed"] and r["packed_timed"]):
            unpacked.append(f"{config} {dtype}")
        elif impl == "ours" and rss == "RSS" and dtype == "fp32" and not r["winograd"]:
            direct.append(f"{config} {dtype}")
        median, cpu = statistics.median(r["times_ms"]), statistics.median(r["cpu_ms"])
        tensors = "" if r["tensors_mib"] is None else f"{r['tensors_mib']:.0f}"
        ratios = ["", "", ""]
        other = results.get((size, dtype, "diffusers"), {})
        if impl.startswith("ours") and other.get("times_ms"):
            ratios = [ratio(median, statistics.median(other["times_ms"])),
                      ratio(cpu, statistics.median(other["cpu_ms"])),
                      ratio(r["tensors_mib"], other["tensors_mib"])]
        print(f"| {config} | {impl} | {dtype} | {median:.0f} | {min(r['times_ms']):.0f} | {cpu:.0f} "
              f"| {r['peak_mib']:.0f} | {tensors} | " + " | ".join(ratios) + " |")
    print(f"\npeak {rss} MiB: what the first forward adds on top of the loaded weights (allocator and library "
          "caches included). peak tensors MiB: the most bytes held at once by tensors that the forward's "
          "operators returned (exact and allocator-independent; scratch memory inside one operator, such "
          "as a convolution's workspace, is not seen).")
    if unpacked:
        print("\n\"ours\" ran torch's plain kernels, not oneDNN-packed weights, in: " + "; ".join(unpacked)
              + ". core.load_model decides the same way: speed.packing_fits found that the packed copy (as "
              "large as the weights) would not fit in a third of the memory available (or LDM_CPU_PACKED=0); "
              "its blocked attention and feed-forwards, which hold no copy, still ran (not with LDM_CPU_PACKED=0).")
    if direct:
        print("\n\"ours\" ran its 3x3 convolutions direct, not as Winograd (speed.WinogradConv2d), in: "
              + "; ".join(direct) + ". core.load_model decides the same way: the transformed kernels (16/9 of "
              "those convolutions' weights) would not fit in a third of the memory available (speed.packing_fits).")


if __name__ == "__main__":
    main()
