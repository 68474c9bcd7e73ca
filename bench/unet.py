"""Our SD 2.1 UNet against diffusers' UNet2DConditionModel on the same weights: numerics, speed, memory.

    python bench/unet.py                      # plain python: our UNet only
    .bench-venv/bin/python bench/unet.py      # with diffusers (see bench/README.md for the venv)
    .bench-venv/bin/python bench/unet.py --quick
    .bench-venv/bin/python bench/unet.py --device cuda --channels-last --compile --cuda-graphs

The configuration is Stability's `v2-inference.yaml` (SD 2.0/2.1 base, 865M parameters), read by our
own YAML translator. Weights are random but fixed (a torch.Generator seed, every tensor non-zero,
including the zero-initialised `out_layers.3`, `proj_out` and `out.2`), written once to a cache
directory: ours in the CompVis layout, and diffusers' layout made by diffusers' own converter for
original-LDM checkpoints (`diffusers.loaders.single_file_utils`). diffusers is only ever imported
here, in the bench venv; it is not a project dependency.

1. Numerics: batch 2, 4x32x32 latents, context 2x77x1024, t = [10, 900]; relative error
   ||ours - diffusers|| / ||diffusers|| in float32, must be < 1e-5 (and, unless --quick, each model's bfloat16
   output against the float32 one).
2. Timing: batch 2 (one classifier-free-guidance step), context 77x1024; both models loaded in one
   subprocess and run alternately (A B B A ...), so that other jobs on a shared machine slow both
   alike; median (and min) milliseconds of --repeats forwards each after --warmup ones, under
   torch.inference_mode, with the same torch.set_num_threads for both.
3. Memory: one fresh subprocess per (latent size, dtype, implementation), so that nothing leaks from
   one measurement into the next; the weights are assigned from the file (held once) and the peak is
   what the first forward adds on top of them: on CPU the rise of the peak resident set (VmHWM, reset
   through /proc/self/clear_refs just before the forward), on CUDA torch.cuda.max_memory_allocated
   minus the memory allocated before it.
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
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_tools import CudaGraphed  # noqa: E402
from core import speed  # noqa: E402
from core.checkpoints import config_from_yaml  # noqa: E402
from core.models.unet import UNetModel  # noqa: E402

# Stability-AI/stablediffusion configs/stable-diffusion/v2-inference.yaml (also used by load_memory.py);
# diffusers' config converter reads the unet_config and the first stage's ch_mult (the VAE factor).
V2_INFERENCE = {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
    "linear_start": 0.00085, "linear_end": 0.0120, "timesteps": 1000, "image_size": 64, "channels": 4,
    "cond_stage_key": "txt", "conditioning_key": "crossattn", "scale_factor": 0.18215, "use_ema": False,
    "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
        "use_checkpoint": True, "use_fp16": True, "image_size": 32, "in_channels": 4, "out_channels": 4,
        "model_channels": 320, "attention_resolutions": [4, 2, 1], "num_res_blocks": 2,
        "channel_mult": [1, 2, 4, 4], "num_head_channels": 64, "use_spatial_transformer": True,
        "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": 1024, "legacy": False}},
    "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
        "embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                     "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                     "attn_resolutions": [], "dropout": 0.0}}},
    "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                          "params": {"freeze": True, "layer": "penultimate"}}}}}
PREFIX = "model.diffusion_model."  # the UNet's prefix in an original LDM checkpoint
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BATCH, CONTEXT_LEN, CONTEXT_DIM = 2, 77, 1024


# ---------------------------------------------------------------------------------------------
# Weights: one seeded set, saved in both layouts
# ---------------------------------------------------------------------------------------------

def unet_config():
    return config_from_yaml(V2_INFERENCE).unet


def seeded_unet(seed: int, config=None, device="cpu") -> UNetModel:
    """Our UNet (`config`, default SD 2.1's) with deterministic, all non-zero float32 weights drawn
    from one torch.Generator on `device` (seeded_init_)."""
    with torch.device("meta"):
        model = UNetModel(config or unet_config())
    model = model.to_empty(device=device).eval()
    if any(True for _ in model.buffers()):
        raise RuntimeError("seeded_unet: the UNet gained buffers; initialise them here too")
    return seeded_init_(model, seed)


@torch.no_grad()
def seeded_init_(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter of `model` from one torch.Generator on the model's device, in
    module order (the same seed on the same device gives the same weights).

    Linear / conv weights ~ N(0, 1 / (3 fan_in)) (the spread of torch's default init); biases
    ~ N(0, 0.02^2); norm scales 1 + N(0, 0.1^2), norm shifts N(0, 0.1^2). The zero-initialised
    output layers get the same treatment, so every block contributes to the output. Any other
    parameter (embeddings, attention in-projections, positional embeddings: the text encoders)
    ~ N(0, 1 / (3 fan_in)) when it is a matrix, else N(0, 0.02^2).
    """
    g = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            if module.weight is not None:
                module.weight.normal_(1.0, 0.1, generator=g)
            if module.bias is not None:
                module.bias.normal_(0.0, 0.1, generator=g)
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            module.weight.normal_(0.0, (3 * fan_in) ** -0.5, generator=g)
            if module.bias is not None:
                module.bias.normal_(0.0, 0.02, generator=g)
        else:
            for p in module.parameters(recurse=False):
                p.normal_(0.0, (3 * p[0].numel()) ** -0.5 if p.dim() >= 2 else 0.02, generator=g)
    return model


def to_diffusers(state_dict: dict) -> tuple[dict, dict]:
    """(UNet2DConditionModel kwargs, its state dict) by diffusers' converter for original LDM files."""
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint,
                                                     create_unet_diffusers_config_from_ldm)
    ldm = {PREFIX + k: v for k, v in state_dict.items()}
    config = create_unet_diffusers_config_from_ldm(V2_INFERENCE, ldm)
    return config, convert_ldm_unet_checkpoint(ldm, config)


def prepare_weights(cache: Path, seed: int, with_diffusers: bool) -> None:
    """Write ours.safetensors (and diffusers.safetensors + diffusers.json) under cache, once per seed."""
    from safetensors.torch import save_file
    ours, theirs = cache / "ours.safetensors", cache / "diffusers.safetensors"
    if ours.exists() and (theirs.exists() or not with_diffusers):
        return
    cache.mkdir(parents=True, exist_ok=True)
    print(f"writing seed-{seed} weights to {cache} (once) ...", flush=True)
    sd = {k: v.contiguous() for k, v in seeded_unet(seed).state_dict().items()}
    if with_diffusers:
        config, dsd = to_diffusers(sd)
        save_file({k: v.contiguous() for k, v in dsd.items()}, str(theirs) + ".tmp")
        (cache / "diffusers.json").write_text(json.dumps(config))
        os.replace(str(theirs) + ".tmp", theirs)
    save_file(sd, str(ours) + ".tmp")
    os.replace(str(ours) + ".tmp", ours)


def load(impl: str, cache: Path, device: str, dtype: torch.dtype) -> nn.Module:
    """Build on the meta device and assign the saved tensors, cast one by one: weights held once."""
    from safetensors import safe_open
    if impl == "ours":
        with torch.device("meta"):
            model = UNetModel(unet_config())
    else:
        from diffusers import UNet2DConditionModel
        with torch.device("meta"):
            model = UNet2DConditionModel(**json.loads((cache / "diffusers.json").read_text()))
    with safe_open(str(cache / f"{impl}.safetensors"), framework="pt", device="cpu") as f:
        # copy=True: a float32 tensor could otherwise stay backed by the file mapping and only become
        # resident when the first forward touches it, which would count the weights as forward memory.
        sd = {k: f.get_tensor(k).to(device=device, dtype=dtype, copy=True) for k in f.keys()}
    model.load_state_dict(sd, strict=True, assign=True)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise RuntimeError(f"{impl}: some tensors were not in the weights file")
    if impl == "ours" and device == "cpu" and speed.CPU_PACKED:
        speed.pack_for_cpu(model)   # as core.load_model does: oneDNN-packed weights (core/speed.py)
    return model.eval()


def inputs(device: str, dtype: torch.dtype, size: int, seed: int = 1, context_dim: int = CONTEXT_DIM):
    """x_t (B, 4, size, size), t (B,) = [10, 900], context (B, 77, context_dim), from one torch.Generator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 4, size, size, generator=g)
    context = torch.randn(BATCH, CONTEXT_LEN, context_dim, generator=g)
    t = torch.tensor([10, 900])
    return x.to(device, dtype), t.to(device), context.to(device, dtype)


def forward_fn(impl: str, model: nn.Module):
    if impl == "ours":
        return lambda x, t, c: model(x, t, c)
    if impl == "ours-plain":          # our model with torch's plain kernels (the packing lever's baseline)
        def plain(x, t, c):
            with speed.plain_kernels():
                return model(x, t, c)
        return plain
    return lambda x, t, c: model(x, t, encoder_hidden_states=c, return_dict=False)[0]


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
    cache, out = Path(spec["cache"]), {}
    x, t, c = inputs("cpu", torch.float32, 32)
    results = {}
    for impl in ("ours", "diffusers"):
        model = load(impl, cache, "cpu", torch.float32)
        with torch.inference_mode():
            results[impl, "fp32"] = forward_fn(impl, model)(x, t, c).float()
            if impl == "ours":
                results["ours-plain", "fp32"] = forward_fn("ours-plain", model)(x, t, c).float()
            if spec["bf16"]:
                model = model.to(torch.bfloat16)
                xb, cb = x.bfloat16(), c.bfloat16()
                results[impl, "bf16"] = forward_fn(impl, model)(xb, t, cb).float()
        del model

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()
    ref = results["diffusers", "fp32"]
    out["fp32 ours vs diffusers"] = rel(results["ours", "fp32"], ref)
    out["fp32 ours-plain vs diffusers"] = rel(results["ours-plain", "fp32"], ref)
    out["output rms"] = ref.pow(2).mean().sqrt().item()
    if spec["bf16"]:
        out["bf16 ours vs fp32"] = rel(results["ours", "bf16"], ref)
        out["bf16 diffusers vs fp32"] = rel(results["diffusers", "bf16"], ref)
        out["bf16 ours vs bf16 diffusers"] = rel(results["ours", "bf16"], results["diffusers", "bf16"])
    return out


def prepared_step(impl: str, spec: dict):
    """Load one model as spec asks (dtype, channels_last, compile, CUDA graph); return (step, model).
    "ours-plain" reuses spec["ours_model"] when given (one copy of the weights for both)."""
    device, dtype = spec["device"], DTYPES[spec["dtype"]]
    model = spec.get("ours_model") if impl == "ours-plain" else None
    model = model or load("diffusers" if impl == "diffusers" else "ours", Path(spec["cache"]), device, dtype)
    x, t, c = inputs(device, dtype, spec["size"])
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fn = forward_fn(impl, model)
    if spec["compile"]:
        fn = torch.compile(fn)
    if not spec["cuda_graphs"]:
        return (lambda: fn(x, t, c)), model
    if not device.startswith("cuda"):
        raise ValueError("--cuda-graphs needs --device cuda")
    graphed = CudaGraphed(fn, warmup=3)     # bench/gpu_tools.py: warm-up on a side stream, capture
    graphed(x, t, c)                         # captured here; later calls copy x, t, c in and replay
    return (lambda: graphed(x, t, c)), model


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
        step, model = prepared_step(spec["impl"], spec)
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
    return {"peak_mib": peak / 2**20, "tensors_mib": tracker.peak / 2**20 if tracker else None}


def child_time(spec: dict) -> dict:
    """Both models in one process, timed alternately (A B B A A B ...), so that load from other jobs
    on a shared machine falls on both alike. Per forward and model: wall-clock milliseconds, and the
    process's CPU milliseconds (user + system, all threads), which other jobs disturb less."""
    cuda = spec["device"].startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = {impl: [] for impl in spec["impls"]}
    cpu_times = {impl: [] for impl in spec["impls"]}
    with torch.inference_mode():
        steps = {}
        for impl in spec["impls"]:
            steps[impl], model = prepared_step(impl, spec)
            if impl == "ours":
                spec = {**spec, "ours_model": model}
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
    return {"wall": times, "cpu": cpu_times}


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="32x32 latents only, 1 timed forward, no bf16 numerics")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int, nargs="+", help="latent sizes (default 32 64; --quick: 32)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES),
                   help="default fp32 bf16 on CPU, fp16 bf16 on CUDA")
    p.add_argument("--impls", nargs="+", choices=["ours", "ours-plain", "diffusers"],
                   help="default: ours, ours-plain (CPU, when packing is on) and diffusers when importable")
    p.add_argument("--warmup", type=int, help="untimed forwards first (default CPU 1, CUDA 3)")
    p.add_argument("--repeats", type=int, help="timed forwards (default CPU 3, CUDA 20; --quick 1)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch.set_num_threads for both models (default: the usable cores)")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and input (both models)")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward (both models)")
    p.add_argument("--cuda-graphs", action="store_true", help="capture one forward in a CUDA graph, replay it")
    p.add_argument("--seed", type=int, default=0, help="weight seed")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ldm-bench-unet",
                   help="where the seeded weights are written once (about 7 GB with diffusers)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        spec = json.loads(args.child)
        torch.set_num_threads(spec["threads"])
        modes = {"numerics": child_numerics, "time": child_time, "memory": child_memory}
        result = modes[spec["mode"]](spec)
        print(json.dumps(result))
        return

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device; use --device cpu")
    has_diffusers = importlib.util.find_spec("diffusers") is not None
    impls = args.impls or (["ours"] + (["ours-plain"] if not cuda and speed.CPU_PACKED else [])
                           + (["diffusers"] if has_diffusers else []))
    if "diffusers" in impls and not has_diffusers:
        raise SystemExit("diffusers is not importable here; run with .bench-venv/bin/python (bench/README.md)")
    sizes = args.sizes or ([32] if args.quick else [32, 64])
    dtypes = args.dtypes or (["fp16", "bf16"] if cuda else ["fp32", "bf16"])
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    repeats = args.repeats or (1 if args.quick else (20 if cuda else 3))
    cache = args.cache / f"seed{args.seed}"
    options = [o for o in ("channels_last", "compile", "cuda_graphs") if getattr(args, o)]

    print(f"# SD 2.1 UNet (v2-inference.yaml): ours vs diffusers\n\nmachine: {machine(args.device, args.threads)}")
    t_start = time.perf_counter()
    prepare_weights(cache, args.seed, "diffusers" in impls)

    if "diffusers" in impls:
        num = run_child({"mode": "numerics", "cache": str(cache), "threads": args.threads,
                         "bf16": not args.quick})
        print("\n## Numerics (CPU, batch 2, 4x32x32, context 2x77x1024, t = [10, 900])\n")
        if "error" in num:
            print(f"numerics failed: {num['error']}")
        else:
            for key, value in num.items():
                print(f"- {key}: {value:.3e}" + ("  (relative error)" if "vs" in key else ""))
            verdict = "OK" if num["fp32 ours vs diffusers"] < 1e-5 else "MISMATCH (> 1e-5)"
            print(f"- fp32 verdict: {verdict}")

    results = {}  # (size, dtype, impl) -> timings and memory, or {"error": str}
    for size in sizes:
        for dtype in dtypes:
            spec = {"device": args.device, "dtype": dtype, "size": size, "cache": str(cache),
                    "threads": args.threads, "warmup": warmup, "repeats": repeats,
                    "channels_last": args.channels_last, "compile": args.compile, "cuda_graphs": args.cuda_graphs}
            timed = run_child({**spec, "mode": "time", "impls": impls})
            for impl in impls:
                mem = run_child({**spec, "mode": "memory", "impl": impl})
                error = timed.get("error") or mem.get("error")
                results[size, dtype, impl] = {"error": error} if error else {
                    "times_ms": timed["wall"][impl], "cpu_ms": timed["cpu"][impl], **mem}
                shown = error or ("  ".join(f"{t:.0f}" for t in timed["wall"][impl]) + " ms (cpu "
                                  + "  ".join(f"{t:.0f}" for t in timed["cpu"][impl]) + f" ms), {mem['peak_mib']:.0f} MiB RSS")
                print(f"  {size}x{size} {dtype} {impl}: {shown}", flush=True)

    print(f"\n## Speed and memory ({args.device}, batch {BATCH}, context {CONTEXT_LEN}x{CONTEXT_DIM}, "
          f"{repeats} timed forwards each after {warmup} warm-up"
          f"{', ' + ', '.join(options) if options else ''})\n")
    rss = "GPU" if cuda else "RSS"
    print(f"| config | impl | dtype | median ms | min ms | median CPU ms | peak {rss} MiB | peak tensors MiB "
          "| ours/diffusers time | ours/diffusers CPU time | ours/diffusers peak tensors |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def ratio(a, b, fmt="{:.2f}"):
        return fmt.format(a / b) if a is not None and b else ""
    for (size, dtype, impl), r in results.items():
        config = f"{size}x{size} latents"
        if r.get("error"):
            print(f"| {config} | {impl} | {dtype} | failed | | | | | | | |")
            continue
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
    print(f"\nwhole run: {time.perf_counter() - t_start:.0f} s; "
          f"load average at the end {os.getloadavg()[0]:.2f} (a shared machine makes figures noisy)")


if __name__ == "__main__":
    main()
