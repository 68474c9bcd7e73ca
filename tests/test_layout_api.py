"""The /layout endpoint through gradio_client, against the shared `python app.py` (conftest.app_server,
whose tiny-layout model reads the shapes world's 24 classes, at most 3 objects): the text format and
JSON both generate, the PNG carries the layout, and each bad layout is one plain sentence."""
import json

import numpy as np
import pytest
from gradio_client.exceptions import AppError
from PIL import Image

from core.pipelines import read_infotext

from conftest import STEPS
from test_app_api import _error, _png


def test_layout_endpoint_text_and_json(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/layout"]["parameters"]
    assert api[0]["parameter_name"] == "layout"
    assert not [p["parameter_name"] for p in api if not p["parameter_has_default"]]

    text = "circle red 0.1 0.1 0.4 0.4\nstar blue 0.55 0.5 0.9 0.85"
    gallery, info, job_id = client.predict(text, seed=7, api_name="/layout")
    with Image.open(_png(gallery[0])) as im:
        assert im.size == (64, 64)
        params = read_infotext(im)
    assert params["layout"] == [[0, 0.1, 0.1, 0.4, 0.4], [20, 0.55, 0.5, 0.9, 0.85]]
    assert params["seed"] == 7 and params["steps"] == STEPS and params["model"] == "tiny-layout"
    assert 'Layout: "[[0,0.1,0.1,0.4,0.4],[20,0.55,0.5,0.9,0.85]]"' in info and job_id

    as_json = json.dumps([[0, 0.1, 0.1, 0.4, 0.4], [20, 0.55, 0.5, 0.9, 0.85]])
    gallery2, _, _ = client.predict(as_json, seed=7, batch_count=2, api_name="/layout")
    assert len(gallery2) == 2
    with Image.open(_png(gallery[0])) as a, Image.open(_png(gallery2[0])) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))         # the same layout, the same seed


@pytest.mark.parametrize("layout, message", [
    ("circle red 0.6 0.1 1.3 0.4", "line 1: the box 0.6 0.1 1.3 0.4 reaches outside the image"),   # off the canvas
    ("circle red 0.1 0.1 0.4 0.4\nstar blue 0.5 0.5 0.5 0.9", "line 2: the box 0.5 0.5 0.5 0.9 has no area"),
    ("circle red 0 0 0.1 0.1\n" * 4, "the layout has 4 objects; this model takes at most 3"),
    ("hexagon red 0.1 0.1 0.4 0.4", "line 1: unknown label 'hexagon red'; this model's labels are a shape"),
    ("circle red 0.1 0.1 0.4", "line 1: 'circle red 0.1 0.1 0.4' needs a label and four numbers"),
    ("[[0, 0.1, 0.1]]", "object 1: give [class, x0, y0, x1, y1]"),
    ("", "The layout is empty: draw a box on the canvas"),
])
def test_layout_endpoint_bad_layouts(client, layout, message):
    assert message in _error(client, "/layout", layout=layout)


def test_layout_endpoint_refuses_a_model_of_another_task(client):
    with pytest.raises(AppError, match="is not a layout-to-image model"):
        client.predict("circle red 0.1 0.1 0.4 0.4", model="tiny-txt2img.safetensors", api_name="/layout")


def test_layout_endpoint_background(client):
    text = "circle red 0.017 0.017 0.317 0.317"
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/layout"]["parameters"]
    assert [p for p in api if p["parameter_name"] == "background"][0]["parameter_default"] == "any"
    gallery, info, _ = client.predict(text, model="tiny-layout_bg.safetensors", background="black", seed=3,
                                      api_name="/layout")
    with Image.open(_png(gallery[0])) as im:
        assert read_infotext(im)["background"] == "black" and "Background: black" in info
    gallery, _, _ = client.predict(text, model="tiny-layout_bg.safetensors", seed=3, api_name="/layout")
    with Image.open(_png(gallery[0])) as im:
        assert read_infotext(im)["background"] in ("white", "black", "gray")      # drawn from the seed
    assert "unknown background 'pink'" in _error(client, "/layout", layout=text, model="tiny-layout_bg.safetensors",
                                                 background="pink")
    assert "was not trained with a background" in _error(client, "/layout", layout=text, background="gray")
