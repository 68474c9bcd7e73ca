"""The app's named API endpoints through gradio_client, against a real `python app.py` on a free
port serving tiny weights (conftest.app_server): every endpoint works, every bad input gives one
plain sentence (no traceback) and the next request still works."""
import json
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from core.pipelines import read_infotext

from browser_util import bomb_png, sample_image
from conftest import STEPS

GENERATION = ("txt2img", "img2img", "inpaint", "upscale")
ENDPOINTS = GENERATION + ("png_info", "train_start", "train_status", "train_stop")


def _png(item) -> Path:
    """A gallery item / file answer from gradio_client -> the local file path."""
    if isinstance(item, dict):
        item = item.get("image") or item.get("path") or item.get("value")
        if isinstance(item, dict):
            item = item["path"]
    return Path(item)


def _error(client, api_name: str, **kwargs) -> str:
    with pytest.raises(AppError) as caught:
        client.predict(api_name=api_name, **kwargs)
    message = str(caught.value)
    assert "Traceback" not in message and 'File "' not in message, message
    return message


def _still_works(client) -> None:
    gallery, _, _ = client.predict("still up", seed=1, api_name="/txt2img")
    assert len(gallery) == 1


def test_named_endpoints_prompt_first_and_defaulted(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in ENDPOINTS:
        assert f"/{name}" in api, f"/{name} missing; have {sorted(api)}"
    for name in GENERATION:
        params = api[f"/{name}"]["parameters"]
        assert params[0]["parameter_name"] == "prompt"
    for name in ENDPOINTS:
        undefaulted = [p["parameter_name"] for p in api[f"/{name}"]["parameters"] if not p["parameter_has_default"]]
        assert not undefaulted, f"/{name}: {undefaulted} have no default"


def test_txt2img_png_with_parameters_reproducible_never_overwritten(client, app_server):
    gallery, info, job_id = client.predict("a red circle", seed=1234, api_name="/txt2img")
    first = _png(gallery[0])
    with Image.open(first) as im:
        assert im.size == (64, 64)                                 # the model file's defaults
        text = im.info["parameters"]
        pixels = np.asarray(im.convert("RGB"))
    assert text.startswith("a red circle")
    assert f"Steps: {STEPS}" in text and "Seed: 1234" in text and "Size: 64x64" in text
    assert "Seed: 1234" in info
    # Saved under outputs/<date>/ with the parameters inside; the job is on disk by id.
    saved = sorted(app_server.outputs.glob("*/*-1234.png"))
    assert saved, list(app_server.outputs.rglob("*.png"))
    record = json.loads((app_server.outputs / "jobs" / job_id / "job.json").read_text())
    assert record["status"] == "done" and record["images"][0] in {str(p) for p in saved}

    gallery2, _, _ = client.predict("a red circle", seed=1234, api_name="/txt2img")
    with Image.open(_png(gallery2[0])) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), pixels)      # same seed, same image
    assert len(sorted(app_server.outputs.glob("*/*-1234.png"))) == len(saved) + 1   # a new file

    gallery3, _, _ = client.predict("a red circle", seed=99, width=128, height=64, batch_count=2,
                                    api_name="/txt2img")
    assert len(gallery3) == 2
    with Image.open(_png(gallery3[0])) as im:
        assert im.size == (128, 64)


@pytest.mark.parametrize("kwargs, words", [
    ({"width": 50}, "multiple of"),
    ({"steps": -3}, "steps"),
    ({"guidance_scale": -1}, "cfg scale"),
    ({"sampler": "nonsense"}, "choose one of"),
    ({"model": "missing.safetensors"}, "not a text-to-image model"),
    ({"batch_count": 99}, "maximum"),
])
def test_txt2img_bad_inputs_are_plain_errors(client, kwargs, words):
    message = _error(client, "/txt2img", prompt="x", **kwargs)
    assert words.lower() in message.lower(), message
    _still_works(client)


def test_txt2img_batch_size_and_hires_fix(client):
    """Batch count x batch size images, each from its own seed (issue 19 item 11); A1111's hires fix
    fields on /txt2img (issue 17 §3)."""
    gallery, _, _ = client.predict("a red circle", seed=50, batch_count=2, batch_size=2, api_name="/txt2img")
    seeds = [read_infotext(_png(item))["seed"] for item in gallery]
    assert seeds == [50, 51, 52, 53]
    gallery, info, _ = client.predict("a red circle", seed=5, enable_hr=True, hr_scale=2, hr_steps=1,
                                      hr_upscaler="Lanczos", denoising_strength=0.5, api_name="/txt2img")
    with Image.open(_png(gallery[0])) as im:
        assert im.size == (128, 128)                               # 64 px model default, x2
        assert "Hires upscale: 2, Hires steps: 1, Hires upscaler: Lanczos" in im.info["parameters"]
    assert "--max-size" in _error(client, "/txt2img", prompt="x", enable_hr=True, hr_resize_x=100000)


def test_img2img_keeps_the_size(client, tmp_path):
    source = sample_image(tmp_path / "in.png", (64, 64))
    gallery, info, _ = client.predict("a blue square", image=handle_file(str(source)), strength=0.5, seed=3,
                                      api_name="/img2img")
    with Image.open(_png(gallery[0])) as im:
        assert im.size == (64, 64)
        assert "Denoising strength: 0.5" in im.info["parameters"]
    assert _error(client, "/img2img", prompt="x", image=handle_file(str(source)), strength=1.5)


def test_inpaint_changes_inside_the_mask_only(client, tmp_path):
    source = sample_image(tmp_path / "in.png", (64, 64))
    stroke = np.zeros((64, 64, 4), np.uint8)
    stroke[24:40, 24:40] = (255, 255, 255, 255)                    # the painted square, in the alpha
    Image.fromarray(stroke, "RGBA").save(tmp_path / "layer.png")
    editor = {"background": handle_file(str(source)), "layers": [handle_file(str(tmp_path / "layer.png"))],
              "composite": None}
    gallery, _, _ = client.predict("a green triangle", image=editor, mask_blur=0, seed=5, api_name="/inpaint")
    with Image.open(_png(gallery[0])) as im:
        out = np.asarray(im.convert("RGB")).astype(int)
    original = np.asarray(Image.open(source).convert("RGB")).astype(int)
    diff = np.abs(out - original).mean(axis=-1)                     # (H, W)
    inside, far = diff[26:38, 26:38].mean(), np.concatenate([diff[:16].ravel(), diff[48:].ravel()]).mean()
    assert inside > 10 and far < 3, (inside, far)

    # The same with an uploaded mask (white = repaint) instead of strokes.
    Image.fromarray((stroke[..., 3] > 0).astype(np.uint8) * 255, "L").save(tmp_path / "mask.png")
    gallery, _, _ = client.predict("a green triangle", image={"background": handle_file(str(source)), "layers": [],
                                                              "composite": None},
                                   mask=handle_file(str(tmp_path / "mask.png")), mask_blur=0, seed=5,
                                   api_name="/inpaint")
    assert _png(gallery[0]).is_file()


def test_inpaint_without_a_mask_is_a_plain_error(client, tmp_path):
    source = sample_image(tmp_path / "in.png", (64, 64))
    message = _error(client, "/inpaint", prompt="x", image={"background": handle_file(str(source)), "layers": [],
                                                            "composite": None})
    assert "mask is empty" in message
    assert "Upload an image" in _error(client, "/inpaint", prompt="x")
    _still_works(client)


def test_upscale_is_4x_with_before_after(client, tmp_path):
    source = sample_image(tmp_path / "small.png", (48, 32))
    slider, download, info, _ = client.predict(image=handle_file(str(source)), seed=7, api_name="/upscale")
    with Image.open(_png(download)) as im:
        assert im.size == (192, 128)
        assert "parameters" in im.info
    before, after = (_png(x) for x in slider)
    assert Image.open(before).size == Image.open(after).size == (192, 128)
    assert "Back-projection" not in info                          # the tiny test model's default: off
    _, _, info, _ = client.predict(image=handle_file(str(source)), seed=7, back_projection=2, api_name="/upscale")
    assert "Back-projection: 2" in info
    _, download, info, _ = client.predict(image=handle_file(str(source)), seed=7, scale=2, api_name="/upscale")
    with Image.open(_png(download)) as im:
        assert im.size == (96, 64) and "Upscale: 2," in info
    assert "Back-projection must be" in _error(client, "/upscale", image=handle_file(str(source)), back_projection=40)
    assert "Upload an image" in _error(client, "/upscale")


def test_sampler_display_names_and_free_string_schema(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in GENERATION:
        types = {p["parameter_name"]: p["type"] for p in api[f"/{name}"]["parameters"]}
        assert types["model"] == {"type": "string"}, types["model"]          # models exported later too
        assert name == "upscale" or types["sampler"] == {"type": "string"}, types["sampler"]
    _, info, _ = client.predict("x", sampler="Euler a", steps=2, seed=1, api_name="/txt2img")
    assert "Sampler: Euler a," in info, info
    _, info, _ = client.predict("x", sampler="DPM++ 2M Karras", steps=2, seed=1, api_name="/txt2img")
    assert "DPM++ 2M" in info and "Karras" in info, info


@pytest.mark.parametrize("mode", ["just_resize", "crop_and_resize", "resize_and_fill", 1])
def test_img2img_width_height_and_resize_modes(client, tmp_path, mode):
    source = sample_image(tmp_path / "wide.png", (128, 64))
    gallery, _, _ = client.predict("x", image=handle_file(str(source)), width=64, height=64, resize_mode=mode,
                                   seed=3, steps=2, api_name="/img2img")
    with Image.open(_png(gallery[0])) as im:
        assert im.size == (64, 64)
    assert "resize_mode must be" in _error(client, "/img2img", prompt="x", image=handle_file(str(source)),
                                           width=64, height=64, resize_mode="stretch")


def test_console_names_our_share_flag(app_server):
    log = app_server.log.read_text()
    assert "--share" in log and "share=True" not in log, log[-2000:]


def test_png_info_reads_back_what_txt2img_wrote(client, tmp_path):
    gallery, _, _ = client.predict("two yellow stars", negative_prompt="blurry", seed=42, api_name="/txt2img")
    text, fields = client.predict(image=handle_file(str(_png(gallery[0]))), api_name="/png_info")
    assert text.startswith("two yellow stars")
    assert fields["prompt"] == "two yellow stars" and fields["negative_prompt"] == "blurry"
    assert fields["seed"] == 42 and fields["steps"] == STEPS
    plain = sample_image(tmp_path / "plain.png")
    assert "no generation parameters" in _error(client, "/png_info", image=handle_file(str(plain)))


def test_bad_uploads_are_refused_and_the_server_stays_up(client, tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")                          # 30000 x 30000 in ~100 kB
    message = _error(client, "/upscale", image=handle_file(str(bomb)))
    assert "pixels" in message or "bomb" in message, message
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image")
    message = _error(client, "/img2img", prompt="x", image=handle_file(str(fake)))
    assert "not a picture" in message, message
    assert "Could not preprocess" not in message and "Error:" not in message and "/tmp" not in message, message
    big = tmp_path / "big.png"                                      # over --max-upload-mb 5
    big.write_bytes(b"\0" * (6 * 1024 * 1024))
    with pytest.raises(Exception, match="(?i)size|large"):
        client.predict(prompt="x", image=handle_file(str(big)), api_name="/img2img")
    _still_works(client)


def _running(client, steps: int = 400):
    """A /txt2img job that is sampling -> (the gradio_client job, its job id)."""
    job = client.submit("a long one", steps=steps, seed=1, api_name="/txt2img")
    deadline = time.monotonic() + 60
    while not (job.outputs() and "sample" in job.outputs()[-1][1]):
        assert time.monotonic() < deadline and not job.done(), "the job never started sampling"
        time.sleep(0.1)
    return job, job.outputs()[-1][2]


def test_interrupt_stops_only_the_named_job_and_shows_the_partial_image(client, app_server):
    job, job_id = _running(client)
    # An empty id (another user's Esc before their job started) stops nothing.
    assert client.predict(api_name="/interrupt").startswith("nothing to interrupt")
    time.sleep(0.5)
    assert not job.done()
    assert json.loads((app_server.outputs / "jobs" / job_id / "job.json").read_text())["status"] == "running"
    assert client.predict(job_id=job_id, api_name="/interrupt") == "interrupting"
    gallery, info, _ = job.result(timeout=60)
    assert info.startswith("Interrupted") and re.search(r"Interrupted at step \d+ of \d+", info), info
    with Image.open(_png(gallery[0])) as partial:                     # the image as far as it got
        assert partial.size == (64, 64)
    _still_works(client)


def test_interrupt_all_is_explicit(client):
    job, _ = _running(client)
    assert client.predict(job_id="all", api_name="/interrupt") == "interrupting"
    assert job.result(timeout=60)[1].startswith("Interrupted")


def test_pipeline_warnings_reach_the_tab_and_the_job(client, app_server):
    _, info, job_id = client.predict("", seed=1, api_name="/txt2img")
    assert "Note: the prompt is empty" in info, info
    record = json.loads((app_server.outputs / "jobs" / job_id / "job.json").read_text())
    assert any("the prompt is empty" in w for w in record["warnings"]), record


def test_generation_runs_one_job_at_a_time(client, app_server):
    jobs = [client.submit(f"queued {i}", seed=i, api_name="/txt2img") for i in range(3)]
    ids = [job.result(timeout=120)[2] for job in jobs]
    spans = sorted((r["started"], r["finished"]) for r in
                   (json.loads((app_server.outputs / "jobs" / i / "job.json").read_text()) for i in ids))
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, spans


def test_training_endpoints_and_data_guards(client, app_server, tmp_path):
    # Paths outside the data root and unsafe zips are refused before anything starts.
    assert "outside" in _error(client, "/train_start", dataset="folder", folder="../../etc")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.png", b"x")
    assert "outside" in _error(client, "/train_start", dataset="zip", zip_file=handle_file(str(evil)))
    assert not (app_server.data.parent / "escape.png").exists()
    assert "no run" in _error(client, "/train_status", name="does-not-exist").lower()

    info = client.predict(stage="autoencoder", model_size="tiny", image_size=32, steps=10000, batch_size=2,
                          name="api-run", api_name="/train_start")
    assert info["name"] == "api-run" and info["status"] == "running"
    status = client.predict(name="api-run", api_name="/train_status")
    assert status["status"] in ("running", "stopping", "stopped", "failed") and "metrics" in status
    stopped = client.predict(name="api-run", api_name="/train_stop")
    assert stopped["status"] in ("stopped", "stopping", "failed"), stopped
    assert "already exists" in _error(client, "/train_start", stage="autoencoder", name="api-run")
    _still_works(client)


def test_flags_auth_and_share_credentials(tmp_path):
    from ui.blocks import launch_options
    from ui.settings import parse_args, parse_auth, with_share_credentials
    settings = parse_args(["--listen", "--port", "7999", "--auth", "me:pw,you:pw2", "--device", "cpu",
                           "--weights", str(tmp_path / "w"), "--outputs", str(tmp_path / "o")])
    assert settings.host == "0.0.0.0" and settings.port == 7999 and settings.dtype == "float32"
    assert settings.auth == (("me", "pw"), ("you", "pw2"))
    options = launch_options(settings)
    assert options["auth"] == [("me", "pw"), ("you", "pw2")] and options["max_file_size"] == "50mb"
    (tmp_path / "users.txt").write_text("alice:secret\nbob:hunter2\n")
    assert parse_auth(str(tmp_path / "users.txt")) == (("alice", "secret"), ("bob", "hunter2"))
    with pytest.raises(ValueError, match="user:password"):
        parse_auth("nocolon")
    # --share never runs open: without --auth, credentials are generated and printed.
    shared, message = with_share_credentials(parse_args(["--share", "--device", "cpu"]))
    (user, password), = shared.auth
    assert user in message and password in message and len(password) >= 12
    kept, message = with_share_credentials(parse_args(["--share", "--auth", "a:b", "--device", "cpu"]))
    assert kept.auth == (("a", "b"),) and message is None
