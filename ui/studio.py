"""The app's context: settings, the one model cache, the job runner and the training run manager.

`build_app` makes one Studio and binds it into each handler (functools.partial), so the handlers
stay plain functions of plain values and nothing lives in module globals.
"""
from dataclasses import dataclass

from core.train.runs import RunManager
from ui.jobs import JobRunner
from ui.models import TAB_NAMES, ModelCache
from ui.settings import AppSettings


@dataclass(frozen=True)
class Studio:
    settings: AppSettings
    models: ModelCache
    jobs: JobRunner
    runs: RunManager            # background training runs under runs/

    @classmethod
    def create(cls, settings: AppSettings) -> "Studio":
        return cls(settings=settings,
                   models=ModelCache(settings.weights_dir, settings.device, settings.dtype, offload=settings.medvram),
                   jobs=JobRunner(settings.outputs_dir / "jobs"),
                   runs=RunManager(settings.runs_dir, max_running=settings.max_training_runs))


def models_banner(studio: Studio) -> str:
    """The note at the top of the page: which kinds of model are missing and how to get them."""
    missing = [TAB_NAMES[tab] for tab in ("txt2img", "inpaint", "upscale") if not studio.models.for_tab(tab)]
    problems = studio.models.scan()[1]
    lines = []
    if missing:
        where = studio.settings.weights_dir
        lines.append(f"**No {', '.join(missing)} model found in `{where}/`.** The default models are "
                     "trained by this project: start a run in the **Train** tab and press **Use this model** "
                     "when it is done, or follow the README's *Default models* section "
                     "(`python -m core.train ...` then `python -m core.train export`). Tabs without a "
                     "model say so when you press Generate.")
    for name, why in problems.items():
        lines.append(f"- `{name}` cannot be used: {why}")
    return "\n\n".join(lines)
