"""Following a job from a handler: progress bar, step previews, then the results or a plain error.

The generation tabs all show the same three things while a job runs and after: a gallery (the step
preview while running, the saved PNGs when done), an info text (the parameters of each image, or
what is happening) and the job id, kept in the browser's localStorage so a reopened page finds the
job again (`resume`).
"""
from collections.abc import Iterator

import gradio as gr

from ui.jobs import JobRunner, JobState


def info_text(state: JobState) -> str:
    """What the info box says: the parameters of each image when done, else what is happening;
    then the pipeline's warnings, one "Note:" line each."""
    if state.status == "done":
        text = "\n\n".join(state.infotexts) or "done"
    elif state.status == "failed":
        text = f"Failed: {state.error}"
    elif state.status == "interrupted":
        why = f"Interrupted ({state.error})." if state.error else f"{state.message[:1].upper()}{state.message[1:]}."
        text = "\n\n".join([why] + state.infotexts)
    else:
        text = f"{state.message} ({state.fraction:.0%})" if state.fraction else state.message
    return "\n".join([text] + [f"Note: {w}" for w in state.warnings])


def gallery_value(state: JobState) -> list:
    if state.images:
        return list(state.images)
    return [state.preview] if state.preview is not None else []


def follow(runner: JobRunner, job_id: str, progress: gr.Progress | None = None) -> Iterator[JobState]:
    """Yield the job's states until it ends; a failed job raises ValueError with its message (the
    handler's user_errors turns it into gr.Error), an interrupted one shows a warning."""
    state, warned = None, 0
    for state in runner.follow(job_id):
        if progress is not None and not state.done:
            progress(state.fraction, desc=state.message)
        for text in state.warnings[warned:]:             # each pipeline warning once, as a toast
            gr.Warning(text)
        warned = len(state.warnings)
        yield state
    if state is None:
        raise ValueError(f"Unknown job {job_id!r}.")
    if state.status == "failed":
        raise ValueError(state.error or "The job failed.")
    if state.status == "interrupted":
        gr.Warning(f"Interrupted: {state.error or state.message}")


def run_job(runner: JobRunner, tab: str, work, progress: gr.Progress | None = None) -> Iterator[tuple]:
    """Submit `work` as a job of `tab` and follow it: (gallery, info, job id) at every change."""
    job = runner.submit(tab, work)
    for state in follow(runner, job.id, progress):
        yield gallery_value(state), info_text(state), state.id


def resume(runner: JobRunner, job_id: str | None) -> Iterator[tuple]:
    """On page load: (gallery, info) of the job this browser ran last, following it while it runs."""
    state = runner.get(job_id)
    if state is None:
        yield gr.skip(), gr.skip()
        return
    if state.done:
        yield gallery_value(state), info_text(state)
        return
    for state in runner.follow(job_id):
        yield gallery_value(state), info_text(state)


def pipeline_progress(context):
    """A `callback` for core.pipelines that reports each step (a core.pipelines.progress.Progress)
    into the job: fraction done, what is happening, and a cheap latent preview."""
    def callback(p) -> None:
        parts = [f"image {p.image + 1} of {p.images}"] if p.images > 1 else []
        parts.append(f"{p.stage} {p.step} of {p.total}")
        if p.tile is not None and p.tiles:
            parts.append(f"tile {p.tile} of {p.tiles}")
        context.progress(p.fraction, ", ".join(parts), preview=p.preview() if p.stage == "sample" else None)
    return callback


def job_memory(tab: str) -> gr.BrowserState:
    """Where the page keeps the id of its tab's last job: the browser's localStorage, so a reload (or
    a new tab of the same browser) finds the job again. The fixed secret only makes the stored value
    readable after a server restart too; a job id is not confidential."""
    return gr.BrowserState("", storage_key=f"ldm-studio-job-{tab}", secret="ldm-studio-job-ids")
