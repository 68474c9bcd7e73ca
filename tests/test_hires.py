"""Hires fix: a first pass at the model's size, upscaled (latent, Lanczos or our SR model), then a
second img2img pass with the same seed; recorded with A1111's keys and read back."""
import numpy as np
import pytest

from core import pipelines as P
from core.pipelines.hires import HiresSettings, txt2img_hires
from tests.tiny_models import tiny_model


@pytest.fixture(scope="module")
def sd2():
    return tiny_model("sd2")


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos"])
def test_hires_fix_doubles_the_size_and_records_its_keys(sd2, upscaler):
    hires = HiresSettings(scale=2, upscaler=upscaler, steps=2, strength=0.6)
    out = txt2img_hires(sd2, "a red circle", hires, steps=2, seed=4, width=32, height=32, n=2, batch_size=2)
    assert [im.size for im in out] == [(64, 64), (64, 64)]
    info = P.read_infotext(out[1])
    assert (info["seed"], info["hr_scale"], info["hr_upscaler"], info["hr_steps"], info["strength"]) == \
        (5, 2.0, upscaler, 2, 0.6)
    assert "Hires upscale: 2, Hires steps: 2" in out[0].info["parameters"]
    again = txt2img_hires(sd2, "a red circle", hires, steps=2, seed=5, width=32, height=32)[0]
    assert np.abs(np.asarray(again, np.int16) - np.asarray(out[1], np.int16)).max() <= 1   # seed alone decides


def test_hires_fix_with_a_target_size_and_our_sr_model(sd2):
    sr = tiny_model("ldm_sr")
    hires = HiresSettings(width=64, height=48, upscaler="model", steps=1, strength=0.5)
    out = txt2img_hires(sd2, "x", hires, steps=2, seed=1, width=32, height=32, sr_model=sr)[0]
    assert out.size == (64, 48)
    assert P.read_infotext(out)["hr_resize"] == "64x48"
    with pytest.raises(ValueError, match="needs a super-resolution model"):
        txt2img_hires(sd2, "x", hires, steps=1, width=32, height=32)


def test_hires_second_pass_is_tiled_when_large(sd2, monkeypatch):
    from core.pipelines import hires as H
    calls = []
    real = H.tiled
    monkeypatch.setattr(H, "tiled", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(H, "TILE_FROM", 8)                  # the tiny model's comfortable size
    out = txt2img_hires(sd2, "x", HiresSettings(scale=4, steps=1, strength=0.5), steps=1, seed=0,
                        width=64, height=32)[0]
    assert out.size == (256, 128) and calls                 # a 32x16 latent > 8


def test_hires_refuses_bad_settings_before_any_work(sd2):
    with pytest.raises(ValueError, match="hires upscaler must be one of"):
        HiresSettings(upscaler="ESRGAN_4x")
    with pytest.raises(ValueError, match="strength must be"):
        HiresSettings(strength=0)
    with pytest.raises(ValueError, match="too large for the hires pass"):
        txt2img_hires(sd2, "x", HiresSettings(scale=8), width=512, height=512, steps=1)


def test_hires_fix_from_the_cli(tmp_path, capsys):
    from core import save_model
    from core.generate import main
    path = save_model(tiny_model("sd2"), tmp_path / "m.safetensors", metadata={"ldm_studio_defaults":
                                                                               '{"steps": 2, "width": 32, "height": 32}'})
    assert main(["txt2img", "--model", str(path), "--prompt", "x", "--seed", "2", "--hires", "--hires-steps", "1",
                 "--hires-upscaler", "Lanczos", "--outdir", str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 0
    written = capsys.readouterr().out.split()
    assert P.read_infotext(written[0])["hr_upscaler"] == "Lanczos"
    assert main(["txt2img", "--model", str(path), "--prompt", "x", "--hires", "--hires-upscaler", "ESRGAN",
                 "--quiet", "--outdir", str(tmp_path / "out")]) == 2
    assert "hires upscaler must be one of" in capsys.readouterr().err
