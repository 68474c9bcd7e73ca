"""`/outpaint` and `/inpaint`'s soft inpainting through gradio_client, against the shared live
app.py (conftest.app_server, --max-size 1024): the picture grows, the original is kept outside the
overlap band, bad sides are one plain sentence and the server still works."""
import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

from core.pipelines import read_infotext

from browser_util import sample_image
from test_app_api import _error, _png, _still_works


def _editor(path) -> dict:
    return {"background": handle_file(str(path)), "layers": [], "composite": None}


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_outpaint_endpoint_is_prompt_first_and_defaulted(client):
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/outpaint"]["parameters"]
    assert params[0]["parameter_name"] == "prompt"
    assert all(p["parameter_has_default"] for p in params)
    names = [p["parameter_name"] for p in params]
    assert {"left", "right", "top", "bottom", "fill", "overlap", "soft_inpainting"} <= set(names)


def test_outpaint_right_64_and_again_below(client, tmp_path):
    source = sample_image(tmp_path / "in.png", (64, 64))
    gallery, info, _ = client.predict("a green triangle", image=_editor(source), right=64, overlap=16, seed=5,
                                      api_name="/outpaint")
    out = _png(gallery[0])
    grown = _pixels(out)
    assert grown.shape == (64, 128, 3)
    assert np.array_equal(grown[:, :48], _pixels(source)[:, :48])          # outside the 16 px band
    params = read_infotext(out)
    assert (params["outpaint"], params["outpaint_overlap"], params["task"]) == ("right 64", 16, "outpaint")
    assert "Outpaint: right 64" in info
    # The result, grown again (what "Use the result as the image" does in the tab).
    gallery, _, _ = client.predict("x", image=_editor(out), bottom=32, fill="latent_noise", soft_inpainting=True,
                                   seed=5, api_name="/outpaint")
    again = _png(gallery[0])
    assert _pixels(again).shape == (96, 128, 3)
    assert read_infotext(again)["soft_inpainting"] is True


@pytest.mark.parametrize("kwargs, words", [
    ({"right": 20}, "right 20 is not a multiple of 16"),
    ({"left": -16}, "left must be 0 or more"),
    ({"top": 1024}, "gives 64x1088 px; at most 1024 px per side (--max-size)"),
    ({}, "nothing to outpaint"),
    ({"right": 16, "fill": "sideways"}, "not in the list of choices: ['edge'"),
])
def test_outpaint_bad_inputs_are_plain_errors(client, tmp_path, kwargs, words):
    source = sample_image(tmp_path / "in.png", (64, 64))
    message = _error(client, "/outpaint", prompt="x", image=_editor(source), **kwargs)
    assert words in message, message
    _still_works(client)


def test_outpaint_without_an_image(client):
    assert "Upload an image to outpaint" in _error(client, "/outpaint", prompt="x", right=64)


def test_soft_inpainting_keeps_a_grey_mask(client, tmp_path):
    source = sample_image(tmp_path / "in.png", (64, 64))
    grey = np.zeros((64, 64), np.uint8)
    grey[16:48, 16:48] = 100                                                 # below 128: plain inpainting's "keep"
    grey[16:48, 32:48] = 255
    Image.fromarray(grey, "L").save(tmp_path / "mask.png")
    common = dict(image=_editor(source), mask=handle_file(str(tmp_path / "mask.png")), mask_blur=0, seed=3,
                  api_name="/inpaint")
    plain, _, _ = client.predict("x", **common)
    soft, info, _ = client.predict("x", soft_inpainting=True, **common)
    before, hard, partial = _pixels(source), _pixels(_png(plain[0])), _pixels(_png(soft[0]))
    assert np.array_equal(hard[16:48, 16:32], before[16:48, 16:32])         # grey 100 binarised away
    assert np.abs(partial[16:48, 16:32] - before[16:48, 16:32]).mean() > 0.5   # ... kept as a partial change
    assert np.array_equal(partial[:16], before[:16])                         # mask 0: untouched
    assert "Soft inpainting enabled: True" in info
