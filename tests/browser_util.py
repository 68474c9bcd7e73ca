"""Helpers for the app tests: test images, a decompression bomb, Playwright's Chromium, and small
steps of driving the page (the `browser` and `page` fixtures are in conftest.py).

The browser is Debian's `chromium` (found on PATH), driven by the Playwright Python package; no
browser is ever downloaded. Under CI (env CI=true) a missing chromium is a failure, never a skip.
"""
import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TIMEOUT_MS = 60_000
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def sample_image(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A picture with structure (a gradient and a dark square), saved as PNG."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 128)], axis=-1)
    a[h // 4:h // 2, w // 4:w // 2] = (20, 20, 20)
    Image.fromarray(a.astype(np.uint8)).save(path)
    return path


def shapes_image(path: Path, size: int = 128, crop: tuple[int, int] | None = None) -> Path:
    """A shapes-world scene (core.world): a large red circle in the centre and a small blue star at
    the top left on white, rendered at `size` and optionally cropped to (width, height); saved as PNG."""
    from core.world import Obj, Scene, render
    scene = Scene(background="white", objects=(Obj("star", "blue", "small", 0, 1 / 6, 1 / 6, 0.2, 10.0),
                                               Obj("circle", "red", "large", 4, 0.5, 0.5, 0.3, 0.0)))
    image = render(scene, size)
    if crop is not None:
        image = image[:crop[1], :crop[0]]
    Image.fromarray(image).save(path)
    return path


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A valid 1-bit grayscale PNG declaring side x side pixels in a few kB: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)                 # filter byte + packed bits
    raw = zlib.compress(row * side, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def chromium_path() -> str:
    """Debian's chromium, or a skip (a failure under CI: the browser tests must run there)."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed; CI must run the browser tests (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return path


# ---- driving the page -------------------------------------------------------------------------

def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def fetch_image(page, src: str) -> Image.Image:
    """The image behind an <img src> / link, as served by the app."""
    response = page.request.get(src)
    assert response.ok, (src, response.status)
    return Image.open(io.BytesIO(response.body()))


def visible(page, selector: str):
    return page.locator(f"{selector} >> visible=true").first


def steps_field(page):
    """The visible tab's steps field, once the page has filled it with the model's default."""
    field = visible(page, "input[aria-label='Sampling steps (0: model default)']")
    page.wait_for_function("el => el.value !== '' && el.value !== '0'", arg=field.element_handle())
    return field


def upload_to_editor(page, path: Path) -> None:
    """Upload an image into the Inpaint tab's editor (an upload before the editor is ready is
    dropped: retried)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    editor = visible(page, ".ldm-inpaint-editor")
    empty = editor.get_by_text("Upload an image")
    empty.wait_for()
    editor.locator("canvas").first.wait_for(state="attached")       # the editor is ready for a file
    for _ in range(3):
        editor.locator("input[type=file]").set_input_files(str(path))
        try:
            empty.wait_for(state="hidden", timeout=5_000)
            return
        except PlaywrightTimeout:
            pass
