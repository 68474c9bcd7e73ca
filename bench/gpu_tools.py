"""The machinery of bench/gpu_check.py: a time-budgeted, guarded runner that writes its JSON report
after every item; timing with peak memory; and one module run three ways (eager, torch.compile,
compiled and replayed from CUDA graphs).

Nothing here knows a model: bench/gpu_models.py builds them, bench/gpu_check.py says what to measure.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch


class Skip(Exception):
    """Raised by an item that cannot run here (no CUDA, a missing package): recorded as skipped."""


class BudgetExceeded(Exception):
    """The global time budget ran out while an item was running."""


def _on_alarm(signum, frame):
    raise BudgetExceeded("the global time budget ran out during this item")


@contextmanager
def alarm_after(seconds: float):
    """Raise BudgetExceeded in the main thread after `seconds` (between Python bytecodes: a long
    kernel finishes first; inductor's compile workers are separate processes)."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Check:
    """Runs items under one time budget and keeps the report: results[section][item][variant].

    Every item is guarded: an exception becomes {"status": "error", "error": ..., "traceback": ...}
    and the next item runs; an item that would start with less than its `needs_s` left is recorded
    as skipped. The JSON is rewritten (atomically) after every item, so a run killed from outside
    still leaves what it measured.
    """

    def __init__(self, path: Path, budget_s: float, meta: dict, anchors: dict):
        self.path, self.budget_s = path, budget_s
        self.start = time.monotonic()
        self.report = {"meta": meta, "anchors": anchors, "results": {}}
        self.save()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def slot(self, keys: tuple[str, ...]) -> dict:
        node = self.report["results"]
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        return node

    def record(self, keys: tuple[str, ...], entry: dict) -> dict:
        self.slot(keys)[keys[-1]] = entry
        self.save()
        return entry

    def skip(self, keys: tuple[str, ...], reason: str) -> None:
        self.record(keys, {"status": "skipped", "reason": reason})

    def run(self, keys: tuple[str, ...], fn, needs_s: float = 0.0):
        """fn() -> dict of figures (or any JSON value under "value"); returns it, or None when the
        item failed or was skipped."""
        left = self.left()
        if left < max(needs_s, 1.0):
            self.skip(keys, f"time budget: {max(left, 0):.0f} s left, this item needs about {needs_s:.0f} s")
            return None
        t0 = time.monotonic()
        try:
            with alarm_after(left), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = fn()
            entry = {"status": "ok", **(result if isinstance(result, dict) else {"value": result})}
            seen = list(dict.fromkeys(f"{w.category.__name__}: {w.message}"[:300] for w in caught))
            if seen:                 # e.g. the float16 VAE's fallback to float32, a dynamo graph break
                entry["warnings"] = seen[:5]
        except Skip as reason:
            entry, result = {"status": "skipped", "reason": str(reason)}, None
        except Exception as exc:  # noqa: BLE001 - one failure must not stop the other items
            entry, result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                             "traceback": traceback.format_exc().splitlines()[-12:]}, None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        entry["seconds"] = round(time.monotonic() - t0, 2)
        self.record(keys, entry)
        print(f"[{time.monotonic() - self.start:6.1f} s] {'/'.join(keys)}: {entry['status']}"
              + (f" ({entry.get('error') or entry.get('reason')})" if entry["status"] != "ok" else ""), flush=True)
        return result

    def save(self) -> None:
        self.report["meta"]["elapsed_s"] = round(time.monotonic() - self.start, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.report, indent=1, default=str))
        os.replace(tmp, self.path)


# ---------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int = 1, repeats: int = 5) -> dict:
    """Median / min wall milliseconds of `repeats` calls after `warmup` (device synchronised around
    each call), and on CUDA the peak memory the timed calls reached: torch.cuda.max_memory_allocated
    (everything allocated: weights included) and that peak over what was allocated before them."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    out = {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "repeats": repeats}
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        out.update(peak_allocated_mib=round(peak / 2**20, 1), peak_over_start_mib=round((peak - before) / 2**20, 1))
    return out


def allocated_mib(device: torch.device) -> float | None:
    return round(torch.cuda.memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def rel_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64."""
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------------------------
# One module, three ways
# ---------------------------------------------------------------------------------------------

VARIANTS = ("eager", "compile", "compile_cuda_graphs")


class Variants:
    """Switch `module.forward` between eager, torch.compile (default mode, static shapes) and the
    compiled forward replayed from CUDA graphs. The compiled function is made once and kept, so the
    graphs variant and any later caller (a pipeline) reuse the compile."""

    def __init__(self, module: torch.nn.Module, backend: str = "inductor"):
        self.module, self.backend, self.compiled = module, backend, None

    def use(self, variant: str) -> None:
        self.module.__dict__.pop("forward", None)          # back to the class's forward
        if variant == "eager":
            return
        if self.compiled is None:
            self.compiled = torch.compile(self.module.forward, backend=self.backend, dynamic=False)
        if variant == "compile":
            self.module.forward = self.compiled
        elif variant == "compile_cuda_graphs":
            self.module.forward = CudaGraphed(self.compiled)
        else:
            raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")


def _signature(args: tuple, kwargs: dict) -> tuple:
    def one(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device, value.stride())
        if isinstance(value, (list, tuple, dict)):
            raise ValueError("CudaGraphed takes tensors and plain values, not containers")
        return ("value", value)
    return tuple(one(a) for a in args) + tuple((k, one(v)) for k, v in sorted(kwargs.items()))


class CudaGraphed:
    """fn(*args, **kwargs) -> tensor, replayed from one CUDA graph per call signature (shapes,
    dtypes, strides and the non-tensor arguments): the inputs are copied into the graph's static
    buffers, the graph replays, and a copy of its static output is returned (the next replay
    overwrites it). Captured after `warmup` calls on a side stream, as torch.cuda.graphs asks."""

    def __init__(self, fn, warmup: int = 2):
        self.fn, self.warmup, self.graphs = fn, warmup, {}

    def _capture(self, args: tuple, kwargs: dict):
        static_args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        static_kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*static_args, **static_kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(*static_args, **static_kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"CudaGraphed needs a function returning one tensor, got {type(out).__name__}")
        return graph, static_args, static_kwargs, out

    def __call__(self, *args, **kwargs):
        key = _signature(args, kwargs)
        if key not in self.graphs:
            self.graphs[key] = self._capture(args, kwargs)
        graph, static_args, static_kwargs, out = self.graphs[key]
        for static, value in zip(static_args, args):
            if isinstance(static, torch.Tensor):
                static.copy_(value)
        for name, static in static_kwargs.items():
            if isinstance(static, torch.Tensor):
                static.copy_(kwargs[name])
        graph.replay()
        return out.clone()
