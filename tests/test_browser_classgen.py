"""Browser test of the Class / unconditional tab (issue 16 §2): pick a class by its name on the
shapes class model, generate, the picture and its "Class: N (name)" come back, and PNG info sends
the class back to the tab; an unconditional
model hides the class picker and samples without one. Playwright driving Debian's Chromium
against conftest.app_server (tiny-class, tiny-uncond)."""
from PIL import PngImagePlugin

from browser_util import TIMEOUT_MS, fetch_image, open_tab, steps_field, visible

TAB = "Class / unconditional"


def _wait_info(page, pattern: str) -> str:
    info = visible(page, ".ldm-info textarea")
    page.wait_for_function("([el, p]) => new RegExp(p).test(el.value)", arg=[info.element_handle(), pattern],
                           timeout=TIMEOUT_MS)
    return info.input_value()


def _pick(page, label: str, option: str) -> None:
    visible(page, f"input[aria-label='{label}']").click()
    page.get_by_role("option", name=option, exact=True).click()


def _parameters(image) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", image.info["parameters"])
    return info


def test_pick_a_class_by_name_and_generate_then_an_unconditional_model(page, tmp_path):
    open_tab(page, TAB)
    steps_field(page)                                                  # the model's defaults are in
    picker = visible(page, ".ldm-model-picker input")
    assert picker.input_value() == "tiny-class.safetensors"
    _pick(page, "Class", "star blue")
    visible(page, ".ldm-class-note").get_by_text("null class").wait_for()
    visible(page, "input[aria-label='Seed (-1: random)']").fill("12")
    visible(page, "button.ldm-generate").click()
    text = _wait_info(page, r"Class: 20 \(star blue\)")
    assert "Seed: 12" in text and "Task: class" in text
    image = fetch_image(page, visible(page, ".ldm-gallery img").get_attribute("src"))
    assert image.size == (32, 32) and "Class: 20 (star blue)" in image.info["parameters"]
    image.save(tmp_path / "made.png", pnginfo=_parameters(image))

    _pick(page, "Class", "circle red")                                  # PNG info sends the class back
    open_tab(page, "PNG info")
    visible(page, ".ldm-png-info-image").locator("input[type=file]").set_input_files(str(tmp_path / "made.png"))
    text = visible(page, ".ldm-png-info-text textarea")
    page.wait_for_function("el => el.value.includes('star blue')", arg=text.element_handle(), timeout=TIMEOUT_MS)
    page.get_by_role("button", name="Send to class / unconditional").click()
    name = visible(page, "input[aria-label='Class']")
    page.wait_for_function("el => el.value === 'star blue'", arg=name.element_handle(), timeout=TIMEOUT_MS)
    assert visible(page, "input[aria-label='Seed (-1: random)']").input_value() == "12"

    _pick(page, "Model", "tiny-uncond.safetensors")
    visible(page, ".ldm-class-note").get_by_text("Unconditional model").wait_for()
    assert page.locator(".ldm-class-name >> visible=true").count() == 0
    visible(page, "button.ldm-generate").click()
    text = _wait_info(page, r"Task: unconditional")
    assert "Class:" not in text
