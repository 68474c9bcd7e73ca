"""The training command line in real subprocesses: SIGTERM stops cleanly, SIGKILL loses at most the
steps since the last checkpoint and resume continues exactly; `torchrun` with 2 gloo processes."""
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core import save_model
from core.models.autoencoder import build_autoencoder
from core.train import RunConfig, RunFolder, dump_config, make_config, train
from core.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)                    # as the subprocesses (OMP_NUM_THREADS=1): same numbers
    yield
    torch.set_num_threads(before)


def cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core.train", *map(str, args)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early (status {proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def checkpoint_step(run: RunFolder) -> int:
    try:
        return load_checkpoint(run.checkpoint_path)["step"]
    except (FileNotFoundError, RuntimeError):
        return 0


def tiny_ae_config(tmp_path) -> tuple[RunConfig, Path]:
    cfg = make_config("autoencoder", "shapes", "tiny", steps=1000, batch_size=4, lr=1e-3, image_size=16,
                      warmup_steps=0, log_every=1, sample_every=1000, ckpt_every=2, n_samples=2)
    cfg = replace(cfg, data=replace(cfg.data, photo_fraction=0.0), loss=replace(cfg.loss, disc_start=3))
    config = tmp_path / "tiny-ae.yaml"
    config.write_text(dump_config(cfg))
    return cfg, config


def test_cli_sigterm_saves_and_exits_0(tmp_path):
    from core.train.__main__ import main
    _, config = tiny_ae_config(tmp_path)
    run = RunFolder(tmp_path / "runs" / "tiny-ae")

    done = threading.Event()

    def stop_after_first_checkpoint():
        while not run.checkpoint_path.exists() and not done.is_set():
            time.sleep(0.01)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)              # what the run manager's stop() sends

    threading.Thread(target=stop_after_first_checkpoint, daemon=True).start()
    try:
        assert main(["autoencoder", "--config", str(config), "--runs-dir", str(tmp_path / "runs")]) == 0
    finally:
        done.set()
    state = run.read_state()
    assert state["status"] == "stopped" and state["step"] == checkpoint_step(run) >= 2 and state["error"] is None
    assert not run.lock_path.exists()


def test_sigkill_then_resume_continues_exactly(tmp_path):
    cfg, config = tiny_ae_config(tmp_path)
    runs = tmp_path / "runs"
    run = RunFolder(runs / "tiny-ae")

    # 1. SIGKILL mid-run: the folder keeps the last whole checkpoint.
    p = cli("autoencoder", "--config", config, "--runs-dir", runs)
    wait_for(lambda: checkpoint_step(run) >= 4, p)
    p.kill()
    p.wait(timeout=30)
    killed_at = checkpoint_step(run)                          # loads: never a half-written file
    assert killed_at >= 4
    assert run.read_state()["status"] == "running"            # nobody could record the kill
    assert run.lock_path.exists()                             # a stale lock of a dead pid

    # 2. Resume (takes the stale lock over): the same step count and the same losses as a run that
    #    was never interrupted; metrics logged after the last checkpoint are replaced, not doubled.
    end = killed_at + 2
    assert train("autoencoder", None, name="tiny-ae", runs_dir=runs, resume=True, max_steps=end) == "stopped"
    assert checkpoint_step(run) == end and run.read_state()["status"] == "stopped"
    assert train("autoencoder", cfg, name="straight", runs_dir=runs, max_steps=end) == "stopped"
    resumed = {m["step"]: m["loss"] for m in run.read_metrics()}
    straight = {m["step"]: m["loss"] for m in RunFolder(runs / "straight").read_metrics()}
    assert list(resumed) == list(range(1, end + 1))
    for step in resumed:
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5), step
    commands = load_checkpoint(run.checkpoint_path)["commands"]
    assert commands[0].startswith("python -m core.train autoencoder --config") and len(commands) == 2


def test_torchrun_ddp_two_gloo_processes(tmp_path):
    ae_cfg = make_config("autoencoder", "shapes", "tiny", image_size=16).model
    torch.manual_seed(0)
    ae_file = tmp_path / "ae.safetensors"
    save_model(build_autoencoder(ae_cfg), ae_file, metadata={"ldm_studio_scale_factor": "0.5"})
    cfg = make_config("txt2img", "shapes", "tiny", steps=3, batch_size=2, lr=1e-3, image_size=16,
                      first_stage=str(ae_file), warmup_steps=0, log_every=1, sample_every=1000, ckpt_every=1000,
                      n_samples=2, sample_steps=2, device="cpu")
    cfg = replace(cfg, data=replace(cfg.data, pool_size=16))
    config = tmp_path / "ddp.yaml"
    config.write_text(dump_config(cfg))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "core.train", "ldm", "--config", str(config), "--runs-dir", str(tmp_path / "runs")],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    run = RunFolder(tmp_path / "runs" / "ddp")
    state = run.read_state()
    # Finished means check_replicas found the same weights in both processes after 3 steps on
    # different data: the gradients (UNet and text encoder) were all-reduced.
    assert state["status"] == "finished" and state["step"] == 3 and state["world_size"] == 2
    rows = run.read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] > 0 for r in rows)
    ckpt = load_checkpoint(run.checkpoint_path)
    assert ckpt["data_position"] == 3 * 2 * 2                  # steps x batch x processes
    assert "2x CPU" in ckpt["machine"]


def test_export_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    from core.train.__main__ import main
    for source in (tmp_path / "missing.safetensors", tmp_path / "no-run"):
        assert main(["export", str(source), "--out", str(tmp_path / "out.safetensors")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.safetensors").exists()
