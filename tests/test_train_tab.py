"""The Train tab's handlers (ui/train.py) as plain functions over a real Studio: real tiny training
runs in-process, real exported files, and a stand-in trainer process (test_runs.FAKE_TRAINER) where a
run must stay running. Issue 19.3 (the notice above every tab) and 19.10 (the tab's words)."""
import stat
import sys
import warnings
from dataclasses import replace

import gradio as gr
import pytest

from core import load_model, save_model
from core.models.autoencoder import build_autoencoder
from core.train import train
from core.train.runs import RunManager
from tests.test_runs import FAKE_TRAINER, _wait_for
from tests.test_train_robustness import one_thread, tiny_ae  # noqa: F401  (one_thread: autouse fixture)
from ui import train as tab
from ui.settings import AppSettings
from ui.studio import Studio


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A Studio whose runs/ holds one finished 2-step autoencoder run, "ae-run"."""
    root = tmp_path_factory.mktemp("studio")
    settings = AppSettings(weights_dir=root / "weights", outputs_dir=root / "outputs", runs_dir=root / "runs",
                           data_root=root / "data")
    (root / "weights").mkdir()
    assert train("autoencoder", tiny_ae(steps=2), name="ae-run", runs_dir=root / "runs") == "finished"
    return Studio.create(settings)


def test_an_ldm_without_an_autoencoder_names_the_field(studio):
    with pytest.raises(gr.Error, match=r"choose one in the field 'Autoencoder \(LDM stages\)'"):
        tab.train_start(studio, stage="txt2img", steps=2)
    with pytest.raises(gr.Error, match=r"'nope' \(field 'Autoencoder \(LDM stages\)', API first_stage\) is not"):
        tab.train_start(studio, stage="txt2img", first_stage="nope", steps=2)


def test_the_only_autoencoder_is_preselected(studio, tmp_path):
    only = tab.first_stage_update(studio, None)
    assert [v for _, v in only["choices"]] == [str(studio.runs.folder("ae-run"))]
    assert only["value"] == str(studio.runs.folder("ae-run"))
    # Two to choose from: none is taken for the user, a choice made stays.
    ae = build_autoencoder(tiny_ae().model)
    save_model(ae, studio.settings.weights_dir / "other-ae.safetensors", metadata={"ldm_studio_scale_factor": "1"})
    try:
        two = tab.first_stage_update(studio, None)
        assert len(two["choices"]) == 2 and two["value"] is None
        assert tab.first_stage_update(studio, only["value"])["value"] == only["value"]
    finally:
        (studio.settings.weights_dir / "other-ae.safetensors").unlink()


def test_autoencoder_curve_is_psnr_and_the_exported_box_follows_the_run(studio):
    table, picker, curve, sample, line, exported, shown = tab.run_view(studio, "ae-run")
    assert "PSNR" in curve.title and curve.y_title == "PSNR (dB)"
    assert curve.value["columns"] == ["step", "value"] and 0 < curve.value["data"][-1][1] < 60     # dB, not ~1e4
    assert "reconstruction PSNR" in line and " dB" in line and "loss" not in line
    assert exported == ""                                             # not exported yet

    with warnings.catch_warnings(record=True) as caught:              # gr.Warning outside a request
        warnings.simplefilter("always")
        path = tab.train_export(studio, "ae-run")
    assert any("trained only 2 steps" in str(w.message) for w in caught)
    m = load_model(path)
    assert path.endswith("weights/ae-run.safetensors") and m.metadata["ldm_studio_name"] == "ae-run"
    assert stat.S_IMODE((studio.settings.weights_dir / "ae-run.safetensors").stat().st_mode) == 0o644
    assert tab.run_view(studio, "ae-run")[5] == path                  # the box shows this run's file ...

    assert train("autoencoder", tiny_ae(steps=1), name="ae-two", runs_dir=studio.settings.runs_dir) == "finished"
    assert tab.run_view(studio, "ae-two")[5] == ""                    # ... and not another run's
    assert tab.run_view(studio, "ae-run")[5] == path


def test_the_training_notice_names_the_run_and_stops_it(studio, tmp_path):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    fake = replace(studio, runs=RunManager(studio.settings.runs_dir, command=[sys.executable, str(script)]))
    assert tab.training_notice(fake) == ""
    fake.runs.start({"steps": 1000, "step_time": 0.01}, name="busy-run", stage="ldm")
    try:
        _wait_for(lambda: fake.runs.status("busy-run").step > 0)
        notice = tab.training_notice(fake)
        assert "**busy-run** (running, step" in notice and "of 1000)" in notice and "Stop training" in notice
        with pytest.raises(gr.Error, match=r"already running \(busy-run\).*--max-training-runs"):
            tab.train_start(fake, stage="autoencoder", steps=5, name="another")
        assert tab.stop_active(fake) == ""
        assert fake.runs.status("busy-run").status == "stopped"
    finally:
        fake.runs.stop("busy-run", force=True)


def test_the_tab_offers_every_ldm_stage_of_the_shapes_world(studio):
    """Layout, class and unconditional LDMs start from the Train tab too (the layout tab's model)."""
    stages = [value for _, value in tab.STAGES]
    assert {"layout", "class", "uncond"} <= set(stages)
    from core.train.config import make_config
    ae = str(studio.runs.folder("ae-run"))
    assert make_config("layout", model_size="tiny", first_stage=ae, init_from=ae).train.init_from == ae
    with pytest.raises(ValueError, match="come from the shapes world"):
        make_config("layout", dataset="photos", model_size="tiny", first_stage=ae)
