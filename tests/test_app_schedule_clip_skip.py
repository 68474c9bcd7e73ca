"""Schedule type and clip skip in the generation endpoints, through gradio_client against the shared
live app (conftest.app_server): both change the image and are recorded in its parameters, old-style
calls (no `scheduler` / `clip_skip`, or `karras=True`) give the images they gave before, and the PNG
info -> "Send to" path hands both back to the tab's fields."""
import numpy as np
from gradio_client import handle_file
from PIL import Image

from test_app_api import _error, _png
from browser_util import sample_image
from ui.send import received
from ui.settings import AppSettings
from ui.studio import Studio

SD1 = "tiny-txt2img_sd1.safetensors"           # CLIP text encoder with 2 blocks: clip skip 1 or 2


def _run(client, api_name="/txt2img", prompt="a red circle", **kwargs):
    gallery, _, _ = client.predict(prompt, seed=7, api_name=api_name, **kwargs)
    path = _png(gallery[0])
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int), im.info["parameters"], path


def test_old_style_calls_are_unchanged_and_karras_is_the_karras_schedule(client):
    base, text, _ = _run(client, sampler="Euler")
    assert "Schedule type" not in text and "Clip skip" not in text
    same, _, _ = _run(client, sampler="Euler", scheduler="Automatic", clip_skip=1)
    assert np.array_equal(base, same)
    old, old_text, _ = _run(client, sampler="Euler", karras=True)             # an old client's Karras flag
    new, new_text, _ = _run(client, sampler="Euler", scheduler="Karras")
    assert np.array_equal(old, new) and not np.array_equal(old, base)
    assert "Schedule type: Karras" in old_text and "Schedule type: Karras" in new_text
    exp, exp_text, _ = _run(client, sampler="Euler", scheduler="Exponential", karras=True)   # the type wins
    assert "Schedule type: Exponential" in exp_text and "Karras" not in exp_text
    assert not np.array_equal(exp, base) and not np.array_equal(exp, old)
    assert "schedule type" in _error(client, "/txt2img", prompt="x", scheduler="Wobbly").lower()


def test_clip_skip_changes_the_image_on_a_clip_model_and_is_recorded(client, tmp_path):
    one, text, _ = _run(client, model=SD1)
    assert "Schedule type: Karras" in text                       # the model file's default (karras: true)
    two, two_text, _ = _run(client, model=SD1, clip_skip=2)
    assert "Clip skip: 2" in two_text and not np.array_equal(one, two)
    assert "at most 2" in _error(client, "/txt2img", prompt="x", model=SD1, clip_skip=3)
    assert "Clip skip" in _error(client, "/txt2img", prompt="x", model=SD1, clip_skip=1.5)
    # image to image and inpaint take both; the hires pass inherits them
    source = handle_file(str(sample_image(tmp_path / "in.png")))
    _, i2i, _ = _run(client, "/img2img", image=source, model=SD1, scheduler="Exponential", clip_skip=2)
    assert "Schedule type: Exponential" in i2i and "Clip skip: 2" in i2i
    editor = {"background": source, "layers": [], "composite": None}
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 255).save(mask)
    _, inp, _ = _run(client, "/inpaint", image=editor, mask=handle_file(str(mask)), model=SD1,
                     scheduler="SGM Uniform", clip_skip=2)
    assert "Schedule type: SGM Uniform" in inp and "Clip skip: 2" in inp
    _, hires, _ = _run(client, model=SD1, sampler="Euler", scheduler="Exponential", clip_skip=2, enable_hr=True,
                       hr_scale=1.5, hr_steps=1, hr_upscaler="Lanczos")
    assert "Schedule type: Exponential" in hires and "Clip skip: 2" in hires and "Hires steps: 1" in hires


def test_png_info_round_trip_fills_schedule_type_and_clip_skip(client, app_server):
    _, _, path = _run(client, model=SD1, sampler="Euler", scheduler="Exponential", clip_skip=2)
    _, fields = client.predict(image=handle_file(str(path)), api_name="/png_info")
    assert fields["scheduler"] == "exponential" and fields["clip_skip"] == 2
    studio = Studio.create(AppSettings(weights_dir=app_server.weights, outputs_dir=app_server.root / "send-outputs",
                                       runs_dir=app_server.root / "send-runs"))
    names = ("model", "sampler", "scheduler", "clip_skip")
    assert received(studio, "txt2img", fields, names) == ([SD1, "euler", "Exponential", 2], [])
    # A schedule type we lack -> Automatic, a clip skip beyond the model -> 1, each said in a note.
    odd = {**fields, "Schedule type": "Beta", "clip_skip": 5}
    del odd["scheduler"]
    values, notes = received(studio, "txt2img", odd, names)
    assert values == [SD1, "euler", "Automatic", 1]
    assert any("'Beta'" in n for n in notes) and any("clip skip 5" in n for n in notes)
    # The same picture sent to a model whose text encoder takes no clip skip: 1, with a note.
    values, notes = received(studio, "txt2img", {**fields, "model": "tiny-txt2img"}, names)
    assert values[2:] == ["Exponential", 1] and any("clip skip 2" in n for n in notes)
