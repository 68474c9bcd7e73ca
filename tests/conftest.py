"""Shared fixtures: a real `python app.py` server on a free port, serving tiny test weights.

The server is started once per test session (the API tests and the browser tests share it) from a
temporary folder holding weights/, outputs/, runs/ and data/, so nothing touches the repository.
Its weights are tiny models of the real families (tests/tiny_models.py): "sd2" for text to
image, "sd2_inpaint" for inpainting, "ldm_sr" for 4x upscaling, "layout" for layout to image, each with ldm_studio_defaults
metadata asking for few steps at a small size, so a generation takes well under a second.
With LDM_TEST_WEIGHTS=DIR the server gets DIR's models instead (scripts/screenshots.sh).

Two tiers (README): `python -m pytest -q tests` runs everything (CI); `python -m pytest -q -m "not
slow" tests` leaves out the tests marked slow below (SLOW_MODULES, SLOW_TESTS), for quicker runs
while working.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from browser_util import CHROMIUM_ARGS, TIMEOUT_MS, chromium_path

ROOT = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 120
STEPS = 3

# file name -> (family, ldm_studio_defaults)
TINY_WEIGHTS = {
    "tiny-txt2img.safetensors": ("sd2", {"sampler": "ddim", "karras": False, "steps": STEPS, "guidance_scale": 3.0,
                                         "eta": 0.0, "width": 64, "height": 64}),
    "tiny-inpaint.safetensors": ("sd2_inpaint", {"sampler": "ddim", "steps": STEPS, "guidance_scale": 3.0,
                                                 "width": 64, "height": 64}),
    "tiny-sr.safetensors": ("ldm_sr", {"sampler": "ddim", "steps": STEPS, "guidance_scale": 1.0, "eta": 1.0}),
    "tiny-class.safetensors": ("shapes_class", {"sampler": "ddim", "steps": STEPS, "guidance_scale": 3.0,
                                                "width": 32, "height": 32}),
    "tiny-uncond.safetensors": ("ldm_uncond", {"sampler": "ddim", "steps": STEPS, "guidance_scale": 1.0,
                                               "width": 32, "height": 32}),
    # SD1's CLIP (2 blocks, last layer: clip skip 1-2), Karras by default; listed after tiny-txt2img
    "tiny-txt2img_sd1.safetensors": ("sd1", {"sampler": "euler", "karras": True, "steps": STEPS,
                                             "guidance_scale": 3.0, "width": 64, "height": 64}),
    "tiny-layout.safetensors": ("layout", {"sampler": "ddim", "steps": STEPS, "guidance_scale": 3.0,
                                           "width": 64, "height": 64}),
    # trained with the background as a token (white, black, gray): the Layout tab's Background dropdown
    "tiny-layout_bg.safetensors": ("layout_background", {"sampler": "ddim", "steps": STEPS, "guidance_scale": 3.0,
                                                         "width": 64, "height": 64}),
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_weights(folder: Path) -> None:
    from core import save_model
    from tests.tiny_models import tiny_model
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, (family, defaults) in TINY_WEIGHTS.items():
        meta = {"ldm_studio_name": file_name.split(".")[0], "ldm_studio_defaults": json.dumps(defaults)}
        save_model(tiny_model(family), folder / file_name, metadata=meta)


def _wait_until_up(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"app.py did not answer within {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def _stop_training_runs(runs: Path) -> None:
    """Training processes are started in their own session and outlive the server: stop ours."""
    for state_file in runs.glob("*/state.json"):
        try:
            state = json.loads(state_file.read_text())
            if state.get("status") == "running" and isinstance(state.get("pid"), int):
                os.kill(state["pid"], signal.SIGTERM)
        except (OSError, ValueError):
            pass


@contextmanager
def running_app(root: Path, args: list[str]):
    """`python app.py --device cpu ARGS` on a free port, run from `root` with its log in
    root/server.log: yields (url, process, log path) once it answers; stopped afterwards."""
    port, log_path = free_port(), root / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--device", "cpu", *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, proc, log_path)
        yield url, proc, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """A running `python app.py` (SimpleNamespace: url, root, weights, outputs, runs, data, log)."""
    root = tmp_path_factory.mktemp("app")
    paths = {name: root / name for name in ("weights", "outputs", "runs", "data")}
    if os.environ.get("LDM_TEST_WEIGHTS"):          # scripts/screenshots.sh: the real default models
        paths["weights"].mkdir()
        for source in Path(os.environ["LDM_TEST_WEIGHTS"]).glob("*.safetensors"):
            os.symlink(source.resolve(), paths["weights"] / source.name)
    else:
        write_tiny_weights(paths["weights"])
    paths["data"].mkdir()
    args = ["--weights", str(paths["weights"]), "--outputs", str(paths["outputs"]), "--runs", str(paths["runs"]),
            "--data-root", str(paths["data"]), "--max-size", "1024", "--max-upload-mb", "5"]
    with running_app(root, args) as (url, proc, log_path):
        try:
            yield SimpleNamespace(url=url, root=root, log=log_path, proc=proc, **paths)
        finally:
            _stop_training_runs(paths["runs"])


@pytest.fixture(scope="session")
def client(app_server):
    from gradio_client import Client
    return Client(app_server.url, verbose=False, download_files=str(app_server.root / "downloads"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so a fixture can tell whether its test failed
    (the browser `page` fixture then saves a screenshot of the failure)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_server, request, tmp_path_factory):
    """A fresh page on the app; fails the test if the page fetched anything from another host. When
    the test fails, a screenshot of the page is saved beside the server log."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    outside = []
    local = (app_server.url, "data:", "blob:")
    page.on("request", lambda r: None if r.url.startswith(local) else outside.append(r.url))
    page.goto(app_server.url)
    page.locator(".ldm-prompt textarea").first.wait_for()
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        shot = app_server.root / f"failure-{request.node.name}.png" if hasattr(app_server, "root") else \
            tmp_path_factory.mktemp("failures") / f"{request.node.name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failure: {shot}")
    context.close()
    assert not outside, f"the page fetched from other hosts (the app must work offline): {outside}"


# The slow tier, by module and by test function (every parametrisation): what takes seconds each on
# a 2-core machine. Measured with `python -m pytest -q tests --durations=40`.
SLOW_MODULES = {
    "test_browser.py": "headless Chromium against a live app.py",
    "test_browser_send.py": "headless Chromium against a live app.py",
    "test_browser_schedule.py": "headless Chromium against a live app.py",
    "test_browser_tabs.py": "headless Chromium against a live app.py",
    "test_browser_classgen.py": "headless Chromium against a live app.py",
    "test_classgen_api.py": "gradio_client against a live app.py",
    "test_train_api.py": "training runs started through a live app.py",
    "test_train_tab.py": "training runs in the Train tab",
    "test_app_api.py": "gradio_client against a live app.py",
    "test_outpaint_api.py": "gradio_client against a live app.py",
    "test_browser_outpaint.py": "headless Chromium against a live app.py",
    "test_app_schedule_clip_skip.py": "gradio_client against a live app.py",
    "test_layout_api.py": "gradio_client against a live app.py",
    "test_browser_layout.py": "headless Chromium against a live app.py",
    "test_sdxl_refiner_app.py": "five SDXL generations (tiny base + refiner) through the tab and the A1111 API",
    "test_api_a1111_live.py": "the webuiapi client against a live app.py --api",
    "test_train_cli.py": "training subprocesses: SIGTERM / SIGKILL and resume, torchrun DDP",
}
SLOW_TESTS = {
    "test_a_model_with_backgrounds_shows_the_background_picker", "test_the_background_as_a_layout_token",
    "test_reload_reattaches_to_a_running_then_a_finished_job",
    "test_sdxl_pipelines_take_prompt_syntax", "test_sdxl_inpainting_and_the_refiner_take_prompt_syntax",
    "test_resume_continues_exactly", "test_cli_trains_from_a_zip_and_exports",
    "test_a_lora_trained_in_the_train_tab_loads_back", "test_sdxl_lora_uses_sgm_names_and_both_text_encoders",
    "test_real_trainer_tiny_run_stop_and_resume", "test_memory_estimate_formula_and_against_a_measured_step",
    "test_cli_writes_pngs_with_parameters_and_never_overwrites",
    "test_family_loads_from_original_layout", "test_safetensors_original_layout",
    "test_vq_encode_is_prequant_and_decode_quantises", "test_kl_forward_is_reproducible_with_generator",
    "test_vq_forward_gradient_reaches_encoder", "test_non_square_and_larger_than_training_size",
    "test_encode_decode_shapes", "test_gradients_flow_and_checkpointing_matches",
    "test_decoder_fine_tune_keeps_the_encoder_and_swaps_into_an_ldm", "test_export_round_trip",
    "test_ldm_loop_lowers_the_loss", "test_autoencoder_loop_lowers_the_loss_and_measures_the_scale_factor",
    "test_resume_continues_exactly_where_it_stopped", "test_defaults_from_metadata_and_reference",
    "test_quick_cpu_run_writes_a_complete_report", "test_full_plan_unets_take_the_check_inputs_on_meta",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES or getattr(item, "originalname", item.name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
