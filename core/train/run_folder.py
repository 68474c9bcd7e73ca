"""The files a training run writes into runs/NAME/ (contracts.md), which the app's Train tab reads.

    config.yaml              the training config used
    state.json               {"name", "stage", "status", "pid", "step", "total_steps", "started_at",
                              "updated_at", "error", "images_per_s", "eta_s", "run_id"}, replaced atomically
    metrics.jsonl            one JSON object per log step: {"step", "loss", <terms>, "lr", "images_per_s", "time"}
    samples/step_{step:07d}.png, step_{step:07d}_raw.png   EMA and non-EMA grids at fixed seeds
    checkpoints/last.pt      (checkpoint.py)
    train.log                stdout/stderr of a background run (written by whoever starts it)
    lock                     the pid of the process writing the folder

Only one process writes a folder: `lock` is created with O_EXCL; a lock left by a process that no
longer runs is taken over (renamed away first, so of two processes taking it over only one wins).
"""

import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

STATUSES = ("running", "finished", "failed", "stopped")


class RunLockedError(RuntimeError):
    pass


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a killed child nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> Image.Image:
    """(N, 3, H, W) in [-1, 1] -> one PIL image, `nrow` images per row, white gaps of `pad` pixels.
    Pixels are (x + 1) / 2 * 255 truncated to uint8, as the reference writes its samples."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2 * 255).numpy().astype(np.uint8)
    n, _, h, w = x.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = \
            x[i].transpose(1, 2, 0)
    return Image.fromarray(grid)


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.name
        self.state_path = self.path / "state.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.samples_dir = self.path / "samples"
        self.checkpoint_path = self.path / "checkpoints" / "last.pt"
        self.lock_path = self.path / "lock"
        self.config_path = self.path / "config.yaml"
        self._locked = False

    # ---- the lock ------------------------------------------------------------------------------
    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.lock_path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid == os.getpid():
                    self._locked = True
                    return
                if pid and pid_alive(pid):
                    raise RunLockedError(f"run folder {self.path} is being written by process {pid}; stop that "
                                         "run first (or choose another --name)") from None
                try:  # stale lock of a dead process: move it aside (only one taker succeeds)
                    stale = self.lock_path.with_name(f"lock.stale.{os.getpid()}")
                    os.rename(self.lock_path, stale)
                    stale.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self._locked = True
            return
        raise RunLockedError(f"could not take the lock of {self.path}; another process keeps taking it")

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the half-written checkpoints and sample grids (`.NAME.tmp`) of a process killed while
        writing them; each may be nearly a checkpoint's size. Only the lock holder calls this, and only
        the lock holder writes those folders, so every such file is stale."""
        if not self._locked:
            raise RunLockedError(f"take the lock of {self.path} before cleaning it")
        stale = [p for folder in (self.checkpoint_path.parent, self.samples_dir) if folder.is_dir()
                 for p in folder.glob(".*.tmp")]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def unlock(self) -> None:
        if not self._locked:
            return
        try:
            if self.lock_path.read_text().strip() == str(os.getpid()):
                self.lock_path.unlink()
        except OSError:
            pass
        self._locked = False

    # ---- state.json and metrics.jsonl ------------------------------------------------------------
    def read_state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def write_state(self, **fields) -> dict:
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {fields['status']!r}")
        state = {**self.read_state(), **fields, "updated_at": time.time()}
        write_json_atomic(self.state_path, state)
        return state

    def run_id(self, new: bool = False) -> str:
        """The run's identity, kept across resumes (an exported model file records it, so that an
        export replaces only a file of the same run). new=True: a fresh run, a fresh id; a run from
        before ids existed gets one the first time it is asked."""
        run_id = None if new else self.read_state().get("run_id")
        if not run_id:
            run_id = uuid.uuid4().hex
            self.write_state(run_id=run_id)
        return run_id

    def log_metrics(self, metrics: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass                                 # a line cut short by a kill
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Drop the lines logged after `step` (a resume restarts from the checkpoint's step)."""
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        tmp = self.metrics_path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.metrics_path)

    # ---- sample grids ------------------------------------------------------------------------------
    def save_grid(self, images: torch.Tensor, step: int, raw: bool = False, nrow: int = 8) -> Path:
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        path = self.samples_dir / f"step_{step:07d}{'_raw' if raw else ''}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        image_grid(images, nrow).save(tmp, format="PNG")
        os.replace(tmp, path)
        return path
