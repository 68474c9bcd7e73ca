"""Background training runs: start, list, watch, stop and resume them (the app's Train tab).

A run is a folder `runs/NAME/` written by one `python -m core.train STAGE --config ...` process
(layout in shared contracts: config.yaml, state.json, metrics.jsonl, samples/, checkpoints/,
train.log, lock). Everything the manager knows it reads from that folder, so a manager created
after the app restarts sees the same runs; it holds no state of its own beyond the process
handles of the runs it started (kept only to reap them).

    runs = RunManager("runs")
    info = runs.start(config, name="shapes-ae")     # -> RunInfo(status="running", pid=...)
    runs.status("shapes-ae").step, runs.metrics("shapes-ae")[-1]["loss"]
    runs.stop("shapes-ae"); runs.resume("shapes-ae")

Process model: the trainer is started with `subprocess.Popen(start_new_session=True)`, its stdout and
stderr appended to train.log, so it keeps running when the app exits or gets Ctrl-C. `stop` sends
SIGTERM to the trainer's pid only (the contract: it saves a checkpoint, writes status "stopped" and
exits 0); not to its process group, since data-loader workers killed first would break that save.
A thread waits on each trainer the manager started, so an ended one is reaped at once (no zombie).

Sharing the machine with generation: at most `max_running` runs at a time (the app's
--max-training-runs), and the trainer runs under `nice -n TRAIN_NICE` with TRAIN_THREADS torch
threads (OMP_NUM_THREADS), so that an interactive generation keeps the CPU it needs
(bench/train_contention.py measured the choice).

What `status` reports beyond state.json: a run whose state says "running" but whose process is gone
is "failed" (or "stopped" if a stop was asked for), and that verdict is written back to state.json;
while a stop is pending it is "stopping". A folder with a config.yaml and no state yet is "created".
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.train.config import STAGES, RunConfig, config_dict, require_stage, stage_of
from core.train.run_folder import RunLockedError, pid_alive, write_json_atomic

__all__ = ["RunManager", "RunInfo", "RunLockedError", "STAGES", "check_name", "stage_of", "pid_alive"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")   # no "..", no "/", no leading dot
STOP_MARKER = "stop_requested"      # written by stop(): tells a later reader the exit was asked for
PROJECT_ROOT = Path(__file__).resolve().parents[2]               # the folder holding `core/`
LOG_TAIL_BYTES = 8192
ACTIVE = ("running", "stopping")     # statuses of a run whose trainer still runs
TRAIN_NICE = 10                      # niceness of a trainer (0 = the app's own priority)
TRAIN_THREADS = 1                    # torch threads of a trainer (0 = torch's default: one per core)


@dataclass(frozen=True)
class RunInfo:
    name: str
    stage: str | None
    status: str                   # running | stopping | finished | failed | stopped | created
    pid: int | None
    step: int                     # optimizer steps done
    total_steps: int | None
    loss: float | None            # from the last metrics line
    lr: float | None
    images_per_s: float | None
    eta_s: float | None
    started_at: float | None      # unix time
    updated_at: float | None
    error: str | None             # state.json's error, or the last line of train.log for a crash
    latest_sample: str | None     # samples/step_XXXXXXX.png (EMA) with the highest step
    latest_sample_raw: str | None  # ... and its non-EMA twin
    folder: str
    run_id: str | None = None     # kept across resumes; exported model files record it

    @property
    def progress(self) -> float:
        """Fraction of total_steps done, 0..1 (0 when the total is unknown)."""
        return min(self.step / self.total_steps, 1.0) if self.total_steps else 0.0


def check_name(name: str) -> str:
    """A run name is a folder name: letters, digits, '.', '_' and '-', not starting with '.'."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"run name {name!r} is not allowed: use 1-100 letters, digits, '.', '_' or "
                         f"'-', starting with a letter or digit (it becomes a folder name)")
    return name


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _float(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class RunManager:
    """Runs under `runs_dir`. `command` is how a trainer is started (default
    `[sys.executable, "-m", "core.train"]`, followed by STAGE --config ... --name ... --runs-dir
    ... [--resume]); tests give a fake trainer script here."""

    def __init__(self, runs_dir: str | Path = "runs", command: list[str] | None = None, max_running: int = 1,
                 nice: int = TRAIN_NICE, threads: int = TRAIN_THREADS):
        if max_running < 1:
            raise ValueError(f"max_running must be at least 1, got {max_running}")
        self.runs_dir = Path(runs_dir).resolve()
        self.command = list(command) if command else [sys.executable, "-m", "core.train"]
        self.max_running, self.nice, self.threads = max_running, nice, threads
        self._children: dict[int, subprocess.Popen] = {}      # pid -> handle, to reap our own
        self._starting = threading.Lock()                     # one start at a time: the cap holds

    # ---- paths and files ----------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        return self.runs_dir / check_name(name)

    def _state(self, name: str) -> dict:
        return _read_json(self.folder(name) / "state.json")

    def _alive(self, pid) -> bool:
        """Whether `pid` runs (a zombie does not); our own children are reaped on the way."""
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return False
        child = self._children.get(pid)
        if child is not None:
            if child.poll() is None:                            # reaps it when it has exited
                return True
            del self._children[pid]
            return False
        return pid_alive(pid)

    def _lock_pid(self, name: str) -> int | None:
        try:
            return int((self.folder(name) / "lock").read_text().strip())
        except (OSError, ValueError):
            return None

    def _refuse_if_live(self, name: str) -> None:
        """Two processes never write one folder: refuse while the lock's pid (or the pid of a
        state that says running) is alive."""
        state = self._state(name)
        pids = [self._lock_pid(name)] + ([state.get("pid")] if state.get("status") == "running" else [])
        for pid in pids:
            if self._alive(pid):
                raise RunLockedError(
                    f"run {name!r} is being written by process {pid} (see {self.folder(name) / 'lock'}); "
                    f"stop it first, or start the new run under another name")

    # ---- start / resume / stop ----------------------------------------------------------------
    def start(self, config: dict | str | Path, name: str | None = None, resume: bool = False,
              stage: str | None = None, max_steps: int | None = None) -> RunInfo:
        """Write runs/NAME/config.yaml and launch the trainer in the background.

        config: the training config (a core.train.RunConfig, a dict, or a .yaml/.json file in either of
        core.train.config's formats). stage: "autoencoder" or "ldm"; by default what the model's
        capabilities say, as the trainer does. name: by default the config's export.name, else
        STAGE-YYYYmmdd-HHMMSS.
        A fresh start refuses a folder that already holds a run (resume it, or pick another name);
        resume=True continues it from its last checkpoint. max_steps: stop (resumably) there.
        """
        if isinstance(config, RunConfig):
            stage, cfg = require_stage(config, stage).stage, config_dict(config)
        else:
            cfg = self._load_config(config)
            stage = stage or stage_of(cfg)
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if name is None:
            export = cfg.get("export") if isinstance(cfg.get("export"), dict) else {}
            name = export.get("name") or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
        check_name(name)
        folder = self.folder(name)
        with self._starting:
            self._refuse_if_live(name)
            self._refuse_over_cap()
            if not resume and ((folder / "state.json").exists() or (folder / "checkpoints").exists()):
                raise ValueError(f"run {name!r} already exists in {folder}; resume it, or start the new "
                                 f"run under another name")
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / ".config.yaml.tmp"
            tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
            os.replace(tmp, folder / "config.yaml")
            return self._launch(name, stage, resume, max_steps)

    def resume(self, name: str, max_steps: int | None = None) -> RunInfo:
        """Continue a stopped or failed run from its last checkpoint, with its own config.yaml."""
        folder = self.folder(name)
        if not (folder / "config.yaml").is_file():
            raise ValueError(f"there is no run {name!r} to resume (no {folder / 'config.yaml'})")
        stage = self._state(name).get("stage") or stage_of(self._load_config(folder / "config.yaml"))
        with self._starting:
            self._refuse_if_live(name)
            self._refuse_over_cap()
            return self._launch(name, stage, resume=True, max_steps=max_steps)

    def active(self) -> list[RunInfo]:
        """The runs whose trainer still runs (running or stopping), newest first."""
        return [r for r in self.list() if r.status in ACTIVE]

    def _refuse_over_cap(self) -> None:
        """A run being stopped does not count: the user asked it to end, and it does so after one save."""
        active = [r for r in self.active() if r.status == "running"]
        if len(active) >= self.max_running:
            names = ", ".join(r.name for r in active)
            raise ValueError(f"{len(active)} training run{'s' if len(active) > 1 else ''} already running ({names}); "
                             f"this app trains at most {self.max_running} at a time (--max-training-runs). "
                             f"Stop {active[0].name} or wait for it to finish, then start again.")

    def _launch(self, name: str, stage: str, resume: bool, max_steps: int | None = None) -> RunInfo:
        folder = self.folder(name)
        (folder / STOP_MARKER).unlink(missing_ok=True)
        cmd = [*self.command, stage, "--config", str(folder / "config.yaml"), "--name", name,
               "--runs-dir", str(self.runs_dir)] + (["--resume"] if resume else []) \
            + (["--max-steps", str(int(max_steps))] if max_steps is not None else [])
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)          # torch's intra-op threads
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]          # execs the trainer: the pid stays its own
        with open(folder / "train.log", "ab") as log:
            threads = f"OMP_NUM_THREADS={self.threads} " if self.threads else ""
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {threads}{' '.join(cmd)}\n".encode())
            log.flush()
            child = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._children[child.pid] = child
        threading.Thread(target=child.wait, name=f"reap-{name}", daemon=True).start()   # no zombie when it ends
        # The trainer rewrites state.json when it starts; until then the folder says who runs it.
        now = time.time()
        previous = self._state(name) if resume else {}
        state = {"step": 0, "total_steps": None, "images_per_s": None, "eta_s": None, **previous,
                 "name": name, "stage": stage, "status": "running", "pid": child.pid,
                 "started_at": now, "updated_at": now, "error": None}
        if self._state(name).get("pid") != child.pid:   # not yet written by the trainer itself
            write_json_atomic(folder / "state.json", state)
        return self.status(name)

    def stop(self, name: str, timeout: float = 10.0, force: bool = False) -> RunInfo:
        """SIGTERM the run's trainer and wait up to `timeout` s for it to exit (it saves first).
        Still alive after that: SIGKILL with force=True, else the run reports "stopping"."""
        pid = self._state(name).get("pid")
        if not self._alive(pid):
            return self.status(name)
        (self.folder(name) / STOP_MARKER).write_text(str(time.time()))
        os.kill(pid, signal.SIGTERM)
        if not self._wait(pid, timeout) and force:
            os.kill(pid, signal.SIGKILL)
            self._wait(pid, 5.0)
        return self.status(name)

    def _wait(self, pid: int, timeout: float) -> bool:
        child = self._children.get(pid)
        if child is not None:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # ---- reading ------------------------------------------------------------------------------
    def status(self, name: str) -> RunInfo:
        folder = self.folder(name)
        if not folder.is_dir():
            raise ValueError(f"there is no run {name!r} in {self.runs_dir}")
        state = self._state(name)
        status = state.get("status") or ("created" if (folder / "config.yaml").exists() else "unknown")
        error = state.get("error")
        stop_asked = (folder / STOP_MARKER).exists()
        if status == "running":
            if self._alive(state.get("pid")):
                status = "stopping" if stop_asked else "running"
            else:
                status, error = self._reconcile(name, stop_asked)
                state = self._state(name)
        if status == "failed" and not error:
            error = self._last_log_line(name)
        last = self._last_metrics(name)
        ema, raw = self._latest_samples(folder)
        return RunInfo(
            name=name, stage=state.get("stage"), status=status, pid=state.get("pid"),
            step=int(state.get("step") or last.get("step") or 0), total_steps=state.get("total_steps"),
            loss=_float(last.get("loss")), lr=_float(last.get("lr")),
            images_per_s=_float(state.get("images_per_s", last.get("images_per_s"))),
            eta_s=_float(state.get("eta_s")) if status in ("running", "stopping") else None,
            started_at=_float(state.get("started_at")), updated_at=_float(state.get("updated_at")),
            error=error, latest_sample=ema, latest_sample_raw=raw, folder=str(folder), run_id=state.get("run_id"))

    def _reconcile(self, name: str, stop_asked: bool) -> tuple[str, str | None]:
        """The trainer is gone but state.json says running: record how it ended."""
        state = self._state(name)                   # read again: it may have just finished
        if state.get("status") != "running":
            return state.get("status"), state.get("error")
        if stop_asked:
            status, error = "stopped", None
        else:
            status = "failed"
            error = (f"the training process (pid {state.get('pid')}) ended without reporting; "
                     f"last log line: {self._last_log_line(name) or '(empty)'}")
        write_json_atomic(self.folder(name) / "state.json",
                           {**state, "status": status, "error": error, "updated_at": time.time()})
        return status, error

    def list(self) -> list[RunInfo]:
        """Every run under runs_dir (folders with a state.json or config.yaml), newest first."""
        if not self.runs_dir.is_dir():
            return []
        runs = [self.status(p.name) for p in self.runs_dir.iterdir()
                if p.is_dir() and NAME_PATTERN.fullmatch(p.name)
                and ((p / "state.json").exists() or (p / "config.yaml").exists())]
        return sorted(runs, key=lambda r: (r.started_at or 0.0, r.name), reverse=True)

    def metrics(self, name: str) -> list[dict]:
        """metrics.jsonl as a list of dicts; a half-written last line (no newline yet) and lines
        that are not JSON objects are skipped."""
        try:
            data = (self.folder(name) / "metrics.jsonl").read_bytes()
        except FileNotFoundError:
            return []
        return _parse_jsonl(data)

    def log(self, name: str, max_bytes: int = LOG_TAIL_BYTES) -> str:
        """The end of train.log."""
        try:
            with open(self.folder(name) / "train.log", "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _last_log_line(self, name: str) -> str | None:
        lines = [line for line in self.log(name).splitlines() if line.strip()]
        return lines[-1].strip() if lines else None

    def _last_metrics(self, name: str) -> dict:
        try:
            with open(self.folder(name) / "metrics.jsonl", "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
                rows = _parse_jsonl(f.read())
        except FileNotFoundError:
            return {}
        return rows[-1] if rows else {}

    @staticmethod
    def _latest_samples(folder: Path) -> tuple[str | None, str | None]:
        grids = sorted((folder / "samples").glob("step_*.png"))
        ema = [p for p in grids if not p.stem.endswith("_raw")]
        if not ema:
            return None, None
        raw = ema[-1].with_name(ema[-1].stem + "_raw.png")
        return str(ema[-1]), str(raw) if raw.exists() else None

    @staticmethod
    def _load_config(config) -> dict:
        if isinstance(config, dict):
            return dict(config)
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} does not hold a mapping of settings")
        return data


def _parse_jsonl(data: bytes) -> list[dict]:
    lines = data.split(b"\n")
    lines = lines[:-1]           # the part after the last newline is empty or still being written
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
