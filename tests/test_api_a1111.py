"""AUTOMATIC1111's /sdapi/v1 (ui/api_a1111.py) through FastAPI's TestClient, on the tiny models the
live-server fixture uses (conftest.write_tiny_weights): the bodies real clients send, replayed as
they build them, the login, and bad input (422 naming the field, 413 for oversized images)."""
import base64
import io
import json
import logging
import threading
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from conftest import STEPS, write_tiny_weights
from ui.api_a1111 import api_router
from ui.settings import AppSettings
from ui.studio import Studio

LOGIN = ("api-user", "api-pass")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    write_tiny_weights(root / "weights")
    settings = AppSettings(weights_dir=root / "weights", outputs_dir=root / "outputs", runs_dir=root / "runs",
                           max_side=512, max_upload_mb=1, api=True, api_auth=(LOGIN,))
    return Studio.create(settings)


@pytest.fixture(scope="module")
def client(studio):
    app = FastAPI()
    app.include_router(api_router(studio))
    with TestClient(app) as c:
        c.auth = LOGIN
        yield c


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def picture(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    image.paste((200, 30, 30), (16, 16, 48, 48))
    return image


# ---- login ------------------------------------------------------------------------------------------
def test_without_credentials_401_and_with_them_200(client):
    assert client.get("/sdapi/v1/sd-models", auth=None).status_code == 401
    wrong = client.get("/sdapi/v1/sd-models", auth=("api-user", "nope"))
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Basic"
    assert client.post("/sdapi/v1/txt2img", auth=None, json={"prompt": "x"}).status_code == 401
    assert client.get("/sdapi/v1/sd-models").status_code == 200


def test_logins_fall_back_to_auth():
    assert AppSettings(auth=(("a", "b"),)).api_logins == (("a", "b"),)
    assert AppSettings(auth=(("a", "b"),), api_auth=(("c", "d"),)).api_logins == (("c", "d"),)


# ---- what clients send --------------------------------------------------------------------------------
def test_open_webui_flow(client):
    """Open WebUI, backend/open_webui/routers/images.py: set_image_model() GETs /options and POSTs the
    whole dict back with sd_model_checkpoint changed (titles from /sd-models), then
    image_generations() posts this txt2img body (batch_size = n, size from its IMAGE_SIZE setting)."""
    models = client.get("/sdapi/v1/sd-models").json()
    txt2img_title = next(m["title"] for m in models if m["model_name"] == "tiny-txt2img")
    assert txt2img_title.startswith("tiny-txt2img.safetensors [") and len(txt2img_title.split("[")[1]) == 11
    options = client.get("/sdapi/v1/options").json()
    options["sd_model_checkpoint"] = txt2img_title
    assert client.post("/sdapi/v1/options", json=options).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == txt2img_title

    body = {"prompt": "a red square", "batch_size": 2, "width": 64, "height": 64, "steps": STEPS,
            "negative_prompt": "blue"}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    info = json.loads(out["info"])
    assert len(out["images"]) == 2 and len(info["all_seeds"]) == 2 and info["all_seeds"][1] == info["seed"] + 1
    assert info["sd_model_checkpoint"] == txt2img_title and info["batch_size"] == 2
    assert out["parameters"]["prompt"] == "a red square"
    image = decoded(out["images"][0])
    assert image.size == (64, 64)
    assert image.info["parameters"] == info["infotexts"][0] and "Negative prompt: blue" in info["infotexts"][0]


def test_sillytavern_body_with_unknown_fields_warned(client, caplog):
    """SillyTavern, public/scripts/extensions/stable-diffusion/index.js generateAutoImage(): the
    body, forwarded whole by src/endpoints/stable-diffusion.js POST /generate (url and auth
    included); before it, /set-model POSTs {sd_model_checkpoint} and polls /progress until
    progress 0 and job_count 0."""
    title = next(m["title"] for m in client.get("/sdapi/v1/sd-models").json() if m["model_name"] == "tiny-txt2img")
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": title}).status_code == 200
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0
    body = {"url": "http://127.0.0.1:7860", "auth": "api-user:api-pass",
            "prompt": "best quality, absurdres, aesthetic, (red:1.2) circle", "negative_prompt": "lowres, bad anatomy",
            "sampler_name": "DPM++ 2M", "scheduler": "Karras", "steps": STEPS, "cfg_scale": 7, "width": 64,
            "height": 64, "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2.0,
            "hr_additional_modules": [], "denoising_strength": 0.7, "hr_second_pass_steps": 0, "seed": 1234,
            "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"},
            "override_settings_restore_afterwards": True, "save_images": True, "send_images": True,
            "do_not_save_grid": False, "do_not_save_samples": False, "alwayson_scripts": {"ADetailer": {"args": []}}}
    with caplog.at_level(logging.WARNING, logger="ldm_studio.api"):
        r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["seed"] == 1234 and info["sampler_name"] == "DPM++ 2M"
    assert "Schedule type: Karras" in info["infotexts"][0]
    warned = " ".join(rec.getMessage() for rec in caplog.records)
    for name in ("url", "auth", "alwayson_scripts.ADetailer", "override_settings.sd_vae"):
        assert name in warned
    assert "restore_faces" not in warned and "send_images" not in warned


def test_batch_count_times_batch_size_and_sampler_index(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "n_iter": 2, "batch_size": 2, "seed": 7,
                                               "sampler_index": "Euler a", "steps": STEPS})
    info = json.loads(r.json()["info"])
    assert info["all_seeds"] == [7, 8, 9, 10] and len(r.json()["images"]) == 4
    assert info["sampler_name"] == "Euler a"
    both = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_index": "Euler a", "sampler_name": "DDIM",
                                                  "steps": STEPS})
    assert json.loads(both.json()["info"])["sampler_name"] == "DDIM"


def test_unknown_sampler_falls_back_with_a_warning(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "Restart", "steps": STEPS})
    assert r.status_code == 200
    assert any("Restart" in w for w in json.loads(r.json()["info"])["warnings"])


def test_hires_fix_fields(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Lanczos",
                                               "denoising_strength": 0.5, "hr_second_pass_steps": 2, "steps": STEPS,
                                               "sampler_name": "Euler", "scheduler": "Exponential"})
    assert r.status_code == 200, r.text
    image = decoded(r.json()["images"][0])
    assert image.size == (128, 128)
    assert "Hires upscaler: Lanczos" in image.info["parameters"] and "Denoising strength: 0.5" in image.info["parameters"]
    assert "Schedule type: Exponential" in image.info["parameters"]       # the hires pass takes it too


def test_img2img_and_inpaint_with_mask(client):
    """webuiapi's img2img(images=[...], mask_image=...) body fields (A1111 names and defaults)."""
    body = {"init_images": [png_b64(picture())], "prompt": "a red square", "denoising_strength": 0.5,
            "resize_mode": 0, "steps": STEPS, "seed": 3, "sampler_name": "DDIM"}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    assert "Denoising strength: 0.5" in json.loads(r.json()["info"])["infotexts"][0]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 44, 44))
    body.update(mask=png_b64(mask), mask_blur=2, inpainting_fill=1, inpaint_full_res=False,
                inpaint_full_res_padding=32, inpainting_mask_invert=0, denoising_strength=1.0)
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    out = decoded(r.json()["images"][0]).convert("RGB")
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Masked content: original" in text and "Inpaint area: Whole picture" in text and "Mask blur: 2" in text
    assert out.getpixel((2, 2)) == (255, 255, 255)          # outside the mask: unchanged
    empty = dict(body, mask=png_b64(Image.new("L", (64, 64), 0)))
    r = client.post("/sdapi/v1/img2img", json=empty)
    assert r.status_code == 422 and "mask" in r.json()["detail"]


def test_img2img_soft_inpainting_alwayson_script(client, caplog):
    """A1111's alwayson "Soft inpainting" script (args[0] = enabled): a grey mask is kept grey."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(100, (16, 16, 48, 48))                        # below 128: plain inpainting keeps it all
    mask.paste(255, (32, 16, 48, 48))
    body = {"init_images": [png_b64(picture())], "prompt": "x", "steps": STEPS, "seed": 3, "sampler_name": "DDIM",
            "mask": png_b64(mask), "mask_blur": 0, "inpainting_fill": 1, "denoising_strength": 1.0}
    plain = client.post("/sdapi/v1/img2img", json=body)
    with caplog.at_level(logging.WARNING, logger="ldm_studio.api"):
        soft = client.post("/sdapi/v1/img2img", json=dict(body, alwayson_scripts={
            "Soft inpainting": {"args": [True, 1, 0.5, 4, 0, 0.5, 2]}}))
    assert plain.status_code == soft.status_code == 200, soft.text
    assert "Soft inpainting enabled: True" in json.loads(soft.json()["info"])["infotexts"][0]
    assert "ignored" not in caplog.text and "only its first argument" in caplog.text
    before = picture().crop((16, 16, 32, 48))
    kept = decoded(plain.json()["images"][0]).convert("RGB").crop((16, 16, 32, 48))
    partial = decoded(soft.json()["images"][0]).convert("RGB").crop((16, 16, 32, 48))
    assert kept.tobytes() == before.tobytes() and partial.tobytes() != before.tobytes()
    r = client.post("/sdapi/v1/img2img", json=dict(body, alwayson_scripts={"Soft inpainting": {"args": "yes"}}))
    assert r.status_code == 422 and "Soft inpainting" in r.json()["detail"]


def test_extra_single_image_with_our_sr_model_and_lanczos(client):
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert names[:3] == ["None", "Lanczos", "Nearest"] and "tiny-sr" in names
    for upscaler in ("tiny-sr", "Lanczos"):
        r = client.post("/sdapi/v1/extra-single-image",
                        json={"image": png_b64(picture((32, 32))), "upscaler_1": upscaler, "upscaling_resize": 2})
        assert r.status_code == 200, r.text
        image = decoded(r.json()["image"])
        assert image.size == (64, 64) and f"Upscaler: {upscaler}" in image.info["parameters"]
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(picture()), "upscaler_1": "R-ESRGAN 4x+"})
    assert r.status_code == 422 and "upscaler_1" in r.json()["detail"]


def test_png_info_reads_what_txt2img_wrote(client):
    made = client.post("/sdapi/v1/txt2img", json={"prompt": "a (red:1.1) circle", "seed": 11, "steps": STEPS}).json()
    r = client.post("/sdapi/v1/png-info", json={"image": made["images"][0]})
    assert r.status_code == 200
    assert r.json()["info"] == json.loads(made["info"])["infotexts"][0]
    params = r.json()["parameters"]
    assert params["Prompt"] == "a (red:1.1) circle" and params["Seed"] == 11 and params["Steps"] == STEPS


def test_listings(client):
    assert {"Euler a", "DPM++ 2M", "DDIM"} <= {s["name"] for s in client.get("/sdapi/v1/samplers").json()}
    assert {"Automatic", "Karras"} <= {s["label"] for s in client.get("/sdapi/v1/schedulers").json()}
    assert client.get("/sdapi/v1/sd-vae").json() == []
    assert client.get("/sdapi/v1/loras").json() == []
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert "ram" in client.get("/sdapi/v1/memory").json()
    assert "tiny-sr" not in str(client.get("/sdapi/v1/sd-models").json())


# ---- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("steps", "many"), ("batch_size", "x"), ("seed", [1]), ("enable_hr", "maybe")])
def test_wrong_types_are_422_naming_the_field(client, field, value):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", field: value})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field


def test_bad_values_are_422_in_words(client):
    for body, word in (({"steps": 1001}, "steps"), ({"width": 4096}, "width"), ({"n_iter": 99}, "Batch count"),
                       ({"scheduler": "Wobbly"}, "schedule type")):
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **body})
        assert r.status_code == 422 and word in r.json()["detail"], r.text
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors"})
    assert r.status_code == 422 and "sd_model_checkpoint" in r.json()["detail"]
    r = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": ["not base64 at all!"]})
    assert r.status_code == 422 and "init_images" in r.json()["detail"]


def test_oversized_images_are_413(client):
    too_wide = png_b64(Image.new("RGB", (600, 8)))                   # the fixture's --max-size is 512
    r = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [too_wide]})
    assert r.status_code == 413 and "600x8" in r.json()["detail"]
    too_big = "A" * (2 * 2**20)                                       # over --max-upload-mb 1
    assert client.post("/sdapi/v1/png-info", json={"image": too_big}).status_code == 413
    assert client.post("/sdapi/v1/extra-single-image", json={"image": too_big}).status_code == 413


# ---- progress and interrupt ----------------------------------------------------------------------------
def test_progress_with_preview_then_interrupt(client):
    answer = {}
    thread = threading.Thread(target=lambda: answer.setdefault(
        "r", client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1000, "sampler_name": "Euler"})))
    thread.start()
    deadline, seen = time.monotonic() + 60, None
    try:
        while time.monotonic() < deadline:
            seen = client.get("/sdapi/v1/progress").json()
            if seen["progress"] > 0 and seen["current_image"]:
                break
            time.sleep(0.05)
    finally:
        assert client.post("/sdapi/v1/interrupt").status_code == 200
        thread.join(60)
    assert seen["progress"] > 0 and seen["state"]["job_count"] == 1 and seen["state"]["sampling_steps"] == 1000
    assert decoded(seen["current_image"]).format == "PNG"
    r = answer["r"]
    assert r.status_code == 200 and len(r.json()["images"]) == 1          # the estimate at the stop
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


# ---- mounting on the Gradio app ---------------------------------------------------------------------------
def test_routes_come_before_gradios_on_the_app_server(studio):
    import gradio as gr
    from ui.blocks import build_app, launch_options
    assert "app_kwargs" not in launch_options(AppSettings(outputs_dir=studio.settings.outputs_dir))
    demo = build_app(studio.settings, studio)
    app = gr.routes.App.create_app(demo, app_kwargs=launch_options(studio.settings, studio)["app_kwargs"])
    with TestClient(app) as c:
        assert c.get("/sdapi/v1/samplers").status_code == 401
        assert c.get("/sdapi/v1/samplers", auth=LOGIN).status_code == 200
        assert c.get("/config").status_code == 200


def test_api_without_a_login_on_the_network_warns(studio, monkeypatch, capsys):
    import gradio as gr

    import app
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    common = ["--weights", str(studio.settings.weights_dir), "--outputs", str(studio.settings.outputs_dir),
              "--runs", str(studio.settings.runs_dir), "--device", "cpu"]
    app.main(["--api", "--listen", *common])
    assert "--api without --api-auth or --auth" in capsys.readouterr().err
    assert any(getattr(r, "path", "") == "/sdapi/v1/txt2img" for r in launched[-1]["app_kwargs"]["routes"])
    app.main(["--api", "--listen", "--api-auth", "a:b", *common])
    assert "--api without" not in capsys.readouterr().err
    app.main(common)                                        # no --api: launched exactly as before
    assert "app_kwargs" not in launched[-1]
