"""Browser test of the Layout to image tab: boxes drawn, moved, resized, labelled and deleted with the
mouse and the keyboard; the canvas and the layout textbox follow each other; Generate makes an image
whose parameters carry the drawn layout; Show boxes draws it over the result."""
import json
import os
import re

import pytest

from browser_util import TIMEOUT_MS, open_tab, steps_field, visible
from test_app_api import _png
from test_browser import _screenshot

SQUARE_GREEN, TRIANGLE_PURPLE = 1 * 6 + 1, 2 * 6 + 4          # shape_index * 6 + colour_index


def _layout(text: str) -> list[tuple[str, list[float]]]:
    rows = []
    for line in text.strip().splitlines():
        *label, x0, y0, x1, y1 = line.split()
        rows.append((" ".join(label), [float(x0), float(y0), float(x1), float(y1)]))
    return rows


def _close(a: list[float], b: list[float], tol: float = 0.01) -> bool:
    return all(abs(u - v) <= tol for u, v in zip(a, b))


class Canvas:
    """The layout canvas on the page, driven in fractions of its side."""

    def __init__(self, page):
        self.page, self.board = page, visible(page, ".ldm-layout-board")
        self.box = self.board.bounding_box()

    def at(self, x: float, y: float) -> tuple[float, float]:
        return self.box["x"] + x * self.box["width"], self.box["y"] + y * self.box["height"]

    def drag(self, start, end) -> None:
        mouse = self.page.mouse
        mouse.move(*self.at(*start))
        mouse.down()
        mouse.move(*self.at((start[0] + end[0]) / 2, (start[1] + end[1]) / 2), steps=4)
        mouse.move(*self.at(*end), steps=4)
        mouse.up()

    def click(self, x: float, y: float) -> None:
        self.page.mouse.click(*self.at(x, y))

    def pixel(self, x: float, y: float) -> list[int]:
        return self.board.evaluate("(c, [x, y]) => Array.from(c.getContext('2d').getImageData("
                                   "Math.round(x * c.width), Math.round(y * c.height), 1, 1).data)", [x, y])


def _wait_text(page, textbox, predicate: str) -> None:
    page.wait_for_function(f"el => {{ const v = el.value; return {predicate}; }}", arg=textbox.element_handle())


def test_draw_two_boxes_label_them_and_generate(page):
    open_tab(page, "Layout to image")
    steps_field(page)
    canvas, text = Canvas(page), visible(page, ".ldm-layout-text textarea")
    assert len(_layout(text.input_value())) == 2                      # the starting example

    # Typing in the textbox redraws the canvas: one orange circle, its inside tinted orange.
    text.click()
    text.press("Control+a")
    text.press_sequentially("circle orange 0.1 0.6 0.3 0.9")
    page.wait_for_function("c => { const d = c.getContext('2d').getImageData(77, 288, 1, 1).data; "
                           "return d[0] - d[2] > 20; }", arg=canvas.board.element_handle())
    assert abs(canvas.pixel(0.83, 0.5)[0] - canvas.pixel(0.83, 0.5)[2]) < 5     # the old (blue) star is gone
    canvas.click(0.2, 0.75)                                           # select it, then the Delete button
    visible(page, ".ldm-layout-delete").click()
    _wait_text(page, text, "v === ''")

    # Two boxes drawn with the mouse, each labelled with the Shape / Colour selects. The default layout
    # model is a shapes-world one: each box snaps to a cell centre (1/6, 1/2, 5/6) and a size (0.2, 0.3).
    canvas.drag((0.1, 0.1), (0.4, 0.4))                               # -> large, top left cell
    visible(page, ".ldm-layout-shape").select_option("square")
    visible(page, ".ldm-layout-colour").select_option("green")
    canvas.drag((0.6, 0.6), (0.8, 0.8))                               # -> small, bottom right; drawn as
    visible(page, ".ldm-layout-shape").select_option("triangle")      # "square green" too, then relabelled
    visible(page, ".ldm-layout-colour").select_option("purple")
    canvas.drag((0.7333, 0.7333), (0.65, 0.65))                       # resize by its top-left corner: large
    canvas.drag((0.2, 0.2), (0.5, 0.2))                               # move the first box one cell right
    canvas.drag((0.02, 0.9), (0.12, 0.98))                            # a stray third box ...
    page.keyboard.press("Delete")                                     # ... removed with the Delete key
    _wait_text(page, text, "v.split('\\n').length === 2 && v.includes('triangle purple')")
    drawn = _layout(text.input_value())
    assert [label for label, _ in drawn] == ["square green", "triangle purple"]
    assert _close(drawn[0][1], [0.35, 0.017, 0.65, 0.317]) and _close(drawn[1][1], [0.683, 0.683, 0.983, 0.983]), drawn

    visible(page, "button.ldm-generate").click()
    info = visible(page, ".ldm-info textarea")
    page.wait_for_function("el => /Layout: /.test(el.value)", arg=info.element_handle(), timeout=TIMEOUT_MS)
    visible(page, ".ldm-gallery img").wait_for()
    recorded = json.loads(json.loads(re.search(r'Layout: ("(?:\\.|[^"])*")', info.input_value()).group(1)))
    assert [c for c, *_ in recorded] == [SQUARE_GREEN, TRIANGLE_PURPLE]
    assert all(_close(box, drawn_box) for (_, *box), (_, drawn_box) in zip(recorded, drawn)), recorded

    visible(page, ".ldm-layout-show input").check()                   # the boxes over a faint copy
    visible(page, ".ldm-layout-overlay img").wait_for()
    _screenshot(page, "layout")


def test_png_info_sends_the_layout_back(page, client):
    text = "star yellow 0.1 0.2 0.35 0.45\nsquare blue 0.5 0.5 0.8 0.8"
    gallery, _, _ = client.predict(text, seed=21, steps=2, api_name="/layout")
    open_tab(page, "PNG info")
    visible(page, ".ldm-png-info-image").locator("input[type=file]").set_input_files(str(_png(gallery[0])))
    fields = visible(page, ".ldm-png-info-text textarea")
    page.wait_for_function("el => el.value.includes('Layout:')", arg=fields.element_handle())
    page.get_by_role("button", name="Send to layout to image").click()
    layout = visible(page, ".ldm-layout-text textarea")
    _wait_text(page, layout, f"v === {json.dumps(text)}")
    assert visible(page, "input[aria-label='Seed (-1: random)']").input_value() == "21"
    canvas = Canvas(page)                                             # the canvas drew the sent boxes
    page.wait_for_function("c => { const d = c.getContext('2d').getImageData(250, 250, 1, 1).data; "
                           "return d[2] - d[0] > 20; }", arg=canvas.board.element_handle())
    width = visible(page, "input[aria-label='Width (0: model default)']")
    width.fill("128")
    width.press("Enter")                                              # a 128x64 image: a 2:1 canvas
    page.wait_for_function("c => c.width === 2 * c.height", arg=canvas.board.element_handle())


@pytest.mark.skipif(bool(os.environ.get("LDM_TEST_WEIGHTS")), reason="needs the tiny test weights (tiny-layout_bg)")
def test_a_model_with_backgrounds_shows_the_background_picker(page, client):
    gallery, _, _ = client.predict("circle red 0.017 0.017 0.317 0.317", model="tiny-layout_bg.safetensors",
                                   background="gray", seed=5, steps=2, api_name="/layout")
    open_tab(page, "Layout to image")
    picker = page.locator(".ldm-layout-background")
    assert not picker.is_visible()                                   # the first layout model has no backgrounds
    open_tab(page, "PNG info")
    visible(page, ".ldm-png-info-image").locator("input[type=file]").set_input_files(str(_png(gallery[0])))
    fields = visible(page, ".ldm-png-info-text textarea")
    page.wait_for_function("el => el.value.includes('Background: gray')", arg=fields.element_handle())
    page.get_by_role("button", name="Send to layout to image").click()
    value = visible(page, ".ldm-layout-background input")             # the picture's model: the picker shows
    page.wait_for_function("el => el.value === 'gray'", arg=value.element_handle())
    visible(page, "button.ldm-generate").click()
    info = visible(page, ".ldm-info textarea")
    page.wait_for_function("el => /Background: gray/.test(el.value) && /Seed: 5/.test(el.value)",
                           arg=info.element_handle(), timeout=TIMEOUT_MS)
