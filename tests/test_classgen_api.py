"""The Class / unconditional tab's `/class` endpoint through gradio_client, against the live app
(conftest.app_server: tiny-class, a 24-class shapes model with a null class, and tiny-uncond):
class -1 is "no class" (unconditional models), names are recorded ("Class: N (name)"), bad inputs
give one plain sentence, and sizes above the native one are tiled and say so."""
import pytest
from gradio_client import handle_file

from core.pipelines import read_infotext

from test_app_api import _error, _png

CLASS, UNCOND = "tiny-class.safetensors", "tiny-uncond.safetensors"


def test_class_endpoint_is_listed_with_defaults(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = api["/class"]["parameters"]
    assert params[0]["parameter_name"] == "class_label" and params[0]["parameter_default"] == -1
    assert all(p["parameter_has_default"] for p in params)
    assert {"model", "guidance_scale", "seed", "width", "native_tiling"} <= {p["parameter_name"] for p in params}


def test_a_named_class_then_png_info_reads_it_back(client):
    gallery, info, job_id = client.predict(20, model=CLASS, seed=7, batch_count=2, api_name="/class")
    assert len(gallery) == 2 and job_id
    params = read_infotext(_png(gallery[1]))
    assert params["class_label"] == 20 and params["class_name"] == "star blue" and params["seed"] == 8
    assert params["guidance_scale"] == 3.0 and params["task"] == "class"          # guided by the null class
    assert "Class: 20 (star blue)" in info
    text, fields = client.predict(image=handle_file(str(_png(gallery[0]))), api_name="/png_info")
    assert fields["class_label"] == 20 and "Class: 20 (star blue)" in text


def test_unconditional_and_larger_than_trained(client):
    gallery, info, _ = client.predict(model=UNCOND, seed=3, width=64, height=32, native_tiling=True, api_name="/class")
    params = read_infotext(_png(gallery[0]))
    assert params["task"] == "unconditional" and "class_label" not in params
    assert params["width"] == 64 and params["tiled_diffusion"] == "32 px tiles overlapping 16 px"
    gallery, _, _ = client.predict(model=UNCOND, seed=3, width=64, height=32, api_name="/class")   # default: off
    assert "tiled_diffusion" not in read_infotext(_png(gallery[0]))
    gallery, _, _ = client.predict("a red circle", seed=2, width=128, height=64, native_tiling=True,
                                   api_name="/txt2img")
    assert read_infotext(_png(gallery[0]))["tiled_diffusion"] == "64 px tiles overlapping 32 px"     # native 64


@pytest.mark.parametrize("kwargs, words", [
    (dict(class_label=24, model=CLASS), "a number from 0 to 23"),
    (dict(class_label=-1, model=CLASS), "Pick a class"),
    (dict(class_label=3, model=UNCOND), "takes no class"),
    (dict(model=UNCOND, guidance_scale=3.0), "nothing to guide towards"),
    (dict(class_label=1, model="tiny-txt2img.safetensors"), "is not a class-conditional or unconditional model"),
])
def test_bad_inputs_are_one_sentence_and_the_next_request_works(client, kwargs, words):
    assert words in _error(client, "/class", **kwargs)
    gallery, _, _ = client.predict(1, model=CLASS, seed=1, api_name="/class")
    assert len(gallery) == 1

