"""The four jobs done in a real browser: Playwright driving Debian's Chromium against a real
`python app.py` (conftest.app_server) with tiny weights. Each test leaves a screenshot of its tab
in a temporary folder, or in $LDM_SCREENSHOTS when set: the README's docs/screenshots/ are made by
scripts/screenshots.sh, which runs these tests on the default weights. Under CI (CI=true) these tests must run: a missing chromium
is a failure, not a skip (tests/browser_util.py)."""
import io
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from browser_util import (TIMEOUT_MS, fetch_image, open_tab, shapes_image, steps_field, upload_to_editor,
                          visible)

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("LDM_SCREENSHOTS") or Path(tempfile.gettempdir()) / "ldm-studio-screenshots")
SCREENSHOT_WIDTH = 960            # px: small files for the README
TXT2IMG_PROMPT = "a large red circle at the top left and a small blue star in the center on a white background"


def _screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = Image.open(io.BytesIO(page.screenshot()))
    height = round(shot.height * SCREENSHOT_WIDTH / shot.width)
    small = shot.convert("RGB").resize((SCREENSHOT_WIDTH, height), Image.Resampling.LANCZOS)
    small.quantize(colors=128).save(SCREENSHOTS / f"{name}.png", optimize=True)      # a palette PNG: small


def test_txt2img_generate_with_ctrl_enter_and_reopen(page):
    steps_field(page)
    prompt = visible(page, ".ldm-prompt textarea")
    prompt.fill(TXT2IMG_PROMPT)
    prompt.press("Control+Enter")                                   # the keyboard shortcut generates
    info = visible(page, ".ldm-info textarea")
    page.wait_for_function("el => /Seed: \\d+/.test(el.value)", arg=info.element_handle(), timeout=TIMEOUT_MS)
    text = info.input_value()
    assert text.startswith(TXT2IMG_PROMPT)
    image = fetch_image(page, visible(page, ".ldm-gallery img").get_attribute("src"))
    assert image.size == (64, 64) and image.info["parameters"] == text.split("\n\n")[0]
    _screenshot(page, "txt2img")

    page.reload()                                                    # the job is found again
    info = visible(page, ".ldm-info textarea")
    page.wait_for_function("el => /Seed: \\d+/.test(el.value)", arg=info.element_handle(), timeout=TIMEOUT_MS)
    assert info.input_value() == text


def test_esc_interrupts(page):
    steps_field(page).fill("500")
    prompt = visible(page, ".ldm-prompt textarea")
    prompt.fill("a long job")
    prompt.press("Control+Enter")
    info = visible(page, ".ldm-info textarea")
    page.wait_for_function("el => /sample \\d+ of 500/.test(el.value)", arg=info.element_handle(),
                           timeout=TIMEOUT_MS)
    page.keyboard.press("Escape")
    page.wait_for_function("el => el.value.startsWith('Interrupted')", arg=info.element_handle(), timeout=TIMEOUT_MS)


def test_inpaint_a_mask_drawn_with_the_mouse(page, tmp_path):
    source = shapes_image(tmp_path / "scene.png", 128)          # a red circle in the centre
    open_tab(page, "Inpaint")
    upload_to_editor(page, source)
    editor = visible(page, ".ldm-inpaint-editor")
    page.wait_for_timeout(500)                                       # the canvas draws the image
    box = editor.locator("canvas").first.bounding_box()
    # A horizontal stroke through the middle of the canvas, where the (centred) image is.
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy)
    page.mouse.down()
    page.mouse.move(cx + 40, cy, steps=4)        # few events: each one redraws the canvas in software
    page.mouse.up()
    visible(page, ".ldm-prompt textarea").fill("a small blue star at the top left and a large green circle "
                                                "in the center on a white background")
    visible(page, "button.ldm-generate").click()
    info = visible(page, ".ldm-info textarea")
    page.wait_for_function("el => /Seed: \\d+/.test(el.value)", arg=info.element_handle(), timeout=TIMEOUT_MS)
    result = fetch_image(page, visible(page, ".ldm-gallery img").get_attribute("src")).convert("RGB")
    assert result.size == (128, 128)
    diff = np.abs(np.asarray(result, dtype=int) - np.asarray(Image.open(source).convert("RGB"), dtype=int)).mean(-1)
    centre = diff[62:66, 60:68].mean()                              # under the stroke
    corners = np.concatenate([diff[:24, :24].ravel(), diff[:24, -24:].ravel(),
                              diff[-24:, :24].ravel(), diff[-24:, -24:].ravel()]).mean()
    assert centre > 10 and corners < 3, (centre, corners)
    _screenshot(page, "inpaint")


def test_upscale_4x(page, tmp_path):
    source = shapes_image(tmp_path / "small.png", 64, crop=(64, 48))
    open_tab(page, "Upscale")
    visible(page, ".ldm-upscale-image").locator("input[type=file]").set_input_files(str(source))
    page.get_by_text(re.compile(r"64x48 -> 256x192")).wait_for()    # the plan shows before running
    visible(page, "button.ldm-generate").click()
    link = visible(page, ".ldm-upscale-download a")
    link.wait_for()
    result = fetch_image(page, link.get_attribute("href"))
    assert result.size == (256, 192)
    page.wait_for_timeout(300)
    _screenshot(page, "upscale")


def test_train_loss_curve_then_stop(page, client, app_server):
    name = f"browser-{time.strftime('%H%M%S')}"
    open_tab(page, "Train")
    page.get_by_label("tiny", exact=True).check()
    page.get_by_label("Image size (px)", exact=True).fill("32")
    # Far more steps than the test lasts (a metrics line every 10): the run must still be running when
    # Stop is clicked, or it would end "finished" instead of "stopped".
    page.get_by_label("Steps", exact=True).fill("2000")
    page.get_by_label("Batch size", exact=True).fill("2")
    page.get_by_label("Run name (optional)", exact=True).fill(name)
    visible(page, "button.ldm-train-start").click()
    status = visible(page, ".ldm-run-status")
    try:
        status.get_by_text(re.compile(f"{name}\\W*: running")).wait_for()
        # The loss curve gets points as the trainer writes metrics.jsonl (refreshed by a gr.Timer).
        points = page.locator(".ldm-loss-curve [aria-roledescription='point']")
        points.nth(1).wait_for(state="attached", timeout=180_000)
        page.evaluate("window.scrollTo(0, 0)")
        _screenshot(page, "train")
        visible(page, "button.ldm-train-stop").click()
        status.get_by_text(re.compile(f"{name}\\W*: stopped")).wait_for(timeout=TIMEOUT_MS)
        # "Use this model": the run is exported to weights/ and offered where it can be used.
        visible(page, "button.ldm-train-use").click()
        exported = visible(page, ".ldm-exported textarea, .ldm-exported input")
        page.wait_for_function("el => el.value.endsWith('.safetensors')", arg=exported.element_handle())
        assert (app_server.weights / f"{name}.safetensors").is_file()
    finally:
        if client.predict(name=name, api_name="/train_status")["status"] in ("running", "stopping"):
            client.predict(name=name, api_name="/train_stop")


def test_png_info_reads_a_generated_image(page, client):
    gallery, _, _ = client.predict("three yellow stars", seed=77, api_name="/txt2img")
    made = gallery[0]["image"] if isinstance(gallery[0], dict) else gallery[0]
    open_tab(page, "PNG info")
    visible(page, ".ldm-png-info-image").locator("input[type=file]").set_input_files(str(made))
    text = visible(page, ".ldm-png-info-text textarea")
    page.wait_for_function("el => /Seed: 77/.test(el.value)", arg=text.element_handle(), timeout=TIMEOUT_MS)
    page.wait_for_timeout(700)                                       # the outputs stop fading in
    _screenshot(page, "png_info")
    page.get_by_role("button", name="Send to text to image").click()     # reuse the parameters
    prompt = visible(page, ".ldm-prompt textarea")
    page.wait_for_function("el => el.value === 'three yellow stars'", arg=prompt.element_handle())
    assert visible(page, "input[aria-label='Seed (-1: random)']").input_value() == "77"
