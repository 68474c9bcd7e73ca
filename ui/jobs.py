"""Generation jobs: run one at a time on the device, in a worker thread, recorded on disk by id.

Why a worker and not the Gradio handler itself: Gradio stops a handler when its browser tab goes
away, and the issue asks that a job survive a page refresh. So a handler only *submits* a job and
then *follows* it (yielding its progress); the page keeps the job id in the browser's localStorage
and, when reopened, follows the same job again or shows its results. The single worker thread is
also what keeps generation on one model at a time per device, whoever submitted it (the browser,
gradio_client, or a handler whose page was closed).

On disk: `outputs/jobs/<job id>/job.json` (status, progress, result files, parameters), written
atomically at every change, so results are found again after a restart.
"""
import dataclasses
import json
import os
import queue
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.samplers import SamplingInterrupted

FINISHED = ("done", "failed", "interrupted")
KEPT_IN_MEMORY = 200        # finished jobs beyond this are forgotten in memory (their job.json stays)


class JobInterrupted(Exception):
    """A job stopped by Interrupt: `saved` = [(path, infotext)] of what it made before the stop."""

    def __init__(self, saved: list[tuple[str, str]], message: str):
        super().__init__(message)
        self.saved = saved


class JobError(Exception):
    """A job failed for a reason the user can act on; its message is shown as is."""


@dataclass
class JobState:
    id: str
    kind: str                                      # "txt2img", "img2img", "inpaint", "upscale"
    status: str = "queued"                         # queued | running | done | failed | interrupted
    fraction: float = 0.0                          # of the work done, 0..1 (the progress bar)
    message: str = ""                              # what is happening, in words ("step 3 of 20")
    images: list[str] = field(default_factory=list)       # saved output files (PNG, parameters inside)
    infotexts: list[str] = field(default_factory=list)    # one "parameters" text per image
    extra: dict = field(default_factory=dict)      # job-specific facts (input image, tiles, seconds per step)
    warnings: list[str] = field(default_factory=list)     # what the pipeline warned about (ignored words ...)
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    version: int = 0                               # bumped at every change; followers wait on it
    preview: object = field(default=None, repr=False)   # latest step preview (PIL image), memory only

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> str:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "preview"}
        return json.dumps(record, indent=1)


class JobContext:
    """What a job's work function receives: the stop flag and a way to report progress."""

    def __init__(self, runner: "JobRunner", state: JobState):
        self._runner, self.state = runner, state
        self.should_stop = threading.Event()       # handed to core.pipelines as should_stop
        self.folder = runner.root / state.id

    def progress(self, fraction: float, message: str, preview=None) -> None:
        """Report progress: fraction of the work done (0..1), what is happening, an optional preview."""
        self._runner._update(self.state, fraction=fraction, message=message,
                             preview=preview if preview is not None else self.state.preview)

    def note(self, **extra) -> None:
        """Record job facts (shown on reopen and used for estimates), e.g. note(seconds_per_step=0.2)."""
        self._runner._update(self.state, extra={**self.state.extra, **extra})


# A job's work: given its context, return [(saved image path, infotext), ...].
Work = Callable[[JobContext], list[tuple[str, str]]]


class JobRunner:
    """One worker thread per app (per device): jobs run in submission order, one at a time."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._jobs: dict[str, JobState] = {}
        self._contexts: dict[str, JobContext] = {}
        self._pending: queue.Queue = queue.Queue()
        self._changed = threading.Condition()
        self._saving = threading.Lock()
        self._worker: threading.Thread | None = None

    # ---- submitting and following -------------------------------------------------------------
    def submit(self, kind: str, work: Work, extra: dict | None = None) -> JobState:
        state = JobState(id=time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8], kind=kind,
                         extra=dict(extra or {}))
        context = JobContext(self, state)
        with self._changed:
            self._jobs[state.id] = state
            self._contexts[state.id] = context
            ahead = sum(1 for s in self._jobs.values() if s.status in ("queued", "running")) - 1
            state.message = f"waiting for {ahead} job(s) ahead" if ahead else "starting"
        self._save(state)
        self._pending.put((context, work))
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run_forever, name="ldm-studio-jobs", daemon=True)
            self._worker.start()
        return state

    def get(self, job_id: str | None) -> JobState | None:
        """The job, from memory or (after a restart) from disk; None for an unknown id."""
        if not job_id:
            return None
        with self._changed:
            if job_id in self._jobs:
                return self._jobs[job_id]
        path = self.root / Path(job_id).name / "job.json"        # .name: an id never walks out of root
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            state = JobState(**{k: v for k, v in record.items() if k in {f.name for f in dataclasses.fields(JobState)}})
        except (json.JSONDecodeError, TypeError):
            return None
        if not state.done:                     # it was running when the server stopped
            state.status, state.error = "interrupted", "the server restarted while this job was running"
        return state

    def follow(self, job_id: str) -> Iterator[JobState]:
        """Yield the job's state at each change until it has finished (the last one yielded)."""
        seen = -1
        while True:
            with self._changed:
                state = self._jobs.get(job_id)
                if state is None:
                    break
                if state.version == seen:
                    self._changed.wait(timeout=5.0)
                    continue
                seen = state.version
                finished = state.done
            yield state
            if finished:
                return
        state = self.get(job_id)
        if state is not None:
            yield state

    def interrupt(self, job_id: str) -> bool:
        """Ask job `job_id` to stop after its current step; "all" asks every queued and running job
        (an explicit request only: an empty id stops nothing, so one user's Esc never stops another
        user's job). True if one was asked."""
        with self._changed:
            ids = list(self._jobs) if job_id == "all" else [job_id] if job_id else []
            asked = False
            for i in ids:
                state, context = self._jobs.get(i), self._contexts.get(i)
                if state is not None and context is not None and not state.done:
                    context.should_stop.set()
                    asked = True
        return asked

    def current(self) -> JobState | None:
        """The job running now (None when idle): what AUTOMATIC1111's /progress and /interrupt mean."""
        with self._changed:
            return next((s for s in self._jobs.values() if s.status == "running"), None)

    def waiting(self) -> int:
        """Jobs queued or running (A1111's progress `job_count`)."""
        with self._changed:
            return sum(1 for s in self._jobs.values() if s.status in ("queued", "running"))

    def last_finished(self, kind: str) -> JobState | None:
        """The most recent finished job of `kind` run by this process (for time estimates)."""
        with self._changed:
            done = [s for s in self._jobs.values() if s.kind == kind and s.status == "done"]
        return max(done, key=lambda s: s.finished or 0) if done else None

    # ---- the worker -------------------------------------------------------------------------------
    def _run_forever(self) -> None:
        while True:
            context, work = self._pending.get()
            self._run(context, work)

    def _run(self, context: JobContext, work: Work) -> None:
        state = context.state
        if context.should_stop.is_set():
            self._update(state, status="interrupted", message="interrupted before it started", finished=time.time())
            return
        self._update(state, status="running", message="loading the model", started=time.time())
        try:
            with self._warnings_into(state):
                results = work(context)
            self._update(state, status="done", message="done", images=[str(p) for p, _ in results],
                         infotexts=[t for _, t in results], fraction=1.0, finished=time.time())
        except JobInterrupted as stop:
            self._update(state, status="interrupted", message=str(stop), images=[str(p) for p, _ in stop.saved],
                         infotexts=[t for _, t in stop.saved], finished=time.time())
        except SamplingInterrupted as stop:            # work that saves nothing (run_and_save not used)
            self._update(state, status="interrupted", message=f"interrupted after step {stop.step} of {stop.total}",
                         finished=time.time())
        except (JobError, ValueError) as err:
            self._update(state, status="failed", error=str(err), message="failed", finished=time.time())
        except Exception as err:               # anything else: the log gets the traceback, the user a sentence
            traceback.print_exc()
            self._update(state, status="failed", message="failed", finished=time.time(),
                         error=f"The job failed unexpectedly ({type(err).__name__}: {err}). "
                               "The server log has the details.")
        finally:
            with self._changed:
                self._contexts.pop(state.id, None)
                state.preview = None if state.images else state.preview
                finished = [i for i, s in self._jobs.items() if s.done]
                for old in finished[:max(0, len(finished) - KEPT_IN_MEMORY)]:
                    del self._jobs[old]

    @contextmanager
    def _warnings_into(self, state: JobState):
        """Record the warnings raised on this (the worker) thread into the job as they happen; they
        still reach the server log. Other threads' warnings pass through untouched."""
        worker, shown = threading.current_thread(), warnings.showwarning
        with warnings.catch_warnings():
            warnings.simplefilter("always")

            def show(message, category, filename, lineno, file=None, line=None):
                text = str(message)
                if threading.current_thread() is worker and text not in state.warnings:
                    self._update(state, warnings=state.warnings + [text])
                shown(message, category, filename, lineno, file, line)
            warnings.showwarning = show
            yield

    # ---- state changes ----------------------------------------------------------------------------
    def _update(self, state: JobState, **changes) -> None:
        with self._changed:
            for name, value in changes.items():
                setattr(state, name, value)
            state.version += 1
            self._changed.notify_all()
        self._save(state)

    def _save(self, state: JobState) -> None:
        folder = self.root / state.id
        with self._saving:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / "job.json.tmp"
            tmp.write_text(state.to_json())
            os.replace(tmp, folder / "job.json")
