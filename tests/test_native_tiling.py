"""Larger than trained (issue 16 §3): asked to (native_tiling=True, --native-tiling; off by default,
as in AUTOMATIC1111), text, class and unconditional sampling above a model's native size denoise
the whole latent in overlapping tiles of the native size, blended every step
(core/pipelines/tiling.py native_tiling); at the native size nothing changes; tiling is recorded
("Tiled diffusion")."""
import numpy as np
import pytest
import torch

from core import pipelines as P
from core.eval.metrics import seam_ratio
from core.generate import main
from core.pipelines.tiles import overlapping_tiles
from core.pipelines.tiling import native_tiling, tiled
from tests.tiny_models import tiny_model


def _sample(m, family: str, **kw):
    if family == "sd2":
        return P.txt2img(m, "a red circle", "blurry", **kw)
    if family == "shapes_class":
        return P.sample_class(m, 3, **kw)
    return P.sample_unconditional(m, **kw)


def _unet_sides(m, run):
    sides = []
    hook = m.model.diffusion_model.register_forward_hook(lambda mod, args, out: sides.append(tuple(args[0].shape[-2:])))
    try:
        return run(), set(sides)
    finally:
        hook.remove()


@pytest.mark.parametrize("family", ["sd2", "shapes_class", "ldm_uncond"])
def test_above_native_the_unet_sees_native_tiles_and_the_choice_is_recorded(family):
    m = tiny_model(family)
    caps = P.capabilities(m)
    native, tile = caps.native_size, caps.native_size // caps.factor
    big = dict(steps=2, seed=1, width=2 * native, height=native + caps.grid)
    image, sides = _unet_sides(m, lambda: _sample(m, family, native_tiling=True, **big)[0])
    assert sides == {(tile, tile)}                                           # every call: native-size tiles
    assert image.size == (big["width"], big["height"])
    recorded = P.read_infotext(image)["tiled_diffusion"]
    assert recorded == f"{native} px tiles overlapping {native // 2} px"
    off, sides = _unet_sides(m, lambda: _sample(m, family, **big)[0])                 # the default
    assert sides == {(big["height"] // caps.factor, big["width"] // caps.factor)}    # one piece
    assert "tiled_diffusion" not in P.read_infotext(off)
    assert np.abs(np.asarray(off, np.float32) - np.asarray(image, np.float32)).mean() > 1


@pytest.mark.parametrize("family", ["sd2", "shapes_class", "ldm_uncond"])
def test_at_native_size_nothing_changes(family):
    m = tiny_model(family)
    native = P.capabilities(m).native_size
    kw = dict(steps=2, seed=4, width=native, height=native // 2 if family == "sd2" else native)
    on = _sample(m, family, native_tiling=True, **kw)[0]
    off = _sample(m, family, **kw)[0]
    assert np.array_equal(np.asarray(on), np.asarray(off))
    assert "Tiled diffusion" not in on.info["parameters"] and "tiled_diffusion" not in P.read_infotext(on)
    assert native_tiling(m, native, native, True) == (None, None)
    with pytest.raises(ValueError, match="native_tiling must be True"):
        _sample(m, family, native_tiling="yes", **kw)


def test_tiled_large_image_has_no_seams():
    """The seam metric of the tiled-upscale test on a 2x-native text-to-image result: the jump across
    the tiles' edges is no larger than across the other latent-pixel edges."""
    m = tiny_model("sd2")
    caps = P.capabilities(m)
    f, side = caps.factor, 2 * caps.native_size
    tile = caps.native_size // f
    image = np.asarray(P.txt2img(m, "a red circle", steps=3, seed=2, width=side, height=side, native_tiling=True)[0])
    tiles = overlapping_tiles(side // f, side // f, tile, tile // 2, caps.grid // f)
    edges = [t.x0 * f for t in tiles] + [t.x1 * f for t in tiles]
    assert seam_ratio(image, edges, edges, f) < 1.15


def test_seam_metric_sees_hard_tiles_and_the_blend_removes_them():
    """A network whose output depends on its whole input (here: plus the input's mean) makes tiles
    that disagree; cut apart (no overlap) they show as seams (ratio ~17), blended over half a tile
    only a kink is left where a tile's ramp starts (~1.5; the input itself: ~1.0)."""
    def context_model(x, t, cond):
        return x + x.mean(dim=(-2, -1), keepdim=True)                         # (B, C, h, w)

    yy, xx = torch.meshgrid(torch.linspace(0, 4, 64), torch.linspace(0, 4, 64), indexing="ij")
    x = torch.stack([torch.sin(xx) + yy, torch.cos(yy) * xx, xx * yy])[None]          # (1, 3, 64, 64)
    t = torch.tensor([500])

    def ratio(overlap):
        out = tiled(16, overlap, 4)(context_model)(x, t, None)[0].permute(1, 2, 0).numpy()
        edges = sorted({e for tl in overlapping_tiles(64, 64, 16, overlap, 4) for e in (tl.x0, tl.x1)})
        return seam_ratio(out, edges, edges, 4)

    assert ratio(0) > 10 and ratio(8) < 2
    assert seam_ratio(x[0].permute(1, 2, 0).numpy(), [16, 32, 48], [16, 32, 48], 4) < 1.2
    with pytest.raises(ValueError, match="seam_ratio needs"):
        seam_ratio(x[0].permute(1, 2, 0).numpy(), [], [], 4)


def test_cli_tiles_above_native_when_asked(tmp_path, capsys):
    from core import save_model
    path = save_model(tiny_model("ldm_uncond"), tmp_path / "u.safetensors",
                      metadata={"ldm_studio_defaults": '{"steps": 2}'})
    for flag, want in ((["--native-tiling"], "32 px tiles overlapping 16 px"), ([], None)):
        assert main(["uncond", "--model", str(path), "--width", "64", "--height", "64", "--seed", "1", "--quiet",
                     "--outdir", str(tmp_path / "out"), "--device", "cpu", *flag]) == 0
        written = capsys.readouterr().out.split()
        assert P.read_infotext(written[0]).get("tiled_diffusion") == want
