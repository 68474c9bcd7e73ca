"""The run manager (core/train/runs.py) against a fake trainer that follows the run-folder contract
(state.json, metrics.jsonl, samples/, lock, SIGTERM -> save, "stopped", exit 0), plus one real
tiny run through `python -m core.train` once that CLI exists; and the dataset check, the safe zip
extractor and the data-path guard (core/train/dataset_check.py)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from PIL import Image

from core.train.dataset_check import (UnsafeArchiveError, check_dataset, extract_zip,
                                      resolve_data_path)
from core.train.runs import RunInfo, RunLockedError, RunManager, check_name, pid_alive

FAKE_TRAINER = textwrap.dedent('''
    """A stand-in for `python -m core.train` that writes a run folder by the contract."""
    import argparse, json, os, signal, sys, time
    from pathlib import Path

    p = argparse.ArgumentParser()
    p.add_argument("stage"); p.add_argument("--config", required=True); p.add_argument("--resume", action="store_true")
    p.add_argument("--name"); p.add_argument("--runs-dir", default="runs"); p.add_argument("--max-steps", type=int)
    a = p.parse_args()
    import yaml
    cfg = yaml.safe_load(Path(a.config).read_text())
    folder = Path(a.runs_dir) / a.name
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints").mkdir(exist_ok=True)
    (folder / "lock").write_text(str(os.getpid()))
    ckpt = folder / "checkpoints" / "last.json"
    step = json.loads(ckpt.read_text())["step"] if a.resume and ckpt.exists() else 0
    total, started = cfg["steps"], time.time()

    def write_state(status, error=None):
        state = {"name": a.name, "stage": a.stage, "status": status, "pid": os.getpid(), "step": step,
                 "total_steps": total, "started_at": started, "updated_at": time.time(), "error": error,
                 "images_per_s": 100.0, "eta_s": (total - step) * cfg["step_time"]}
        tmp = folder / "state.json.tmp"; tmp.write_text(json.dumps(state)); os.replace(tmp, folder / "state.json")

    def save():
        tmp = folder / "checkpoints" / "last.tmp"; tmp.write_text(json.dumps({"step": step})); os.replace(tmp, ckpt)

    def on_term(signum, frame):
        save(); write_state("stopped"); (folder / "lock").unlink(); sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    write_state("running")
    print("fake trainer", a.stage, "resume" if a.resume else "fresh", "from step", step, flush=True)
    while step < total:
        time.sleep(cfg["step_time"])
        step += 1
        if step == cfg.get("fail_at"):
            print("Traceback (most recent call last):\\nValueError: the fake loss is nan", flush=True)
            write_state("failed", "ValueError: the fake loss is nan"); sys.exit(1)
        with open(folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": 1.0 / step, "lr": 1e-4, "images_per_s": 100.0,
                                "time": time.time()}) + "\\n")
        (folder / "samples" / f"step_{step:07d}.png").write_bytes(b"png")
        (folder / "samples" / f"step_{step:07d}_raw.png").write_bytes(b"png")
        write_state("running")
    save(); write_state("finished"); (folder / "lock").unlink()
''')


@pytest.fixture
def manager(tmp_path):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    runs = RunManager(tmp_path / "runs", command=[sys.executable, str(script)])
    yield runs
    for child in list(runs._children.values()):          # never leave a trainer behind
        if child.poll() is None:
            child.kill()
            child.wait()


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


# ---------------------------------------------------------------- run manager


def test_start_metrics_stop_resume_and_a_restarted_manager(manager, tmp_path):
    info = manager.start({"steps": 1000, "step_time": 0.01}, name="run-1", stage="ldm")
    assert isinstance(info, RunInfo) and info.status == "running" and pid_alive(info.pid)
    assert Path(info.folder, "config.yaml").is_file()
    rows = _wait_for(lambda: len(manager.metrics("run-1")) >= 3 and manager.metrics("run-1"))
    assert [r["step"] for r in rows[:3]] == [1, 2, 3] and rows[1]["loss"] == 0.5
    # state.json is written just after the metrics row, so the status may lag one step behind it.
    info = _wait_for(lambda: (i := manager.status("run-1")).step >= 3 and i)
    assert info.total_steps == 1000 and info.images_per_s == 100.0
    assert info.loss in {r["loss"] for r in manager.metrics("run-1")} and info.loss <= 1.0 / 3
    assert info.latest_sample.endswith(".png") and info.latest_sample_raw.endswith("_raw.png")
    assert 0 < info.progress < 1 and info.eta_s > 0

    stopped = manager.stop("run-1")
    assert stopped.status == "stopped" and not pid_alive(info.pid) and stopped.eta_s is None
    step_at_stop = stopped.step
    assert json.loads((tmp_path / "runs/run-1/checkpoints/last.json").read_text())["step"] == step_at_stop

    # The app restarts: a new manager on the same folder sees the same run and state.
    again = RunManager(tmp_path / "runs", command=manager.command)
    assert [(r.name, r.status, r.step) for r in again.list()] == [("run-1", "stopped", step_at_stop)]

    resumed = again.resume("run-1")
    try:
        assert resumed.status == "running" and resumed.pid != info.pid
        _wait_for(lambda: again.status("run-1").step > step_at_stop)
        assert "resume from step %d" % step_at_stop in again.log("run-1")
    finally:
        assert again.stop("run-1").status == "stopped"


def test_a_run_that_ends_without_reporting_is_failed_and_stays_failed(manager, tmp_path):
    info = manager.start({"steps": 1000, "step_time": 0.01}, name="killed", stage="autoencoder")
    _wait_for(lambda: manager.metrics("killed"))
    os.kill(info.pid, signal.SIGKILL)                   # no chance to write its state
    status = _wait_for(lambda: manager.status("killed").status != "running" and manager.status("killed"))
    assert status.status == "failed" and f"pid {info.pid}" in status.error
    # The verdict is on disk: a fresh manager (which never knew the process) reads it back.
    assert json.loads((tmp_path / "runs/killed/state.json").read_text())["status"] == "failed"
    assert RunManager(tmp_path / "runs").status("killed").status == "failed"


def test_dead_pid_in_state_from_an_earlier_session_is_failed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "runs" / "old"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"name": "old", "stage": "ldm", "status": "running",
                                                    "pid": dead.pid, "step": 7, "total_steps": 10}))
    (folder / "train.log").write_text("step 7\nRuntimeError: CUDA out of memory\n")
    info = RunManager(tmp_path / "runs").status("old")
    assert (info.status, info.step) == ("failed", 7) and "CUDA out of memory" in info.error
    # A stop that was asked for before the process vanished reads as stopped instead.
    (folder / "state.json").write_text(json.dumps({"name": "old", "stage": "ldm", "status": "running",
                                                    "pid": dead.pid, "step": 7}))
    (folder / "stop_requested").write_text("1")
    assert RunManager(tmp_path / "runs").status("old").status == "stopped"


def test_trainer_reported_failure_and_finish(manager):
    manager.start({"steps": 100, "step_time": 0.005, "fail_at": 3}, name="nan", stage="ldm")
    failed = _wait_for(lambda: manager.status("nan").status == "failed" and manager.status("nan"))
    assert failed.error == "ValueError: the fake loss is nan" and failed.step == 3
    manager.start({"steps": 3, "step_time": 0.005}, name="short", stage="ldm")
    done = _wait_for(lambda: manager.status("short").status == "finished" and manager.status("short"))
    assert (done.step, done.total_steps, done.progress, done.eta_s) == (3, 3, 1.0, None)
    assert [r["step"] for r in manager.metrics("short")] == [1, 2, 3]


def test_second_start_into_a_locked_folder_is_refused(manager, tmp_path):
    info = manager.start({"steps": 1000, "step_time": 0.01}, name="busy", stage="ldm")
    _wait_for(lambda: (tmp_path / "runs/busy/lock").exists())
    with pytest.raises(RunLockedError, match=f"process {info.pid}"):
        manager.start({"steps": 5, "step_time": 0.01}, name="busy", resume=True, stage="ldm")
    with pytest.raises(RunLockedError):
        RunManager(tmp_path / "runs", command=manager.command).resume("busy")
    manager.stop("busy")
    # A finished/stopped run is not restarted fresh by accident either.
    with pytest.raises(ValueError, match="already exists"):
        manager.start({"steps": 5, "step_time": 0.01}, name="busy", stage="ldm")


def test_one_run_at_a_time_unless_allowed_more(manager, tmp_path):
    """Two trainers on two cores make generation crawl: a second start (or resume) is refused while
    max_running runs are active, with a message naming the run and the flag."""
    manager.start({"steps": 1000, "step_time": 0.01}, name="first", stage="ldm")
    message = r"1 training run already running \(first\); this app trains at most 1 at a time " \
              r"\(--max-training-runs\)\. Stop first or wait"
    with pytest.raises(ValueError, match=message):
        manager.start({"steps": 1000, "step_time": 0.01}, name="second", stage="ldm")
    assert not (tmp_path / "runs/second").exists()
    manager.stop("first")
    manager.start({"steps": 1000, "step_time": 0.01}, name="second", stage="ldm")
    with pytest.raises(ValueError, match=r"already running \(second\)"):
        manager.resume("first")                                                # a resume is a start too
    assert [r.name for r in manager.active()] == ["second"]

    two = RunManager(tmp_path / "runs", command=manager.command, max_running=2)
    two.resume("first")
    assert sorted(r.name for r in two.active()) == ["first", "second"]
    with pytest.raises(ValueError, match=r"2 training runs already running \((first, second|second, first)\)"):
        two.start({"steps": 1000, "step_time": 0.01}, name="third", stage="ldm")
    for name in ("first", "second"):
        two.stop(name)
    with pytest.raises(ValueError, match="at least 1"):
        RunManager(tmp_path / "runs", max_running=0)


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state is [0], niceness [16]); None once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def test_trainers_run_niced_with_one_thread(manager):
    """bench/train_contention.py: a trainer at niceness 10 with one torch thread keeps generation near
    its idle speed; the manager starts every trainer so (the pid is the trainer's own, nice execs it)."""
    info = manager.start({"steps": 1000, "step_time": 0.01}, name="polite", stage="ldm")
    _wait_for(lambda: manager.metrics("polite"))
    assert int(_proc_stat(info.pid)[16]) == 10
    environ = Path(f"/proc/{info.pid}/environ").read_bytes().split(b"\0")
    assert b"OMP_NUM_THREADS=1" in environ
    assert "OMP_NUM_THREADS=1 nice -n 10 " in manager.log("polite")
    manager.stop("polite")


def test_an_ended_trainer_is_reaped_without_being_asked(manager, tmp_path):
    """No zombie: nobody calls status() after the start, yet the finished trainer's pid disappears."""
    info = manager.start({"steps": 3, "step_time": 0.01}, name="quick", stage="ldm")
    state = tmp_path / "runs/quick/state.json"
    _wait_for(lambda: json.loads(state.read_text()).get("status") == "finished")
    _wait_for(lambda: _proc_stat(info.pid) is None, timeout=5.0)           # a zombie stays, state "Z"


def test_lock_held_by_a_live_foreign_process_is_refused(tmp_path):
    folder = tmp_path / "runs" / "other"
    folder.mkdir(parents=True)
    (folder / "lock").write_text(str(os.getpid()))      # this test process: alive
    with pytest.raises(RunLockedError, match=str(os.getpid())):
        RunManager(tmp_path / "runs").start({}, name="other", stage="ldm")


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden", "", "a b", "x" * 101, "é", "a\x00"])
def test_bad_names_are_refused(tmp_path, name):
    runs = RunManager(tmp_path / "runs")
    with pytest.raises(ValueError, match="not allowed"):
        runs.start({}, name=name, stage="ldm")
    with pytest.raises(ValueError, match="not allowed"):
        runs.status(name)
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


def test_good_names_bad_stage_and_missing_runs(tmp_path):
    for name in ("shapes-ae", "run_2.v1", "A"):
        assert check_name(name) == name
    runs = RunManager(tmp_path / "runs")
    with pytest.raises(ValueError, match="stage"):
        runs.start({}, name="x", stage="gan")
    with pytest.raises(ValueError, match="model.target"):
        runs.start({"steps": 3}, name="x")
    with pytest.raises(ValueError, match="no run"):
        runs.resume("never")
    assert runs.list() == []


def test_metrics_tolerate_a_half_written_last_line(tmp_path):
    folder = tmp_path / "runs" / "m"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("stage: ldm\n")
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "lo')
    runs = RunManager(tmp_path / "runs")
    assert runs.metrics("m") == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    info = runs.status("m")
    assert (info.status, info.loss, info.step) == ("created", 0.25, 2)
    assert [r.name for r in runs.list()] == ["m"]


def test_start_from_a_config_file_and_the_command_line_given(manager, tmp_path):
    from core.train.config import config_dict, make_config
    model = config_dict(make_config("autoencoder", model_size="tiny"))["model"]     # the stage: its capabilities
    cfg = tmp_path / "my.yaml"
    cfg.write_text(yaml.safe_dump({"model": model, "export": {"name": "from-file"}, "steps": 2, "step_time": 0.001}))
    info = manager.start(cfg)
    assert info.name == "from-file" and info.stage == "autoencoder"
    _wait_for(lambda: manager.status("from-file").status == "finished")
    header = manager.log("from-file").splitlines()[1]
    assert header.endswith(f"autoencoder --config {tmp_path}/runs/from-file/config.yaml --name from-file "
                           f"--runs-dir {tmp_path}/runs")


def test_real_trainer_tiny_run_stop_and_resume(tmp_path):
    """A 2-step autoencoder run through the real `python -m core.train` CLI, stopped after step 1
    (--max-steps), resumed and finished, watched by the manager. Slower than the rest (two fresh
    Python processes import torch): about 10 s on an idle 2-core machine."""
    from core.train.config import make_config
    cfg = make_config("autoencoder", "shapes", "tiny", steps=2, batch_size=2, image_size=32, name="real-tiny",
                      log_every=1, sample_every=1, ckpt_every=1, n_samples=2, precision="fp32")
    cfg = replace(cfg, data=replace(cfg.data, photo_fraction=0.0))
    runs = RunManager(tmp_path / "runs")
    info = runs.start(cfg, max_steps=1)                    # stage and name come from the config
    assert (info.name, info.stage) == ("real-tiny", "autoencoder")
    first = _wait_for(lambda: runs.status("real-tiny").status not in ("running", "stopping")
                      and runs.status("real-tiny"), timeout=120)
    assert (first.status, first.step) == ("stopped", 1), runs.log("real-tiny")
    _wait_for(lambda: not (tmp_path / "runs/real-tiny/lock").exists())
    runs.resume("real-tiny")
    done = _wait_for(lambda: runs.status("real-tiny").status not in ("running", "stopping")
                     and runs.status("real-tiny"), timeout=120)
    assert done.status == "finished", runs.log("real-tiny")
    assert [r["step"] for r in runs.metrics("real-tiny")] == [1, 2]
    assert done.loss == runs.metrics("real-tiny")[-1]["loss"] and done.latest_sample.endswith("step_0000002.png")
    _wait_for(lambda: not (tmp_path / "runs/real-tiny/lock").exists())      # the process unlocks, then exits
    assert not pid_alive(info.pid)


# ---------------------------------------------------------------- dataset check


def _png(path, size, mode="RGB", colour=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode != "RGB" else (colour, 0, 0)).save(path)


def test_check_dataset_counts_captions_sizes_and_bad_files(tmp_path):
    root = tmp_path / "data"
    _png(root / "a.png", (64, 64))
    (root / "a.txt").write_text("a red circle\n")
    _png(root / "sub" / "b.png", (300, 200))
    _png(root / "c.png", (20, 40), mode="L")
    _png(root / "d.png", (128, 128), mode="RGBA")
    (root / "e.txt").write_text("")                          # a caption without an image: ignored
    (root / "captions.jsonl").write_text('{"file": "sub/b.png", "caption": "a blue star"}\n'
                                          '{"file_name": "d.png", "text": ""}\nnot json\n')
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    good = root / "trunc.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, quality=95)
    good.write_bytes(good.read_bytes()[:200])                 # header fine, data cut off
    _png(root / ".hidden" / "x.png", (64, 64))                # hidden folders are skipped
    r = check_dataset(root, 64)
    assert (r["files"], r["count"], r["unreadable_count"]) == (6, 4, 2)
    assert sorted(u["path"] for u in r["unreadable"]) == ["broken.png", "trunc.jpg"]
    assert r["captions"]["with_caption"] == 2 and r["captions"]["coverage"] == 0.5
    assert (r["captions"]["from_txt"], r["captions"]["from_jsonl"], r["captions"]["empty"]) == (1, 2, 1)
    assert r["captions"]["missing"] == ["c.png"]
    assert r["size_histogram"] == {"0-31": 1, "64-127": 1, "128-255": 2}   # 64, 20x40, 128, 300x200
    assert r["smallest"] == {"path": "c.png", "width": 20, "height": 40}
    assert r["largest"] == {"path": "sub/b.png", "width": 300, "height": 200}
    assert r["too_small"] == 1 and r["grayscale_share"] == 0.25 and r["alpha_share"] == 0.25
    text = " | ".join(r["warnings"])
    for part in ("captions.jsonl line 3", "2 file(s) cannot be read", "smaller than 64 px",
                 "2 of 4 images have no caption", "grayscale", "transparency"):
        assert part in text
    json.dumps(r)                                             # plain values for the UI


def test_check_dataset_empty_and_bad_arguments(tmp_path):
    assert check_dataset(tmp_path, 64)["warnings"] == [
        "no images found (looked for .png, .jpg, .jpeg, .webp, .bmp, .gif, .tif, .tiff files)"]
    with pytest.raises(ValueError, match="not a folder"):
        check_dataset(tmp_path / "nope", 64)
    with pytest.raises(ValueError, match="size"):
        check_dataset(tmp_path, 0)


def test_resolve_data_path_stays_inside_the_root(tmp_path):
    root = tmp_path / "data"
    (root / "set").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "link").symlink_to(tmp_path / "secret")
    assert resolve_data_path(root, "set") == (root / "set").resolve()
    assert resolve_data_path(root, str(root / "set")) == (root / "set").resolve()
    assert resolve_data_path(root, "new", must_exist=False) == (root / "new").resolve()
    for bad in ("../secret", "/etc", "set/../../secret", "link", str(tmp_path)):
        with pytest.raises(ValueError, match="outside the data folder"):
            resolve_data_path(root, bad)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_data_path(root, "missing")


# ---------------------------------------------------------------- zip extraction


def _zip(path, members: dict, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            if isinstance(data, zipfile.ZipInfo):
                z.writestr(data, b"target")
            else:
                z.writestr(name, data)
    return path


def test_extract_zip_writes_the_files(tmp_path):
    png = tmp_path / "p.png"
    _png(png, (8, 8))
    z = _zip(tmp_path / "ok.zip", {"imgs/a.png": png.read_bytes(), "imgs/a.txt": "a red circle",
                                   "__MACOSX/imgs/._a.png": b"junk", "imgs/": b""})
    out = extract_zip(z, tmp_path / "dest")
    assert (out["files"], out["bytes"]) == (2, len(png.read_bytes()) + 12)
    assert (tmp_path / "dest/imgs/a.txt").read_text() == "a red circle"
    assert sorted(p.name for p in (tmp_path / "dest").rglob("*")) == ["a.png", "a.txt", "imgs"]
    with pytest.raises(ValueError, match="not an empty folder"):
        extract_zip(z, tmp_path / "dest")


@pytest.mark.parametrize("name,match", [
    ("../evil.txt", r"outside the folder"), ("a/../../evil.txt", r"outside the folder"),
    ("/etc/evil", "absolute"), ("C:\\evil.txt", "absolute"), ("..\\evil.txt", "outside the folder")])
def test_extract_zip_refuses_traversal(tmp_path, name, match):
    z = _zip(tmp_path / "evil.zip", {"fine.txt": "ok", name: "pwned"})
    with pytest.raises(UnsafeArchiveError, match=match):
        extract_zip(z, tmp_path / "sub" / "dest")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "sub" / "dest").exists()
    assert not (tmp_path / "sub").exists()                   # checked before anything is written


def test_extract_zip_refuses_symlinks_counts_and_sizes(tmp_path):
    link = zipfile.ZipInfo("link")
    link.create_system = 3
    link.external_attr = (0o120777 << 16)                     # S_IFLNK | 0777
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        extract_zip(_zip(tmp_path / "l.zip", {"link": link}), tmp_path / "d1")
    many = _zip(tmp_path / "many.zip", {f"f{i}.txt": "x" for i in range(11)})
    with pytest.raises(UnsafeArchiveError, match="more than 10 files"):
        extract_zip(many, tmp_path / "d2", max_files=10)
    assert extract_zip(many, tmp_path / "d3", max_files=11)["files"] == 11
    big = _zip(tmp_path / "big.zip", {"a.bin": os.urandom(3000), "b.bin": os.urandom(3000)})
    with pytest.raises(UnsafeArchiveError, match="unpacks to more than"):
        extract_zip(big, tmp_path / "d4", max_bytes=5000)
    with pytest.raises(UnsafeArchiveError, match="not a readable zip"):
        (tmp_path / "x.zip").write_bytes(b"not a zip")
        extract_zip(tmp_path / "x.zip", tmp_path / "d5")


def test_extract_zip_refuses_bombs(tmp_path):
    # 4 MiB of zeros deflate to ~4 KiB: a ratio near 1000.
    bomb = _zip(tmp_path / "bomb.zip", {"zeros.bin": b"\0" * (4 << 20)})
    info = zipfile.ZipFile(bomb).infolist()[0]
    assert info.file_size / info.compress_size > 500
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        extract_zip(bomb, tmp_path / "d")
    assert not (tmp_path / "d").exists()
    # A lying header: declares 100 bytes (passes the ratio check) but inflates to 4 MiB. zipfile
    # reads only the declared bytes and then fails the CRC; extract_zip's own byte count is the
    # second guard. Either way: refused, nothing left behind.
    data = bytearray(bomb.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature)
        data[at + offset:at + offset + 4] = (100).to_bytes(4, "little")
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(data))
    assert zipfile.ZipFile(liar).infolist()[0].file_size == 100
    with pytest.raises(UnsafeArchiveError, match="corrupt|zip bomb"):
        extract_zip(liar, tmp_path / "d")
    assert not (tmp_path / "d").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
