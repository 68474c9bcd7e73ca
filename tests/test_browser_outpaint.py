"""Outpainting and soft inpainting in the Inpaint tab, in a real browser (Playwright driving Debian's
Chromium against conftest.app_server): outpaint right by 64 px -> 64 px wider, the original kept
outside the overlap band, and "Use the result as the image" grows it again; the Soft inpainting
checkbox changes what a grey mask does."""
import re

import numpy as np
from PIL import Image

from browser_util import TIMEOUT_MS, fetch_image, open_tab, sample_image, upload_to_editor, visible


def _wait_for_new_result(page, previous: str = "") -> str:
    """The info text of a finished job that differs from `previous`."""
    info = visible(page, ".ldm-info textarea")
    page.wait_for_function("([el, old]) => /Seed: \\d+/.test(el.value) && el.value !== old",
                           arg=[info.element_handle(), previous], timeout=TIMEOUT_MS)
    return info.input_value()


def _result(page) -> np.ndarray:
    return np.asarray(fetch_image(page, visible(page, ".ldm-gallery img").get_attribute("src")).convert("RGB"))


def _set_seed(page, seed: int) -> None:
    visible(page, "input[aria-label='Seed (-1: random)']").fill(str(seed))


def test_outpaint_right_by_64_then_again(page, tmp_path):
    source = sample_image(tmp_path / "in.png", (64, 64))
    original = np.asarray(Image.open(source).convert("RGB"))
    open_tab(page, "Inpaint")
    upload_to_editor(page, source)
    page.get_by_text("Outpaint: grow the picture").click()
    visible(page, ".ldm-outpaint-right input").fill("64")
    _set_seed(page, 11)
    visible(page, "button.ldm-outpaint-button").click()
    text = _wait_for_new_result(page)
    band = int(re.search(r"Outpaint overlap: (\d+)", text).group(1))
    assert "Outpaint: right 64" in text and 0 < band < 64
    grown = _result(page)
    assert grown.shape == (64, 128, 3)                                       # 64 px wider
    assert np.array_equal(grown[:, :64 - band], original[:, :64 - band])    # unchanged outside the band
    assert np.abs(grown[:, 64:].astype(int) - original[:, -1:].astype(int)).mean() > 0   # a new area

    # The result back into the editor, grown again at the bottom.
    visible(page, "button.ldm-outpaint-use").click()
    page.wait_for_timeout(500)
    visible(page, ".ldm-outpaint-right input").fill("0")
    visible(page, ".ldm-outpaint-bottom input").fill("32")
    visible(page, "button.ldm-outpaint-button").click()
    _wait_for_new_result(page, text)
    assert _result(page).shape == (96, 128, 3)


def test_soft_inpainting_toggle_changes_the_result(page, tmp_path):
    source = sample_image(tmp_path / "in.png", (64, 64))
    grey = np.zeros((64, 64), np.uint8)
    grey[16:48, 16:48] = 100                                                 # a partial change, if soft
    grey[16:48, 32:48] = 255
    Image.fromarray(grey, "L").save(tmp_path / "mask.png")
    open_tab(page, "Inpaint")
    upload_to_editor(page, source)
    page.get_by_text("Upload a mask instead (white = repaint)").click()
    visible(page, ".ldm-inpaint-mask").locator("input[type=file]").set_input_files(str(tmp_path / "mask.png"))
    _set_seed(page, 5)
    visible(page, "button.ldm-generate").click()
    plain_text = _wait_for_new_result(page)
    plain = _result(page)
    visible(page, ".ldm-soft-inpainting input[type=checkbox]").check()
    visible(page, "button.ldm-generate").click()
    soft_text = _wait_for_new_result(page, plain_text)
    soft = _result(page)
    assert "Soft inpainting enabled: True" in soft_text and "Soft inpainting" not in plain_text
    assert not np.array_equal(plain, soft)
    assert np.array_equal(plain[:16], soft[:16])                             # outside the mask: both the original
