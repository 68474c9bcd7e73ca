"""What both training loops need around them: device and precision, torchrun/DDP, a stop flag for
SIGTERM, the learning-rate schedule, per-step random generators and the machine's description."""

import contextlib
import logging
import math
import os
import platform
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from core.train.config import TrainConfig

log = logging.getLogger("core.train")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0                        # this process among world_size (torchrun's RANK)
    world_size: int = 1
    amp_dtype: torch.dtype | None = None # autocast dtype; None = plain fp32
    scaler: bool = False                 # fp16 needs loss scaling (GradScaler); bf16 does not

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Device, precision and (under torchrun, WORLD_SIZE > 1) the process group: NCCL on GPUs, gloo on CPU."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {cfg.device!r} but no CUDA GPU is available; use device: cpu")
    device = torch.device(f"cuda:{local_rank}" if want == "cuda" else want)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    precision = cfg.precision
    if precision == "auto":
        # CPU: fp32. bf16 autocast on CPU was 19x slower than fp32 for a conv autoencoder's training step
        # (torch 2.14, AMD EPYC without AMX: convolution backward has no fast bf16 kernel there).
        if device.type == "cpu":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return Runtime(device=device, rank=rank, world_size=world_size, amp_dtype=amp, scaler=precision == "fp16")


def shutdown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(rt: Runtime, values: dict[str, float]) -> dict[str, float]:
    """Average logged numbers over the processes (one small all-reduce)."""
    if not rt.distributed or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64,
                     device=rt.device if rt.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return dict(zip(values, (t / rt.world_size).tolist()))


def check_replicas(rt: Runtime, module: torch.nn.Module) -> None:
    """Under DDP every process must hold the same weights; a mismatch means the gradients were not
    all-reduced (a bug, or parameters DDP did not see), and the run must not go on silently."""
    if not rt.distributed:
        return
    with torch.no_grad():
        total = torch.stack([p.detach().double().sum() for p in module.parameters() if p.requires_grad]).sum()
        spread = torch.stack([total, -total]).to(rt.device if rt.device.type == "cuda" else "cpu")
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    if (spread[0] + spread[1]).abs() > 1e-6 * max(1.0, spread[0].abs().item()):
        raise RuntimeError(f"the {rt.world_size} DDP processes hold different weights (parameter sums "
                           f"{spread[0].item()} vs {-spread[1].item()})")


class StopFlag:
    """Set by SIGTERM (and Ctrl-C): the loop saves a checkpoint after the current step and exits.
    Under torchrun every process agrees (an all-reduce of the flag), so they stop at the same step."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():    # signals reach the main thread only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def check(self, rt: Runtime) -> bool:
        if not rt.distributed:
            return self.requested
        t = torch.tensor([1.0 if self.requested else 0.0], device=rt.device if rt.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def samples_and_checkpoint(step: int, end: int, cfg: TrainConfig, stop: StopFlag, rt: Runtime, grids, save) -> bool:
    """After an optimizer step of a diffusion loop: the sample grids and the checkpoint when due (and at
    the end, and on a stop request). True when a stop was asked: the loop ends there, resumably."""
    stopping = stop.check(rt)
    if step % cfg.sample_every == 0 or step == end:
        grids()
    if step % cfg.ckpt_every == 0 or step == end or stopping:
        save()
    if stopping:
        log.info("stop requested: checkpoint saved at step %d", step)
    return stopping


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then constant (the reference) or cosine down to 10% of it."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_learning_rate(opt: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> float:
    """Give every parameter group of `opt` the learning rate of `step`; returns it."""
    lr = learning_rate(step, cfg)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def step_generator(seed: int, step: int, rank: int, micro: int = 0) -> torch.Generator:
    """The random stream of one micro-step of one process, a function of (seed, step, rank, micro):
    a resumed run draws the same noise, timesteps and dropout as an uninterrupted one."""
    return torch.Generator().manual_seed(hash((seed, step, rank, micro)) & 0x7FFF_FFFF_FFFF_FFFF)


def sample_indices(step: int, micro: int, rt: Runtime, batch_size: int, grad_accum: int) -> range:
    """Which data samples a micro-step reads: consecutive blocks, interleaved over the processes."""
    block = (step * grad_accum + micro) * rt.world_size + rt.rank
    return range(block * batch_size, (block + 1) * batch_size)


def machine(rt: Runtime) -> str:
    if rt.device.type == "cuda":
        what = f"{rt.world_size}x {torch.cuda.get_device_name(rt.device)}"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        what = f"{rt.world_size}x CPU {cpu} ({os.cpu_count()} cores)"
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[rt.amp_dtype]
    return f"{what}, {precision}, torch {torch.__version__}"
