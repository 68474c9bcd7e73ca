"""The refiner from the app: the Text to image tab's handler (the /txt2img Gradio endpoint), its
"Refiner" choices, and A1111's refiner_checkpoint / refiner_switch_at on /sdapi/v1/txt2img, with a
tiny SDXL base and refiner in weights/."""
import base64
import io

import gradio as gr
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from core import save_model
from core.pipelines import parse_infotext, read_infotext
from core.pipelines.infotext import cached_model_hash
from tests.tiny_models import tiny_model
from ui.api_a1111 import api_router
from ui.refiner import NO_REFINER, refiner_choices
from ui.settings import AppSettings
from ui.studio import Studio
from ui.txt2img import txt2img

LOGIN = ("u", "p")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("xl")
    save_model(tiny_model("sdxl"), root / "weights" / "xl_base.safetensors", metadata={"ldm_studio_defaults":
               '{"steps": 2, "width": 64, "height": 64, "sampler": "euler"}'})
    save_model(tiny_model("sdxl_refiner", seed=1), root / "weights" / "xl_refiner.safetensors")
    settings = AppSettings(weights_dir=root / "weights", outputs_dir=root / "outputs", runs_dir=root / "runs",
                           max_side=512, api=True, api_auth=(LOGIN,))
    return Studio.create(settings)


def test_tab_lists_refiners_and_records_the_refiner(studio):
    assert [value for _, value in refiner_choices(studio)] == [NO_REFINER, "xl_refiner.safetensors",
                                                                "xl_base.safetensors"]
    *_, (gallery, info, _) = txt2img(studio, "a photo", model="xl_base.safetensors", seed=4,
                                     refiner="xl_refiner.safetensors", refiner_switch_at=0.5, progress=None)
    params = read_infotext(gallery[0][0] if isinstance(gallery[0], tuple) else gallery[0])
    digest = cached_model_hash(studio.settings.weights_dir / "xl_refiner.safetensors")
    assert (params["refiner"], params["refiner_switch_at"]) == (f"xl_refiner [{digest}]", 0.5)
    with pytest.raises(gr.Error, match="nope.safetensors"):
        list(txt2img(studio, "a photo", model="xl_base.safetensors", refiner="nope.safetensors", progress=None))


def test_a1111_api_refiner_fields(studio):
    app = FastAPI()
    app.include_router(api_router(studio))
    with TestClient(app) as client:
        client.auth = LOGIN
        body = {"prompt": "a photo", "seed": 4, "override_settings": {"sd_model_checkpoint": "xl_base"},
                "refiner_checkpoint": "xl_refiner", "refiner_switch_at": 0.5}
        answer = client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 200, answer.text
        image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
        assert parse_infotext(image.info["parameters"])["refiner_switch_at"] == 0.5
        none = client.post("/sdapi/v1/txt2img", json={**body, "refiner_checkpoint": "None"})
        assert "Refiner" not in Image.open(io.BytesIO(base64.b64decode(none.json()["images"][0]))).info["parameters"]
        bad = client.post("/sdapi/v1/txt2img", json={**body, "refiner_checkpoint": "nope"})
        assert bad.status_code == 422 and "refiner_checkpoint" in bad.text


def test_send_to_text_to_image_sets_the_refiner(studio):
    from ui.send import received
    names = ("prompt", "model", "refiner", "refiner_switch_at")
    params = parse_infotext("a photo\nSteps: 2, Sampler: Euler, Seed: 4, Size: 64x64, Model: xl_base, "
                            "Refiner: xl_refiner [0123456789], Refiner switch at: 0.6")
    values, notes = received(studio, "txt2img", params, names)
    assert values == ["a photo", "xl_base.safetensors", "xl_refiner.safetensors", 0.6] and not notes
    values, notes = received(studio, "txt2img", {**params, "refiner": "gone [0123456789]"}, names)
    assert values[2:] == [gr.skip(), gr.skip()] and "refiner 'gone'" in notes[0]
    _, notes = received(studio, "img2img", params, ("prompt", "model"))
    assert "Refiner xl_refiner [0123456789]" in notes[-1] and "Refiner switch at 0.6" in notes[-1]
