"""The `webuiapi` package (AUTOMATIC1111's Python client) against a real `python app.py --api`
on the tiny test models: txt2img, img2img with a mask, extra-single-image, png-info, the model
switch through options, progress and interrupt; the Gradio app still answers beside it."""
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from conftest import STEPS, running_app, write_tiny_weights

webuiapi = pytest.importorskip("webuiapi")
USER, PASSWORD = "client", "secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("live-api")
    write_tiny_weights(root / "weights")
    args = ["--api", "--api-auth", f"{USER}:{PASSWORD}", "--weights", str(root / "weights"),
            "--outputs", str(root / "outputs"), "--runs", str(root / "runs"), "--max-size", "1024"]
    with running_app(root, args) as (url, _, _):
        yield int(url.rsplit(":", 1)[1].strip("/")), root


@pytest.fixture(scope="module")
def api(server):
    return webuiapi.WebUIApi(port=server[0], username=USER, password=PASSWORD, sampler="DDIM", steps=STEPS)


def test_login_is_required(server):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{server[0]}/sdapi/v1/options", timeout=10)
    assert err.value.code == 401
    with urllib.request.urlopen(f"http://127.0.0.1:{server[0]}/config", timeout=10) as r:   # the UI: no --auth
        assert r.status == 200


def test_txt2img_png_info_and_model_switch(api):
    titles = api.util_get_model_names()
    assert any(t.startswith("tiny-txt2img.safetensors [") for t in titles)
    api.util_set_model("tiny-txt2img")
    assert api.util_get_current_model().startswith("tiny-txt2img.safetensors [")
    result = api.txt2img(prompt="a (red:1.2) circle", negative_prompt="blue", seed=42, width=64, height=64,
                         batch_size=2, cfg_scale=3)
    assert len(result.images) == 2 and result.images[0].size == (64, 64)
    assert result.info["all_seeds"] == [42, 43]
    assert result.images[0].info["parameters"] == result.info["infotexts"][0]
    read = api.png_info(result.images[0])
    assert read.info == result.info["infotexts"][0]


def test_img2img_with_a_mask_and_extra_single_image(api):
    image = Image.new("RGB", (64, 64), "white")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = api.img2img(images=[image], mask_image=mask, prompt="a red square", denoising_strength=0.9,
                         width=64, height=64, seed=1)
    assert result.images[0].size == (64, 64) and "Task: inpaint" in result.info["infotexts"][0]
    names = [u["name"] for u in api.get_upscalers()]
    assert "tiny-sr" in names
    up = api.extra_single_image(image=Image.new("RGB", (32, 32), "white"), upscaler_1="tiny-sr", upscaling_resize=2)
    assert up.image.size == (64, 64)


def test_progress_and_interrupt(api):
    done = {}
    worker = threading.Thread(target=lambda: done.setdefault("r", api.txt2img(prompt="x", steps=1000, width=64,
                                                                            height=64, sampler_name="Euler")))
    worker.start()
    deadline, progress = time.monotonic() + 60, {}
    try:
        while time.monotonic() < deadline:
            progress = api.get_progress()
            if progress["progress"] > 0:
                break
            time.sleep(0.05)
    finally:
        api.interrupt()
        worker.join(60)
    assert progress["progress"] > 0 and progress["state"]["job_count"] >= 1
    assert len(done["r"].images) == 1
