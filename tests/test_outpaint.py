"""Outpainting and soft inpainting (issue 16 §4) on tiny models: the canvas grows by whole grid
cells, the original is bit-exact outside the overlap band, repeated calls grow the picture; soft
inpainting with a binary mask is plain inpainting exactly, a zero mask value changes nothing and the
change grows with the mask value; bad inputs are plain ValueErrors."""

import numpy as np
import pytest
import torch
from PIL import Image

from core import pipelines as P
from core import save_model
from core.generate import main
from core.pipelines import parse_infotext
from core.pipelines.masks import feather, mask_plan
from core.pipelines.outpaint import OVERLAP_CELLS, _edge_canvas, outpaint_plan
from core.samplers import sample
from tests.tiny_models import tiny_model

SIDES = dict(left=0, right=0, top=0, bottom=0)


@pytest.fixture(scope="module")
def sd2():
    return tiny_model("sd2")                      # f = 8, grid 16


def _photo(w=64, h=64, seed=0) -> Image.Image:
    rng = np.random.RandomState(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.array([1.0, 0.5, 0.2])
    return Image.fromarray((base + rng.rand(h, w, 3) * 40).clip(0, 255).astype(np.uint8))


def _diff(a, b) -> np.ndarray:
    return np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean(axis=-1)      # (H, W)


# ---------------------------------------------------------------------------------------------
# Outpainting
# ---------------------------------------------------------------------------------------------

def test_outpaint_right_grows_the_canvas_and_keeps_the_original_outside_the_band(sd2):
    image = _photo()
    out = P.outpaint(sd2, image, "a cat", right=32, overlap=16, steps=2, seed=3)[0]
    assert out.size == (96, 64)
    d = _diff(out.crop((0, 0, 64, 64)), image)
    assert d[:, :48].max() == 0                                   # outside the 16 px band: bit-exact
    assert d[:, 48:].mean() > 0                                   # the band is blended
    assert d[:, 63].mean() > d[:, 49].mean()                      # ... more towards the seam
    info = out.info["ldm_studio"]
    assert info["task"] == "outpaint" and info["outpaint"] == "right 32" and info["outpaint_overlap"] == 16
    assert info["border_delta_e"] is not None and info["border_delta_e"] <= info["border_delta_e_raw"]
    assert "mask_blur" not in info and "masked_content" not in info
    parsed = parse_infotext(out.info["parameters"])
    assert (parsed["outpaint"], parsed["outpaint_fill"], parsed["width"]) == ("right 32", "edge", 96)


def test_repeated_outpainting_grows_the_picture_on_every_side(sd2):
    image = _photo(48, 32)
    grown = P.outpaint(sd2, image, "x", left=16, top=16, steps=1, seed=0)[0]
    assert grown.size == (64, 48)
    band = min(OVERLAP_CELLS * 8, 32 // 2)                        # 4 latent cells, at most half the picture
    assert grown.info["ldm_studio"]["outpaint_overlap"] == band
    assert _diff(grown.crop((16 + band, 16 + band, 64, 48)), image.crop((band, band, 48, 32))).max() == 0
    again = P.outpaint(sd2, grown, "x", bottom=32, steps=1, seed=0)[0]
    assert again.size == (64, 80)
    band = again.info["ldm_studio"]["outpaint_overlap"]
    assert np.array_equal(np.asarray(again)[:48 - band], np.asarray(grown)[:48 - band])


def test_outpaint_only_masked_runs_around_the_new_area_at_the_model_size(sd2):
    image = _photo(256, 64)
    sides = []
    hook = sd2.model.diffusion_model.register_forward_hook(lambda mod, args, out: sides.append(args[0].shape[-2:]))
    try:
        out = P.outpaint(sd2, image, "x", right=32, overlap=8, inpaint_area="only_masked", padding=8, width=64,
                         height=64, steps=1, seed=0)[0]
    finally:
        hook.remove()
    assert out.size == (288, 64) and set(sides) == {(8, 8)}                  # 64 px at f = 8, not 288 x 64
    assert _diff(out.crop((0, 0, 248, 64)), image.crop((0, 0, 248, 64))).max() == 0
    info = out.info["ldm_studio"]
    assert info["inpaint_area"] == "Only masked" and info["border_delta_e"] is not None


@pytest.mark.parametrize("fill", ["edge", "fill", "latent noise", "latent_nothing"])
def test_outpaint_fills(sd2, fill):
    out = P.outpaint(sd2, _photo(32, 32), "x", bottom=16, fill=fill, steps=1, seed=0)[0]
    assert out.size == (32, 48) and out.info["ldm_studio"]["outpaint_fill"] == fill.replace("_", " ")


def test_edge_fill_starts_from_the_border_colours(sd2):
    image = Image.new("RGB", (32, 32), (200, 40, 10))
    canvas = _edge_canvas(image, {**SIDES, "right": 32}, blur=8)
    assert canvas.size == (64, 32) and np.abs(np.asarray(canvas, int) - (200, 40, 10)).max() <= 1


def test_outpaint_plan_ramps_across_the_band():
    plan = outpaint_plan((8, 4), {**SIDES, "left": 16}, overlap=3)
    assert plan.hard.shape == (4, 24) and plan.blend is None
    assert plan.paste[0, :16].min() == 1
    assert plan.paste[0, 16:20].tolist() == pytest.approx([0.75, 0.5, 0.25, 0.0])
    assert plan.hard[0, 16:20].tolist() == [1, 1, 1, 0]
    soft = outpaint_plan((8, 4), {**SIDES, "bottom": 16, "right": 16}, overlap=2, soft=True)
    assert soft.blend is not None and soft.record == {"soft_inpainting": True}
    assert soft.paste[:4, :8].tolist()[0] == pytest.approx([0, 0, 0, 0, 0, 0, 1 / 3, 2 / 3])


def test_outpaint_with_a_dedicated_inpainting_model():
    out = P.outpaint(tiny_model("sd2_inpaint"), _photo(32, 32), "x", right=16, steps=1, seed=0,
                     soft_inpainting=True)[0]
    assert out.size == (48, 32) and out.info["ldm_studio"]["soft_inpainting"] is True


@pytest.mark.parametrize("kwargs, words", [
    ({"right": 20}, "right 20 is not a multiple of 16 px.*nearest: 16 or 32"),
    ({"left": 8}, "left 8 is not a multiple of 16.*nearest: 16"),
    ({"top": -16}, "top must be 0 or more"),
    ({"bottom": 1.5}, "whole number"),
    ({}, "nothing to outpaint"),
    ({"right": 64, "max_side": 100}, "gives 128x64 px; at most 100 px per side .--max-size."),
    ({"right": 16, "fill": "original"}, "fill must be one of edge, fill"),
    ({"right": 16, "mask_blur": 4}, "leave mask_blur"),
    ({"right": 16, "overlap": -1}, "overlap"),
])
def test_outpaint_bad_inputs(sd2, kwargs, words):
    with pytest.raises(ValueError, match=words):
        P.outpaint(sd2, _photo(), "x", steps=1, **kwargs)


def test_outpaint_beyond_the_whole_picture_limit_says_only_masked(sd2):
    with pytest.raises(ValueError, match="too large.*only_masked"):
        P.outpaint(sd2, _photo(2048, 16), "x", right=32, steps=1)


# ---------------------------------------------------------------------------------------------
# Soft inpainting
# ---------------------------------------------------------------------------------------------

def _stripes(values, w=64, h=64) -> Image.Image:
    """Vertical stripes, one per value, of width w / len(values) (whole latent cells at f = 8)."""
    a = np.zeros((h, w), np.float32)
    step = w // len(values)
    for i, v in enumerate(values):
        a[:, i * step:(i + 1) * step] = v
    return Image.fromarray(np.rint(a * 255).astype(np.uint8), mode="L")


@pytest.mark.parametrize("family", ["sd2", "sd2_inpaint"])
def test_soft_inpainting_with_a_binary_mask_is_plain_inpainting_exactly(family):
    m = tiny_model(family)
    image, mask = _photo(), _stripes([0, 1, 1, 0])
    for kwargs in ({}, {"inpaint_area": "only_masked", "padding": 0}):
        plain = P.inpaint(m, image, mask, "x", steps=2, seed=4, mask_blur=0, **kwargs)[0]
        soft = P.inpaint(m, image, mask, "x", steps=2, seed=4, mask_blur=0, soft_inpainting=True, **kwargs)[0]
        assert np.array_equal(np.asarray(plain), np.asarray(soft))
    assert "Soft inpainting enabled: True" in soft.info["parameters"]
    assert parse_infotext(soft.info["parameters"])["soft_inpainting"] is True
    assert "soft_inpainting" not in plain.info["ldm_studio"]


def test_soft_inpainting_change_grows_with_the_mask_value(sd2):
    image = _photo()
    values = [0.0, 0.3, 0.6, 1.0]
    out = P.inpaint(sd2, image, _stripes(values), "x", steps=3, seed=1, mask_blur=0, soft_inpainting=True)[0]
    d = _diff(out, image)
    change = [d[:, i * 16:(i + 1) * 16].mean() for i in range(4)]
    assert d[:, :16].max() == 0                                   # mask 0: not a bit changed
    assert change[1] < change[2] < change[3], change
    # Plain inpainting binarises at 0.5: the 0.3 stripe is kept, the 0.6 one fully repainted.
    plain = _diff(P.inpaint(sd2, image, _stripes(values), "x", steps=3, seed=1, mask_blur=0)[0], image)
    assert plain[:, 16:32].max() == 0 and plain[:, 32:48].mean() > change[2]


def test_soft_inpainting_makes_the_blur_a_transition(sd2):
    image, mask = _photo(), _stripes([0, 1, 1, 0])
    plain = P.inpaint(sd2, image, mask, "x", steps=2, seed=4, mask_blur=8)[0]
    soft = P.inpaint(sd2, image, mask, "x", steps=2, seed=4, mask_blur=8, soft_inpainting=True)[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(soft))   # the latent blend follows the blur
    for out in (plain, soft):                                         # outside the mask: untouched
        assert _diff(out, image)[:, :16].max() == 0 and _diff(out, image)[:, 48:].max() == 0
    plan = mask_plan(np.asarray(mask, np.float32) / 255, 8, soft=True)
    assert 0 < plan.blend[0, 17] < plan.blend[0, 20] < plan.blend[0, 32] <= 1   # a ramp inside the mask
    assert np.array_equal(plan.paste, feather((np.asarray(mask) > 127).astype(np.float32), 8))


def test_a_zero_mask_value_keeps_the_latent_and_the_pixels():
    """The blend a soft mask drives, at its zero: the sampler returns x0 exactly where mask = 0, and
    an all-zero soft mask is refused as nothing to repaint (the picture would come back unchanged)."""
    m = tiny_model("sd2")
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    c = m.get_learned_conditioning(["x"])
    for sampler in ("ddim", "euler"):
        z = sample(m, c, None, guidance_scale=1.0, steps=3, sampler=sampler, shape=(1, 4, 4, 4), seed=0, x0=x0,
                   mask=torch.zeros(1, 1, 4, 4), strength=1.0)
        assert torch.equal(z, x0)
    with pytest.raises(ValueError, match="mask is empty"):
        P.inpaint(m, _photo(), Image.new("L", (64, 64), 0), "x", steps=1, soft_inpainting=True)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def test_cli_outpaint_and_soft_inpainting(tmp_path, capsys):
    model = save_model(tiny_model("sd2"), tmp_path / "tiny.safetensors",
                       metadata={"ldm_studio_defaults": '{"steps": 1}'})
    _photo().save(tmp_path / "in.png")
    _stripes([0, 0.5, 1, 0]).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    common = ["--model", str(model), "--image", str(tmp_path / "in.png"), "--outdir", str(out), "--quiet",
              "--seed", "1", "--prompt", "x"]
    assert main(["outpaint", *common, "--right", "32", "--top", "16", "--fill", "fill", "--soft-inpainting"]) == 0
    assert main(["inpaint", *common, "--mask", str(tmp_path / "mask.png"), "--soft-inpainting"]) == 0
    first, second = capsys.readouterr().out.split()
    with Image.open(first) as im:
        assert im.size == (96, 80)
    grown = P.read_infotext(first)
    assert (grown["outpaint"], grown["outpaint_fill"], grown["soft_inpainting"]) == ("right 32 top 16", "fill", True)
    assert P.read_infotext(second)["soft_inpainting"] is True
    assert main(["outpaint", *common, "--right", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: right 20 is not a multiple of 16") and "\n" not in err
