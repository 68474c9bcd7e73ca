"""Class-conditional and unconditional sampling outside the browser (issue 16 §2): class names from
the model, "Class: N (name)" written and read back, the tab's handler and field updates on an
in-process Studio (a model with and one without a null class), "Send to" taking the class and the
tiling choice, and the CLI's errors."""
import pytest

from core import pipelines as P
from core import save_model
from core.generate import main
from core.pipelines.conditional import class_count, class_names
from tests.tiny_models import tiny_model
from ui.classgen import class_fields, classgen
from ui.send import received
from ui.settings import AppSettings
from ui.studio import Studio


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("classgen")
    families = (("shapes", "shapes_class"), ("cin", "ldm_class"), ("uncond", "ldm_uncond"), ("txt", "sd2"))
    for name, family in families:
        save_model(tiny_model(family), root / "weights" / f"{name}.safetensors",
                   metadata={"ldm_studio_defaults": '{"steps": 2}'})
    settings = AppSettings(weights_dir=root / "weights", outputs_dir=root / "outputs", runs_dir=root / "runs")
    return Studio.create(settings)


def _run(handler_output):
    *_, last = handler_output
    return last


def test_class_names_and_counts():
    shapes, cin = tiny_model("shapes_class"), tiny_model("ldm_class")
    assert class_count(shapes) == 24 and class_count(cin) == 11                # the null class is not a class
    names = class_names(shapes)
    assert names[0] == "circle red" and names[20] == "star blue" and len(names) == 24 == len(set(names))
    assert class_names(cin) is None and class_names(cin.config) is None
    with pytest.raises(ValueError, match="sample_class"):
        class_count(tiny_model("ldm_uncond"))
    with pytest.raises(ValueError, match=r"in \[0, 23\] \(24 is the null class"):
        P.sample_class(shapes, 24, steps=1)


def test_class_is_written_with_its_name_and_read_back():
    image = P.sample_class(tiny_model("shapes_class"), 9, steps=1, seed=2)[0]
    assert "Class: 9 (square yellow)" in image.info["parameters"]
    back = P.read_infotext(image)
    assert back["class_label"] == 9 and back["class_name"] == "square yellow"
    plain = P.sample_class(tiny_model("ldm_class"), 4, steps=1, seed=2)[0]
    assert "Class: 4," in plain.info["parameters"] and "class_name" not in P.read_infotext(plain)


def test_tab_fields_follow_the_model(studio):
    names, number, note = class_fields(studio, "shapes.safetensors", 5)
    assert names["visible"] and names["value"] == 5 and names["choices"][5] == ("circle orange", 5)
    assert not number["visible"] and "null class" in note
    names, number, note = class_fields(studio, "cin.safetensors", 40)
    assert not names["visible"] and number["visible"] and number["maximum"] == 10 and number["value"] == 0
    assert "no null class, so guidance is off" in note
    names, number, note = class_fields(studio, "uncond.safetensors", 3)
    assert not names["visible"] and not number["visible"] and number["value"] == -1 and "Unconditional" in note
    assert [v for _, v in studio.models.choices("classgen")] == ["cin.safetensors", "shapes.safetensors",
                                                                 "uncond.safetensors"]


def test_handler_runs_both_kinds_and_refuses_guidance_without_a_null_class(studio):
    _, info, _ = _run(classgen(studio, 3, "cin.safetensors", seed=1))
    assert "Class: 3," in info and "CFG scale: 1" in info
    _, info, _ = _run(classgen(studio, -1, "uncond.safetensors", seed=1, width=64, height=64, native_tiling=True))
    assert "Task: unconditional" in info and "Tiled diffusion: 32 px tiles overlapping 16 px" in info
    with pytest.raises(Exception, match="no null class"):
        _run(classgen(studio, 3, "cin.safetensors", guidance_scale=3.0))
    with pytest.raises(Exception, match="Class must be a whole number"):
        _run(classgen(studio, 2.5, "cin.safetensors"))
    with pytest.raises(Exception, match="not a class-conditional or unconditional model"):
        _run(classgen(studio, 3, "txt.safetensors"))


def test_send_takes_the_class_and_the_tiling_choice(studio):
    params = P.parse_infotext("\nSteps: 2, Sampler: DDIM, CFG scale: 3, Seed: 5, Size: 64x64, Model: shapes, "
                              "Class: 20 (star blue), Tiled diffusion: off, Task: class")
    values, notes = received(studio, "classgen", params, ("model", "class_label", "seed", "native_tiling", "width"))
    assert values == ["shapes.safetensors", 20, 5, False, 64] and not notes
    values, notes = received(studio, "txt2img", params, ("prompt", "seed", "native_tiling"))
    assert values[1:] == [5, False] and notes == ["not used here: Class 20"]


def test_cli_class_errors(tmp_path, capsys):
    meta = {"ldm_studio_defaults": '{"steps": 1}'}
    shapes = save_model(tiny_model("shapes_class"), tmp_path / "s.safetensors", metadata=meta)
    uncond = save_model(tiny_model("ldm_uncond"), tmp_path / "u.safetensors", metadata=meta)
    out = ["--quiet", "--outdir", str(tmp_path / "out"), "--device", "cpu"]
    assert main(["class", "--model", str(shapes), "--class-label", "30", *out]) == 2
    assert "class_label must be in [0, 23]" in capsys.readouterr().err
    assert main(["class", "--model", str(uncond), "--class-label", "1", *out]) == 2
    assert "sample_class (class-conditional sampling) cannot run this model" in capsys.readouterr().err
    assert main(["uncond", "--model", str(uncond), "--cfg-scale", "3", *out]) == 2
    assert "nothing to guide towards" in capsys.readouterr().err
    assert main(["class", "--model", str(shapes), "--class-label", "22", "--seed", "4", *out]) == 0
    written = capsys.readouterr().out.split()
    assert P.read_infotext(written[0])["class_name"] == "star purple"
