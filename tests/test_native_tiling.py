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


def _layout_model():
    import dataclasses
    from core.models.conditioners import LayoutEmbedderConfig
    from core.models.diffusion import LatentDiffusion
    cfg = dataclasses.replace(tiny_model("ldm_layout").config,
                              cond_stage=LayoutEmbedderConfig(embed_dim=32, n_classes=5, max_objects=3))
    torch.manual_seed(0)
    m = LatentDiffusion(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))              # non-zero output layers: conditioning shows
    return m


def test_a_layout_tiled_above_native_gives_each_tile_its_own_boxes():
    """Larger than trained, a layout stays one scene: each native tile is conditioned on the boxes
    inside it, in its own frame (a box half in or more, clipped), not on the whole layout."""
    from core.pipelines.conditioning import layout_conditioning, layout_encoder
    from core.pipelines.tiles import Tile
    T = lambda y0, y1, x0, x1: Tile(y0, x0, y1, x1, y0, x0, y1, x1)          # noqa: E731
    m = _layout_model()
    enc, encode = m.cond_stage_model, layout_encoder(m)
    layout = [(1, 0.05, 0.05, 0.2, 0.2), (4, 0.6, 0.1, 0.9, 0.4)]
    raw, raw_u = layout_conditioning(m, layout)
    assert torch.equal(encode(raw, None, 16, 16), enc([layout])) and torch.equal(encode(raw_u, None, 16, 16), enc([[]]))
    # the top-left quarter of a 16x16 latent holds the first box only, twice as large in its frame
    quarter = encode(raw, T(0, 8, 0, 8), 16, 16)
    assert torch.allclose(quarter, enc([[(1, 0.1, 0.1, 0.4, 0.4)]]), atol=1e-6)
    # the right half holds the second box entirely and none of the first (its slot: the null token;
    # cross-attention does not see the order of the tokens)
    right = encode(raw, T(0, 16, 8, 16), 16, 16)
    assert torch.allclose(right[:, 1:], enc([[(4, 0.2, 0.1, 0.8, 0.4)]])[:, :2], atol=1e-6)
    assert torch.equal(right[:, 0], enc([[]])[:, 0])
    # a box cut by the tile's edge: kept, clipped, when at least half of it is inside
    assert torch.allclose(encode(raw, T(0, 16, 0, 3), 16, 16),
                          enc([[(1, 0.8 / 3, 0.05, 1.0, 0.2)]]), atol=1e-6)            # 0.8..3.2 of 0..3: 2.2/2.4
    assert torch.equal(encode(raw, T(0, 16, 0, 2), 16, 16), enc([[]]))              # 1.2 of 2.4 inside: no
    # sampling: native tiles, recorded, and different from the whole layout repeated in each tile
    caps = P.capabilities(m)
    big = dict(steps=2, seed=3, width=2 * caps.native_size, height=2 * caps.native_size)
    image, sides = _unet_sides(m, lambda: P.sample_layout(m, layout, native_tiling=True, **big)[0])
    assert sides == {(caps.native_size // caps.factor,) * 2} and "tiled_diffusion" in P.read_infotext(image)
    one_piece = P.sample_layout(m, layout, **big)[0]
    assert not np.array_equal(np.asarray(image), np.asarray(one_piece))
