"""One training session: take the run folder's lock, read the config, run the loop, record the outcome.

    status = train("ldm", "scripts/train_configs/shapes-txt2img.yaml", name="shapes-txt2img")

A new run needs a config; `resume=True` continues from runs/NAME/checkpoints/last.pt with the config
the run was started with (runs/NAME/config.yaml; `steps` may raise its total). The outcome lands in
state.json: "finished", "stopped" (SIGTERM, Ctrl-C or --max-steps: resumable) or "failed" with the
error. Under torchrun only rank 0 touches the folder.
"""

import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

from core.train.autoencoder import train_autoencoder
from core.train.config import STAGES, RunConfig, dump_config, load_config, require_stage
from core.train.ldm import train_ldm
from core.train.lora import LoraRunConfig, dump_lora_config, load_lora_config, train_lora
from core.train.run_folder import RunFolder
from core.train.runtime import setup_runtime, shutdown

log = logging.getLogger("core.train")
LOOPS = {"autoencoder": train_autoencoder, "ldm": train_ldm, "lora": train_lora}


class Stopped(Exception):
    """SIGTERM arrived before the training loop took over the signal."""


def _raise_stopped(signum, frame):
    raise Stopped(f"stopped by signal {signum} before training began")


def _config(source, stage: str):
    """The run's config for `stage` from a config dataclass, a dict or a YAML file."""
    if stage == "lora":
        return load_lora_config(source)
    if isinstance(source, LoraRunConfig):
        raise ValueError("this config trains a LoRA: run `python -m core.train lora --config ...`")
    return require_stage(source, stage) if isinstance(source, RunConfig) else load_config(source, stage)


def train(stage: str, config=None, *, name: str | None = None, runs_dir: str | Path = "runs", resume: bool = False,
          max_steps: int | None = None, steps: int | None = None, command: str | None = None) -> str:
    """Train stage "autoencoder", "ldm" or "lora" into runs_dir/NAME; returns "finished" or "stopped"."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if name is None:
        if config is None or isinstance(config, (dict, RunConfig, LoraRunConfig)):
            raise ValueError("give the run a --name (or a config file, whose name it then takes)")
        name = Path(config).stem
    run = RunFolder(Path(runs_dir) / name)
    main = int(os.environ.get("RANK", "0")) == 0
    command = command or " ".join(["python", *sys.argv])
    if main:
        run.lock()                                         # raises if another live process writes here
        for path in run.remove_stale_temporaries():
            log.info("removed %s, left by a process killed while writing it", path)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if in_main_thread else None
    rt = None
    try:
        has_checkpoint = run.checkpoint_path.exists()
        if has_checkpoint and not resume:
            raise ValueError(f"{run.path} already holds a run (checkpoint at step "
                             f"{run.read_state().get('step', '?')}); pass --resume to continue it, or choose "
                             "another --name")
        if resume and has_checkpoint and run.config_path.exists():
            cfg = _config(run.config_path, stage)
        elif config is not None:
            cfg = _config(config if isinstance(config, (dict, RunConfig, LoraRunConfig)) else Path(config), stage)
        else:
            raise ValueError(f"{run.path} has no checkpoint to resume from; give --config to start the run")
        if steps is not None:
            cfg = replace(cfg, train=replace(cfg.train, steps=int(steps)))
        rt = setup_runtime(cfg.train)
        if main:
            run.config_path.write_text(dump_lora_config(cfg) if stage == "lora" else dump_config(cfg))
            started = run.read_state().get("started_at") if resume else None
            run.run_id(new=not resume)
            run.write_state(name=name, stage=stage, status="running", pid=os.getpid(), step=0,
                            total_steps=cfg.train.steps, started_at=started or time.time(), error=None,
                            images_per_s=None, eta_s=None, world_size=rt.world_size)
            log.info("run %s: %s, %d steps, batch %d x %d processes, %s", run.path, stage, cfg.train.steps,
                     cfg.train.batch_size, rt.world_size, rt.device)
        # From here the loop's StopFlag takes SIGTERM over (and gives it back to _raise_stopped after).
        return LOOPS[stage](cfg, run, rt, resume=resume, max_steps=max_steps, command=command)
    except (Stopped, KeyboardInterrupt) as err:
        if main:
            run.write_state(status="stopped", error=None)
        log.info("%s", err or "interrupted")
        return "stopped"
    except BaseException as err:
        if main:
            run.write_state(status="failed", error=f"{type(err).__name__}: {err}")
            log.error("run failed:\n%s", traceback.format_exc())
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if main:
            run.unlock()
        if rt is not None:
            shutdown(rt)
