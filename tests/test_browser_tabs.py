"""Browser tests of what every generation tab shares: a reload reattaches to the tab's last job
(running: its progress; finished: its results), Interrupt after a reload stops that job; results
are shown whole inside their box, small ones enlarged by a whole factor. Playwright driving Debian's Chromium against conftest.app_server."""
import numpy as np
import pytest
from PIL import Image

from browser_util import TIMEOUT_MS, fetch_image, open_tab, sample_image, steps_field, upload_to_editor, visible

TABS = {"img2img": "Image to image", "inpaint": "Inpaint", "upscale": "Upscale", "classgen": "Class / unconditional"}
LONG = 500                       # steps (DDIM's most): a job that is still running after a reload


def _prepare(page, tab: str, tmp_path, side: int = 64) -> None:
    """Open `tab` and give it its input (inpaint: an image and an uploaded mask), `side` px square."""
    source = sample_image(tmp_path / "in.png", (side, side))
    open_tab(page, TABS[tab])
    if tab == "classgen":           # no input: the class model's first class, large so that 500 steps take a while
        for field in ("Width", "Height"):
            visible(page, f"input[aria-label='{field} (0: model default)']").fill("256")
        return
    if tab == "inpaint":
        upload_to_editor(page, source)
        mask = np.zeros((side, side), np.uint8)
        mask[side // 4:3 * side // 4, side // 4:3 * side // 4] = 255
        Image.fromarray(mask, "L").save(tmp_path / "mask.png")
        page.get_by_text("Upload a mask instead (white = repaint)").click()
        visible(page, ".ldm-inpaint-mask").locator("input[type=file]").set_input_files(str(tmp_path / "mask.png"))
        for field in ("Width", "Height"):                # the tab's size fields start at the model's 64
            visible(page, f'input[aria-label="{field} (0: the picture\'s size)"]').fill(str(side))
    else:
        visible(page, f".ldm-{tab}-image").locator("input[type=file]").set_input_files(str(source))


def _steps(page, tab: str):
    """The steps field (filled with the model's default first, except in Upscale, which leaves it 0)."""
    return visible(page, "input[aria-label='Sampling steps (0: model default)']") if tab == "upscale" \
        else steps_field(page)


def _info(page, tab: str):
    return visible(page, ".ldm-upscale-info textarea" if tab == "upscale" else ".ldm-info textarea")


def _wait_for(page, field, pattern: str) -> str:
    page.wait_for_function("([el, p]) => new RegExp(p).test(el.value)", arg=[field.element_handle(), pattern],
                           timeout=TIMEOUT_MS)
    return field.input_value()


def _result(page, tab: str) -> np.ndarray:
    """The result image the tab shows (upscale: its download link), as pixels."""
    if tab == "upscale":
        src = visible(page, ".ldm-upscale-download a").get_attribute("href")
    else:
        src = visible(page, ".ldm-gallery img").get_attribute("src")
    return np.asarray(fetch_image(page, src).convert("RGB"))


@pytest.mark.parametrize("tab", list(TABS))
def test_reload_reattaches_to_a_running_then_a_finished_job(page, tab, tmp_path):
    # inpaint at 256 px, so that its 500 steps outlast the reload (at 64 px the job could finish first)
    _prepare(page, tab, tmp_path, side=256 if tab == "inpaint" else 64)
    _steps(page, tab).fill(str(LONG))
    visible(page, "button.ldm-generate").click()
    _wait_for(page, _info(page, tab), r"sample \d+ of \d+")

    page.reload()                                       # running: the progress comes back
    open_tab(page, TABS[tab])
    _wait_for(page, _info(page, tab), r"sample \d+ of \d+")
    visible(page, "button.ldm-interrupt").click()       # and Interrupt stops that job
    _wait_for(page, _info(page, tab), r"^Interrupted")

    _prepare(page, tab, tmp_path)                        # a short job, finished before the reload
    _steps(page, tab).fill("3")
    visible(page, "button.ldm-generate").click()
    done = _wait_for(page, _info(page, tab), r"Seed: \d+")
    result = _result(page, tab)
    page.reload()                                       # finished: the results come back
    open_tab(page, TABS[tab])
    assert _wait_for(page, _info(page, tab), r"Seed: \d+") == done
    assert np.array_equal(_result(page, tab), result)


@pytest.mark.parametrize("tab", ["txt2img", "img2img", "inpaint"])
def test_results_fit_their_box_whole_and_crisp(page, tab, tmp_path):
    if tab == "txt2img":
        steps_field(page)
    else:
        _prepare(page, tab, tmp_path)
    visible(page, ".ldm-prompt textarea").fill("a red circle in the center")
    visible(page, "button.ldm-generate").click()
    _wait_for(page, _info(page, tab), r"Seed: \d+")
    image = visible(page, ".ldm-gallery img")
    page.wait_for_function("el => el.complete && el.naturalWidth > 0 && el.style.width !== ''",
                           arg=image.element_handle())
    box, shown = visible(page, ".ldm-gallery").bounding_box(), image.bounding_box()
    inside = (shown["x"] >= box["x"] and shown["y"] >= box["y"]
              and shown["x"] + shown["width"] <= box["x"] + box["width"]
              and shown["y"] + shown["height"] <= box["y"] + box["height"])
    assert inside, (box, shown)                                   # the whole picture, without clicking
    natural = image.evaluate("el => [el.naturalWidth, el.naturalHeight]")
    factor = shown["width"] / natural[0]
    assert natural == [64, 64] and factor >= 2 and factor == int(factor), (natural, shown)     # whole multiples
    assert shown["height"] == shown["width"]
    assert image.evaluate("el => getComputedStyle(el).imageRendering") == "pixelated"
