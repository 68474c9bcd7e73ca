"""What probing the training code found (issue 19.12): an export never replaces a model file another
run (or nobody: a shipped model) wrote; half-written checkpoints of a killed trainer are removed when
the run starts again; a huge prompt reaches the log as a bounded excerpt. Real tiny runs, real files."""
import stat
import warnings
from dataclasses import replace

import pytest
import torch

from core import load_model, save_model
from core.models.autoencoder import build_autoencoder
from core.models.clip_text import tokenize_clip
from core.train import RunConfig, RunFolder, export_run, make_config, reexport_file, train
from tests.tiny_models import tiny_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_ae(steps=1) -> RunConfig:
    cfg = make_config("autoencoder", "shapes", "tiny", steps=steps, batch_size=2, image_size=16, warmup_steps=0,
                      log_every=1, sample_every=1000, ckpt_every=1, n_samples=2)
    return replace(cfg, data=replace(cfg.data, photo_fraction=0.0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished one-step autoencoder runs, one named like the shipped model."""
    folder = tmp_path_factory.mktemp("runs")
    for name in ("shapes-kl-f4", "other"):
        assert train("autoencoder", tiny_ae(), name=name, runs_dir=folder) == "finished"
    return folder


def test_export_never_replaces_a_model_of_another_run(runs, tmp_path):
    weights = tmp_path / "weights"
    shipped = weights / "shapes-kl-f4.safetensors"
    save_model(build_autoencoder(tiny_ae().model), shipped,
               metadata={"ldm_studio_name": "shapes-kl-f4", "ldm_studio_scale_factor": "0.5"})
    before = shipped.read_bytes()
    with pytest.raises(ValueError, match=r"shapes-kl-f4\.safetensors already holds the model 'shapes-kl-f4', "
                                         r"which was not exported from this run.*--out.*move"):
        export_run(runs / "shapes-kl-f4", shipped)
    assert shipped.read_bytes() == before

    # Its own file: written, re-exported in place as often as wanted; another run may not replace it.
    own = weights / "mine.safetensors"
    export_run(runs / "shapes-kl-f4", own)
    first_id = load_model(own).metadata["ldm_studio_run_id"]
    assert first_id == RunFolder(runs / "shapes-kl-f4").run_id()
    export_run(runs / "shapes-kl-f4", own, name="again")
    assert load_model(own).metadata["ldm_studio_name"] == "again"
    with pytest.raises(ValueError, match="not exported from this run"):
        export_run(runs / "other", own)
    assert load_model(own).metadata["ldm_studio_name"] == "again"


def test_reexport_keeps_the_guard(tmp_path):
    """`export FILE --out F` (a model whose run folder is gone) replaces F only when F is FILE itself
    or was exported from the same run."""
    src, other = tmp_path / "src.safetensors", tmp_path / "other.safetensors"
    for path, name in ((src, "src"), (other, "other")):
        save_model(tiny_model("sd2"), path, metadata={"ldm_studio_name": name, "ldm_studio_defaults": "{}"})
    with pytest.raises(ValueError, match="already holds the model 'other'"):
        reexport_file(src, other, name="renamed")
    assert load_model(other).metadata["ldm_studio_name"] == "other"
    reexport_file(src, src, name="renamed")                                    # in place: allowed
    assert load_model(src).metadata["ldm_studio_name"] == "renamed"


def test_exported_model_files_are_readable_by_everyone(runs, tmp_path):
    out = export_run(runs / "other", tmp_path / "w" / "other.safetensors")
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_a_resumed_run_removes_the_temporaries_of_a_killed_write(tmp_path):
    assert train("autoencoder", tiny_ae(steps=1), name="killed", runs_dir=tmp_path) == "finished"
    run = RunFolder(tmp_path / "killed")
    # What SIGKILL in the middle of save_checkpoint / save_grid leaves: `.last.pt.<pid>.tmp`.
    leftovers = [run.checkpoint_path.with_name(".last.pt.4242.tmp"), run.samples_dir / ".step_0000001.png.tmp"]
    run.samples_dir.mkdir(exist_ok=True)
    for path in leftovers:
        path.write_bytes(b"\0" * 100_000)
    run_id = run.run_id()
    assert train("autoencoder", None, name="killed", runs_dir=tmp_path, resume=True, steps=2) == "finished"
    assert not any(p.exists() for p in leftovers)
    assert run.checkpoint_path.is_file() and run.run_id() == run_id          # a resume is the same run


def test_a_megabyte_prompt_is_logged_as_an_excerpt():
    prompt = "a red circle " * 80_000                                          # ~1 MB
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokenize_clip([prompt], 77, pad_id=0)
    (warning,) = caught
    message = str(warning.message)
    assert "tokens were dropped" in message and "more characters" in message and len(message) < 400
