"""Browser tests of "Send to ..." and PNG info: the picture's prompt, seed and settings go with it;
an A1111 PNG whose sampler, model or keys we lack is sent without them, saying so, and Generate
still works; a file that is not a picture, or has no parameters, clears PNG info's fields."""
from PIL import Image, PngImagePlugin

from browser_util import TIMEOUT_MS, open_tab, sample_image, steps_field, visible

A1111 = ("a cat and a dog\nNegative prompt: ugly\nSteps: 4, Sampler: Restart, Schedule type: Karras, "
         "CFG scale: 6.5, Seed: 321, Size: 64x64, Model hash: abc, Model: v1-5-pruned, Clip skip: 2")


def _png_with(path, text):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.open(sample_image(path)).save(path, pnginfo=info)
    return path


def _png_info(page, path) -> None:
    open_tab(page, "PNG info")
    visible(page, ".ldm-png-info-image").locator("input[type=file]").set_input_files(str(path))


def _field(page, label: str):
    return visible(page, f"input[aria-label='{label}']")


def _toast(page, words: str) -> None:
    page.locator(".toast-body", has_text=words).first.wait_for(timeout=TIMEOUT_MS)


def test_png_info_sends_what_it_can_and_names_the_rest(page, tmp_path):
    steps_field(page)
    _png_info(page, _png_with(tmp_path / "a1111.png", A1111))
    text = visible(page, ".ldm-png-info-text textarea")
    page.wait_for_function("el => el.value.includes('Restart')", arg=text.element_handle())
    page.get_by_role("button", name="Send to text to image").click()
    prompt = visible(page, ".ldm-prompt textarea")
    page.wait_for_function("el => el.value === 'a cat and a dog'", arg=prompt.element_handle())
    for words in ("Restart", "v1-5-pruned", "clip skip 2 is beyond this model"):
        _toast(page, words)
    assert _field(page, "Seed (-1: random)").input_value() == "321"
    assert _field(page, "Sampling steps (0: model default)").input_value() == "4"
    assert visible(page, "input[aria-label='Sampling method']").input_value() == "DDIM"      # kept
    visible(page, "button.ldm-generate").click()                     # and Generate still works
    info = visible(page, ".ldm-info textarea")
    page.wait_for_function("el => /Seed: 321/.test(el.value)", arg=info.element_handle(), timeout=TIMEOUT_MS)

    known = A1111.replace("Restart", "DPM++ 2M")
    _png_info(page, _png_with(tmp_path / "known.png", known))
    page.wait_for_function("el => el.value.includes('DPM++ 2M')", arg=text.element_handle())
    page.get_by_role("button", name="Send to image to image").click()
    sampler = visible(page, "input[aria-label='Sampling method']")
    page.wait_for_function("el => el.value === 'DPM++ 2M'", arg=sampler.element_handle())
    assert visible(page, "input[aria-label='Schedule type']").input_value() == "Karras"
    assert visible(page, ".ldm-prompt textarea").input_value() == "a cat and a dog"
    assert visible(page, ".ldm-img2img-image img").get_attribute("src")


def test_send_to_carries_prompt_and_seed(page):
    steps_field(page)
    visible(page, ".ldm-prompt textarea").fill("two yellow stars")
    _field(page, "Seed (-1: random)").fill("55")
    visible(page, "button.ldm-generate").click()
    info = visible(page, ".ldm-info textarea")
    page.wait_for_function("el => /Seed: 55/.test(el.value)", arg=info.element_handle(), timeout=TIMEOUT_MS)
    for button, tab_image in (("Send to image to image", ".ldm-img2img-image img"),
                              ("Send to inpaint", ".ldm-inpaint-editor canvas")):
        open_tab(page, "Text to image")
        page.get_by_role("button", name=button).first.click()
        prompt = visible(page, ".ldm-prompt textarea")
        page.wait_for_function("el => el.value === 'two yellow stars'", arg=prompt.element_handle())
        seed = _field(page, "Seed (-1: random)")                       # filled by the same update; under
        page.wait_for_function("el => el.value === '55'", arg=seed.element_handle())   # load it may land later
        visible(page, tab_image).wait_for()


def test_png_info_clears_its_fields_for_a_file_without_parameters(page, tmp_path):
    _png_info(page, _png_with(tmp_path / "a1111.png", A1111))
    text = visible(page, ".ldm-png-info-text textarea")
    page.wait_for_function("el => el.value.includes('a cat')", arg=text.element_handle())
    _png_info(page, sample_image(tmp_path / "plain.png"))
    _toast(page, "no generation parameters")
    assert text.input_value() == ""
    assert "a cat" not in visible(page, ".ldm-png-info-fields").inner_text()

    _png_info(page, _png_with(tmp_path / "again.png", A1111))
    page.wait_for_function("el => el.value.includes('a cat')", arg=text.element_handle())
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image")
    _png_info(page, fake)
    _toast(page, "not a picture")
    assert text.input_value() == ""
