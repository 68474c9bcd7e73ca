"""Browser test of the Schedule type dropdown and the Clip skip slider (ui/controls.py): they are in
Text to image, picking a model fills them with its defaults (clip skip usable only where its text
encoder takes it), and PNG info -> "Send to text to image" sets both from the picture."""
from PIL import Image, PngImagePlugin

from browser_util import TIMEOUT_MS, open_tab, sample_image, steps_field, visible

SD1 = "tiny-txt2img_sd1.safetensors"
PICTURE = ("a cat\nSteps: 3, Sampler: Euler, Schedule type: Exponential, CFG scale: 3, Seed: 12, Size: 64x64, "
           "Model: tiny-txt2img_sd1, Clip skip: 2")


def _wait_value(page, locator, value: str) -> None:
    page.wait_for_function("([el, v]) => el.value === v", arg=[locator.element_handle(), value], timeout=TIMEOUT_MS)


def test_schedule_type_and_clip_skip_follow_the_model_and_png_info(page, tmp_path):
    steps_field(page)
    schedule = visible(page, "input[aria-label='Schedule type']")
    clip_skip = visible(page, ".ldm-clip-skip input[type=number]")
    assert schedule.input_value() == "Automatic"
    assert clip_skip.input_value() == "1" and clip_skip.is_disabled()   # tiny-txt2img: no earlier layer to stop at
    visible(page, ".ldm-model-picker input").click()
    page.get_by_role("option", name=SD1).click()
    _wait_value(page, schedule, "Karras")                               # the SD1 file's default
    page.wait_for_function("el => !el.disabled", arg=clip_skip.element_handle(), timeout=TIMEOUT_MS)

    path = tmp_path / "made.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", PICTURE)
    Image.open(sample_image(path)).save(path, pnginfo=info)
    open_tab(page, "PNG info")
    visible(page, ".ldm-png-info-image").locator("input[type=file]").set_input_files(str(path))
    text = visible(page, ".ldm-png-info-text textarea")
    page.wait_for_function("el => el.value.includes('Exponential')", arg=text.element_handle())
    page.get_by_role("button", name="Send to text to image").click()
    _wait_value(page, visible(page, ".ldm-prompt textarea"), "a cat")
    _wait_value(page, visible(page, "input[aria-label='Schedule type']"), "Exponential")
    _wait_value(page, visible(page, ".ldm-clip-skip input[type=number]"), "2")
