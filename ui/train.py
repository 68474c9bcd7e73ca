"""The Train tab: start, watch, stop and resume background training runs, then use the result.

Runs are processes started by core.train.runs.RunManager and recorded in runs/NAME/ (state.json,
metrics.jsonl, samples/), so the tab only reads that folder: closing the page, or restarting the
app, loses nothing. A gr.Timer refreshes the run list, the loss curve and the latest samples.
Endpoints: `/train_start`, `/train_status`, `/train_stop`, `/train_resume`, `/train_export`.
"""
import re
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from core.train.config import make_config
from core.train.dataset_check import check_dataset, extract_zip, resolve_data_path
from core.train.export import exported_from, export_run
from core.train.lora import LoraRunConfig, export_lora, lora_config_dict
from ui import train_lora
from ui.errors import user_errors
from ui.studio import Studio

REFRESH_S = 2.0
FEW_STEPS = 500                    # "Use this model" warns below this: the default models trained 5000+
FIRST_STAGE_LABEL = "Autoencoder (LDM stages)"
DATASETS = [("The built-in shapes world", "shapes"), ("A folder under the data root", "folder"),
            ("An uploaded zip of images (+ captions)", "zip")]
RUN_COLUMNS = ["name", "stage", "status", "step", "total", "loss", "images/s", "ETA"]


def _eta(seconds) -> str:
    if not seconds:
        return ""
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} d"


def status_dict(info) -> dict:
    """A RunInfo as plain JSON values (the `/train_status` answer)."""
    return {"name": info.name, "stage": info.stage, "status": info.status, "step": info.step,
            "total_steps": info.total_steps, "loss": info.loss, "lr": info.lr, "images_per_s": info.images_per_s,
            "eta_s": info.eta_s, "error": info.error, "latest_sample": info.latest_sample, "folder": info.folder}


@user_errors
def train_status(studio: Studio, name: str = "") -> dict:
    """The state of run `name` (empty: the most recent run), with its metrics so far."""
    runs = studio.runs
    if not name:
        listed = runs.list()
        if not listed:
            raise ValueError("There is no training run yet; start one with train_start.")
        name = listed[0].name
    info = runs.status(name)
    return {**status_dict(info), "metrics": runs.metrics(name)}


@user_errors
def train_stop(studio: Studio, name: str | None = None) -> dict:
    """Stop run `name` (empty: the running one); it saves a checkpoint first and can be resumed."""
    runs = studio.runs
    if not name:
        running = [r for r in runs.list() if r.status in ("running", "stopping")]
        if not running:
            raise ValueError("No training run is running.")
        name = running[0].name
    return status_dict(runs.stop(name, timeout=30.0))


@user_errors
def train_resume(studio: Studio, name: str | None = None) -> dict:
    """Continue a stopped or failed run from its last checkpoint."""
    if not name:
        raise ValueError("Choose the run to resume.")
    return status_dict(studio.runs.resume(name))


STAGES = [("Autoencoder (first stage, train it first)", "autoencoder"), ("Text-to-image LDM", "txt2img"),
          ("Super-resolution LDM (4x)", "sr"), ("Inpainting LDM", "inpaint"),
          ("LoRA for a text-to-image model", "lora")]
SIZES = ["tiny", "small", "base"]


def first_stage_choices(studio: Studio) -> list[tuple[str, str]]:
    """Trained autoencoders an LDM can use: exported files in weights/ and autoencoder runs with a
    checkpoint (their folder)."""
    choices = [(f"{e.label} (weights/{e.name})", str(e.path)) for e in studio.models.scan()[0]
               if e.task == "autoencoder"]
    for r in studio.runs.list():
        if r.stage == "autoencoder" and (Path(r.folder) / "checkpoints" / "last.pt").is_file():
            choices.append((f"run {r.name} ({r.status}, step {r.step})", r.folder))
    return choices


def first_stage_update(studio: Studio, current: str | None) -> dict:
    """The autoencoder picker's choices and value: `current` while it is still offered, else the
    only autoencoder when there is exactly one (nothing to choose), else none."""
    choices = first_stage_choices(studio)
    values = [v for _, v in choices]
    value = current if current in values else (values[0] if len(values) == 1 else None)
    return {"choices": choices, "value": value}


def _dataset(studio: Studio, dataset: str, folder: str | None, zip_file: str | None,
             image_size: int) -> tuple[str, list]:
    """The `dataset` argument of make_config and the dataset check's warnings. User folders must lie
    under the data root; an uploaded zip is unpacked there safely (core.train.dataset_check)."""
    if dataset == "shapes":
        return "shapes", []
    root = Path(studio.settings.data_root).resolve()
    if dataset == "folder":
        if not folder:
            raise ValueError(f"Give the folder of training images, relative to the data root {root}.")
        path = resolve_data_path(root, folder)
    elif dataset == "zip":
        if not zip_file:
            raise ValueError("Upload a .zip of images (captions in name.txt files or a captions.jsonl).")
        root.mkdir(parents=True, exist_ok=True)
        path = root / "uploads" / f"{Path(zip_file).stem[:40]}-{time.strftime('%Y%m%d-%H%M%S')}"
        extract_zip(zip_file, path)
    else:
        raise ValueError(f"dataset must be one of {[v for _, v in DATASETS]}; got {dataset!r}.")
    report = check_dataset(path, image_size)
    if report["count"] == 0:
        raise ValueError(f"No readable image in {path}: " + "; ".join(report["warnings"]))
    return str(path), report["warnings"]


@user_errors
def check_data(studio: Studio, dataset: str = "shapes", folder: str | None = None, zip_file: str | None = None,
               image_size: int = 64) -> str:
    """What the dataset check finds (images, captions, sizes) before a run is started."""
    if dataset == "shapes":
        return "The shapes world is generated on the fly: nothing to check."
    if dataset == "zip":
        return "The zip is unpacked and checked when the run starts."
    if not folder:
        raise ValueError("Give the folder of training images, relative to the data root.")
    report = check_dataset(resolve_data_path(studio.settings.data_root, folder), int(image_size))
    caps = report["captions"]
    lines = [f"{report['count']} readable images ({report['files']} files), captions for "
             f"{caps['coverage']:.0%}, sizes {report['size_histogram']}"]
    return "\n".join(lines + [f"- {w}" for w in report["warnings"]])


@user_errors
def train_start(studio: Studio, stage: str = "autoencoder", dataset: str = "shapes", folder: str | None = None,
                zip_file: str | None = None, model_size: str = "small", image_size: int = 64, steps: int = 5000,
                batch_size: int = 32, learning_rate: float | None = None, first_stage: str | None = None,
                init_from: str | None = None, name: str | None = None, base: str | None = None, rank: int = 4,
                alpha: float | None = None, lora_layers: list[str] | None = None) -> dict:
    """Start a background training run (core.train) and return its state. Train an autoencoder
    first; the LDM stages need it as `first_stage` (an exported file or its run folder). A LoRA
    ("lora") needs a text-to-image `base` model; rank, alpha and lora_layers shape it."""
    if stage not in [v for _, v in STAGES]:
        raise ValueError(f"stage must be one of {[v for _, v in STAGES]}; got {stage!r}.")
    steps, batch_size, image_size = int(steps), int(batch_size), int(image_size)
    if steps < 1 or batch_size < 1:
        raise ValueError("Steps and batch size must be at least 1.")
    if stage == "lora":
        source, warnings = _dataset(studio, dataset, folder, zip_file, image_size)
        config = train_lora.lora_config(studio, base, source, rank, alpha, lora_layers, steps, batch_size,
                                        learning_rate)
        for warning in warnings:
            gr.Warning(warning)
        return _start(studio, config, name)
    sources = [v for _, v in first_stage_choices(studio)]
    if first_stage and first_stage not in sources:
        raise ValueError(f"{first_stage!r} (field '{FIRST_STAGE_LABEL}', API first_stage) is not a trained "
                         f"autoencoder of this app; choose one of: "
                         f"{', '.join(sources) or 'none yet (train an autoencoder first)'}.")
    if stage != "autoencoder" and not first_stage and not init_from:
        raise ValueError(f"An LDM trains in the latent space of an autoencoder: choose one in the field "
                         f"'{FIRST_STAGE_LABEL}' (API first_stage)"
                         + (". None is trained yet: train an autoencoder first." if not sources else "."))
    init_path = str(studio.models.entry("txt2img", init_from).path) if init_from else None
    source, warnings = _dataset(studio, dataset, folder, zip_file, image_size)
    for warning in warnings:
        gr.Warning(warning)
    config = make_config(stage, dataset=source, model_size=model_size, steps=steps, batch_size=batch_size,
                         lr=float(learning_rate) if learning_rate else None, image_size=image_size,
                         first_stage=first_stage or None, init_from=init_path,
                         log_every=max(1, min(10, steps // 20)))
    return _start(studio, config, name)


def _start(studio: Studio, config, name: str | None) -> dict:
    """Start `config` (a RunConfig or a LoraRunConfig) as run `name` (default: its export name and the time)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_name = name or re.sub(r"[^A-Za-z0-9._-]+", "-", f"{config.export['name']}-{stamp}")   # a folder name
    if isinstance(config, LoraRunConfig):
        return status_dict(studio.runs.start(lora_config_dict(config), name=run_name, stage="lora"))
    return status_dict(studio.runs.start(config, name=run_name))   # the stage: the model's capabilities say


@user_errors
def train_export(studio: Studio, name: str | None = None) -> str:
    """Export a run's EMA weights to weights/NAME.safetensors, so the generation tabs can pick it;
    a LoRA run's adapters to weights/lora/NAME.safetensors, for `<lora:NAME:1>` in a prompt."""
    runs = studio.runs
    if not name:
        raise ValueError("Choose the run to export.")
    info = runs.status(name)
    if info.status in ("running", "stopping"):
        raise ValueError(f"Run {name!r} is still {info.status}; stop it (or let it finish) first.")
    if not (Path(info.folder) / "checkpoints" / "last.pt").is_file():
        raise ValueError(f"Run {name!r} has no checkpoint yet.")
    if info.stage == "lora":
        return str(export_lora(info.folder, exported_path(studio, name, "lora"), name=name))
    if info.step < FEW_STEPS:
        gr.Warning(f"Run {name!r} trained only {info.step} steps: expect noise or blur from it (the default "
                   f"models trained 5000 steps and more). Resume it to train longer, then export again.")
    return str(export_run(info.folder, exported_path(studio, name), name=name))


def exported_path(studio: Studio, name: str, stage: str | None = None) -> Path:
    """Where "Use this model" puts run `name`: weights/NAME.safetensors, displayed as NAME (a LoRA:
    weights/lora/NAME.safetensors)."""
    if stage == "lora":
        return train_lora.lora_path(studio, name)
    return Path(studio.settings.weights_dir) / f"{name}.safetensors"


def runs_table(studio: Studio) -> pd.DataFrame:
    rows = []
    for r in studio.runs.list():
        rows.append([r.name, r.stage or "", r.status, r.step, r.total_steps or "",
                     "" if r.loss is None else f"{r.loss:.4f}",
                     "" if r.images_per_s is None else f"{r.images_per_s:.1f}", _eta(r.eta_s)])
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def curve_of(info, metrics: list[dict]) -> gr.LinePlot:
    """The run's training curve: an autoencoder's reconstruction PSNR (its loss, a sum over pixels
    in the tens of thousands, tells a user nothing), an LDM's loss. The plotted column is always
    "value" (a plot whose y column changes name draws the new one as categories)."""
    key, title, y_title = ("psnr", "Reconstruction PSNR in dB (higher is better)", "PSNR (dB)") \
        if info.stage == "autoencoder" and any("psnr" in r for r in metrics) else ("loss", "Training loss", "loss")
    rows = [r for r in metrics if "step" in r and key in r]
    return gr.LinePlot(pd.DataFrame({"step": [r["step"] for r in rows], "value": [float(r[key]) for r in rows]}),
                       title=title, y_title=y_title)


def run_view(studio: Studio, name: str | None, seen: str | None = None):
    """(runs table, run picker, training curve, latest samples, status line, exported model, what was
    shown) for the Timer and events; when nothing changed since `seen`, every output is skipped."""
    table = runs_table(studio)
    names = list(table["name"])
    if name not in names:
        name = names[0] if names else None
    if name is None:
        return table, gr.update(choices=[], value=None), pd.DataFrame({"step": [], "value": []}), None, \
            "No run yet.", "", ""
    info = studio.runs.status(name)
    metrics = studio.runs.metrics(name)
    exported = exported_path(studio, name, info.stage)
    exported = str(exported) if exported_from(exported, info.run_id) else ""
    shown = f"{table.to_json()}|{name}|{len(metrics)}|{info.status}|{info.latest_sample}|{exported}"
    if shown == seen:
        return (gr.skip(),) * 7
    line = f"**{name}**: {info.status}, step {info.step}" + (f" of {info.total_steps}" if info.total_steps else "")
    psnr = metrics[-1].get("psnr") if metrics and info.stage == "autoencoder" else None
    if psnr is not None:
        line += f", reconstruction PSNR {float(psnr):.1f} dB"
    elif info.loss is not None:
        line += f", loss {info.loss:.4f}"
    if info.eta_s:
        line += f", about {_eta(info.eta_s)} left"
    if info.error:
        line += f"\n\n{info.error}"
    return table, gr.update(choices=names, value=name), curve_of(info, metrics), info.latest_sample, line, \
        exported, shown


def training_notice(studio: Studio) -> str:
    """The line above the tabs while training runs ("" when none does): each trainer takes CPU (or
    GPU) time from generation, so a user who finds generation slow sees why, and how to stop it."""
    active = studio.runs.active()
    if not active:
        return ""
    runs = ", ".join(f"**{r.name}** ({r.status}, step {r.step}" + (f" of {r.total_steps})" if r.total_steps else ")")
                     for r in active)
    return (f"Training {runs} in the background: generation shares the machine with it and is slower until "
            f"it ends. **Stop training** here, or watch it in the **Train** tab.")


@user_errors
def stop_active(studio: Studio) -> str:
    """Stop every active run (each saves a checkpoint first and can be resumed); the notice after."""
    for r in studio.runs.active():
        studio.runs.stop(r.name, timeout=30.0)
    return training_notice(studio)


def build_notice(studio: Studio, demo: gr.Blocks) -> SimpleNamespace:
    """The training notice and its Stop button, refreshed by a gr.Timer; shown on every tab."""
    with gr.Row(visible=False, elem_classes=["ldm-training-notice"]) as row:
        notice = gr.Markdown("", elem_classes=["ldm-training-notice-text"])
        stop = gr.Button("Stop training", variant="stop", size="sm", scale=0,
                         elem_classes=["ldm-training-notice-stop"])

    def show(text: str, seen: str | None = None):
        if text == seen:
            return gr.skip(), gr.skip(), seen
        return gr.Row(visible=bool(text)), text, text

    def refresh(seen: str | None = None):
        return show(training_notice(studio), seen)

    shown = gr.State("")
    gr.Timer(REFRESH_S).tick(refresh, inputs=[shown], outputs=[row, notice, shown], api_visibility="private",
                             queue=False, show_progress="hidden")
    demo.load(refresh, outputs=[row, notice, shown], api_visibility="private", queue=False)
    stop.click(partial(stop_active, studio), outputs=[notice], api_visibility="private",
               concurrency_limit=None).then(refresh, outputs=[row, notice, shown], api_visibility="private")
    return SimpleNamespace(row=row, notice=notice, stop=stop)


def refresh_sources(studio: Studio, current: str | None, chosen_stage: str, base: str | None) -> tuple:
    """The model pickers of the chosen stage (the LDM stages' autoencoder and start model, or the
    LoRA's base model), their choices read afresh from weights/."""
    ldm = chosen_stage != "lora"
    return gr.update(**first_stage_update(studio, current), visible=ldm), \
        gr.update(choices=studio.models.choices("txt2img"), visible=ldm), \
        gr.update(**train_lora.base_update(studio, base)), gr.update(visible=not ldm)


def _own_images(studio: Studio) -> tuple:
    """The "Your own images" fields: a folder under the data root, or a zip; and a data check."""
    with gr.Accordion("Your own images", open=False):
        folder = gr.Textbox("", label=f"Folder under the data root ({studio.settings.data_root})",
                            placeholder="my_images")
        zip_file = gr.File(label="or a zip of images (captions: name.txt or captions.jsonl)",
                           file_types=[".zip"], type="filepath", height=120)
        check = gr.Button("Check the data", size="sm")
        data_report = gr.Markdown()
    return folder, zip_file, check, data_report


def build(studio: Studio, demo: gr.Blocks) -> SimpleNamespace:
    gr.Markdown("Train the two stages of a latent diffusion model: first the **autoencoder**, then an **LDM** in its "
                "latent space (text-to-image, 4x super-resolution, inpainting); or a **LoRA** for a text-to-image "
                "model. Runs go on in the background (closing this page does not stop them); **Use this model** "
                "exports a run to the model pickers (a LoRA to weights/lora, for `<lora:name:1>` in a prompt).")
    with gr.Row():
        with gr.Column(scale=1):
            stage = gr.Radio(STAGES, value="autoencoder", label="What to train")
            first_stage = gr.Dropdown(**first_stage_update(studio, None), label=FIRST_STAGE_LABEL,
                                      info="a trained first stage: an exported file or an autoencoder run")
            init_from = gr.Dropdown(studio.models.choices("txt2img"), value=None, label="Start from (inpainting)",
                                    info="optional: a text-to-image model to fine-tune")
            dataset = gr.Radio(DATASETS, value="shapes", label="Training data")
            lora = train_lora.build_fields(studio)
            folder, zip_file, check, data_report = _own_images(studio)
            with gr.Row():
                model_size = gr.Radio(SIZES, value="small", label="Model size")
                image_size = gr.Number(64, label="Image size (px)", precision=0, minimum=8, step=8)
            with gr.Row():
                steps = gr.Number(5000, label="Steps", precision=0, minimum=1)
                batch_size = gr.Number(32, label="Batch size", precision=0, minimum=1)
                learning_rate = gr.Number(None, label="Learning rate (0: default)", minimum=0)
            name = gr.Textbox("", label="Run name (optional)", placeholder="automatic")
            start = gr.Button("Start training", variant="primary", elem_classes=["ldm-train-start"])
        with gr.Column(scale=2):
            table = gr.Dataframe(headers=RUN_COLUMNS, interactive=False, label="Runs", elem_classes=["ldm-runs"])
            with gr.Row():
                run = gr.Dropdown(label="Run", choices=[], scale=3, allow_custom_value=True,
                                  elem_classes=["ldm-run-picker"])
                stop = gr.Button("Stop", variant="stop", scale=1, elem_classes=["ldm-train-stop"])
                resume = gr.Button("Resume", scale=1, elem_classes=["ldm-train-resume"])
                use = gr.Button("Use this model", scale=1, elem_classes=["ldm-train-use"])
            status = gr.Markdown("No run yet.", elem_classes=["ldm-run-status"])
            with gr.Row():
                curve = gr.LinePlot(x="step", y="value", title="Training curve", y_title="loss", height=280,
                                    x_axis_format="d", elem_classes=["ldm-loss-curve"])
                sample = gr.Image(label="Latest samples (EMA)", type="filepath", interactive=False, height=280)
            exported = gr.Textbox(label="Exported model", interactive=False, elem_classes=["ldm-exported"])

    shown = gr.State("")
    view_outputs = [table, run, curve, sample, status, exported, shown]
    view = partial(run_view, studio)
    timer = gr.Timer(REFRESH_S)
    timer.tick(view, inputs=[run, shown], outputs=view_outputs, api_visibility="private", queue=False,
               show_progress="hidden")
    demo.load(view, inputs=[run], outputs=view_outputs, api_visibility="private", queue=False)
    run.input(view, inputs=[run], outputs=view_outputs, api_visibility="private", queue=False)
    check.click(partial(check_data, studio), inputs_kwargs={"dataset": dataset, "folder": folder, "zip_file": zip_file,
                                                           "image_size": image_size},
                outputs=[data_report], api_visibility="private", concurrency_limit=None)
    started = gr.JSON(visible=False)
    start.click(partial(train_start, studio),
                inputs_kwargs={"stage": stage, "dataset": dataset, "folder": folder, "zip_file": zip_file,
                               "model_size": model_size, "image_size": image_size, "steps": steps,
                               "batch_size": batch_size, "learning_rate": learning_rate,
                               "first_stage": first_stage, "init_from": init_from, "name": name,
                               "base": lora.base, "rank": lora.rank, "alpha": lora.alpha, "lora_layers": lora.layers},
                outputs=[started], api_name="train_start", concurrency_limit=None
                ).success(lambda info: view(info["name"]), inputs=[started], outputs=view_outputs,
                          api_visibility="private")
    stop.click(partial(train_stop, studio), inputs=[run], outputs=[started], api_name="train_stop",
               concurrency_limit=None).then(view, inputs=[run], outputs=view_outputs, api_visibility="private")
    resume.click(partial(train_resume, studio), inputs=[run], outputs=[started], api_name="train_resume",
                 concurrency_limit=None).then(view, inputs=[run], outputs=view_outputs, api_visibility="private")
    use.click(partial(train_export, studio), inputs=[run], outputs=[exported], api_name="train_export",
              concurrency_limit=None)

    gr.on([demo.load, exported.change, stage.change], partial(refresh_sources, studio),
          inputs=[first_stage, stage, lora.base],
          outputs=[first_stage, init_from, lora.base, lora.group], api_visibility="private", queue=False)

    def status_api(name: str = "") -> dict:
        """The state of training run `name` (empty: the most recent run), with its metrics so far."""
        return train_status(studio, name)

    gr.api(status_api, api_name="train_status", concurrency_limit=None)
    return SimpleNamespace(exported=exported, start=start, run=run)
