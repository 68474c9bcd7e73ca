"""`python -m core.generate`: files with metadata, never overwriting, one-line errors with status 2,
and every flag documented."""

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import save_model
from core.models.conditioners import LayoutEmbedderConfig
from core.models.diffusion import LatentDiffusion
from core.generate import build_parser, main
from core.pipelines.outputs import reserve_output as reserve_path
from core.pipelines import read_infotext
from tests.tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_model(tiny_model("sd2"), tmp_path_factory.mktemp("w") / "tiny.safetensors",
                      metadata={"ldm_studio_defaults": '{"steps": 2}', "ldm_studio_name": "tiny"})


def test_cli_writes_pngs_with_parameters_and_never_overwrites(model_file, tmp_path):
    cmd = [sys.executable, "-m", "core.generate", "txt2img", "--model", str(model_file), "--prompt",
           "a red circle, large", "--n", "2", "--seed", "7", "--outdir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    paths = [Path(line) for line in first.stdout.split()]
    assert [p.name for p in paths] == ["00000-7.png", "00001-8.png"]
    info = read_infotext(paths[1])
    assert (info["prompt"], info["seed"], info["steps"], info["model"]) == ("a red circle, large", 8, 2, "tiny")
    assert "sample [" in first.stderr                                        # the progress bar
    before = paths[0].read_bytes()
    assert main(["txt2img", "--model", str(model_file), "--prompt", "x", "--seed", "7", "--outdir",
                 str(tmp_path), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000-7.png", "00001-8.png", "00002-7.png"]
    assert paths[0].read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--width", "50"], "not a multiple of 16"),
    (["--steps", "0"], "steps must be"),
    (["--eta", "-1"], "eta must be"),
    (["--cfg-scale", "nan"], "guidance_scale must be a finite number"),
])
def test_cli_errors_are_one_line_with_status_2(model_file, tmp_path, capsys, args, message):
    assert main(["txt2img", "--model", str(model_file), "--outdir", str(tmp_path), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_cli_missing_files_and_wrong_model(model_file, tmp_path, capsys):
    assert main(["img2img", "--model", str(model_file), "--image", str(tmp_path / "x.png"), "--quiet"]) == 2
    assert "image file not found" in capsys.readouterr().err
    assert main(["txt2img", "--model", str(tmp_path / "none.safetensors")]) == 2
    assert "no checkpoint file" in capsys.readouterr().err


def test_every_flag_is_documented():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"txt2img", "img2img", "inpaint", "outpaint", "upscale", "class", "uncond",
                                       "layout", "semantic"}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 5, f"{name} {action.option_strings} has no help"
        assert "--model" in sub.format_help()


def test_a_sampler_we_lack_falls_back_with_a_warning(model_file, tmp_path, capsys):
    """A1111 names we do not have (from a PNG, a script) never fail a run (issue 17 §1)."""
    with pytest.warns(UserWarning, match="'nope'"):
        assert main(["txt2img", "--model", str(model_file), "--outdir", str(tmp_path), "--quiet",
                     "--sampler", "nope"]) == 0


def test_reserve_path_counts_past_existing_files(tmp_path):
    (tmp_path / "00041-3.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("")
    assert reserve_path(tmp_path, 5).name == "00042-5.png"
    assert reserve_path(tmp_path, 5).name == "00043-5.png"                  # the first is taken now


@pytest.mark.parametrize("family, args", [
    ("ldm_class", ["class", "--class-label", "3"]),
    ("ldm_uncond", ["uncond", "--n", "2", "--batch-size", "2"]),
    ("ldm_layout", ["layout", "--layout", "LAYOUT"]),
])
def test_class_uncond_and_layout_models_from_the_cli(tmp_path, capsys, family, args):
    """The conditional samplers the core has are reachable from the command line (issue 18 §2)."""
    model = tiny_model(family)
    if family == "ldm_layout":                      # our layout embedder (CompVis' reads layout token ids)
        model = LatentDiffusion(dataclasses.replace(model.config, cond_stage=LayoutEmbedderConfig(32, n_classes=5)))
    path = save_model(model, tmp_path / f"{family}.safetensors", metadata={"ldm_studio_defaults": '{"steps": 2}'})
    layout = tmp_path / "boxes.json"
    layout.write_text("[[1, 0.1, 0.1, 0.5, 0.5], [2, 0.5, 0.5, 0.9, 0.9]]")
    args = [str(layout) if a == "LAYOUT" else a for a in args]
    assert main([*args, "--model", str(path), "--seed", "3", "--outdir", str(tmp_path / "out"), "--quiet",
                 "--device", "cpu"]) == 0
    written = capsys.readouterr().out.split()
    assert written and all(Path(p).is_file() for p in written)
    info = read_infotext(written[0])
    assert info["seed"] == 3 and info["steps"] == 2
    assert main(["txt2img", "--model", str(path), "--prompt", "x", "--quiet", "--outdir", str(tmp_path)]) == 2
    assert "txt2img (text to image) cannot run this model" in capsys.readouterr().err
