"""The shapes world (shared/shapes_world.md): values and words, caption grammar, sampling, the
renderer, the seeded dataset, and the checker's accuracy on true and perturbed captions."""
import dataclasses

import cv2
import numpy as np
import pytest

from core.world import (BACKGROUNDS, PALETTE, POSITIONS, SHAPES, SIZES, Obj, ObjectSpec, Scene,
                        SceneSpec, ShapesWorld, analyse, caption, class_label, class_words, compare,
                        coverage, judge, judge_caption, layout, parse_caption, random_scene, render,
                        shape_vertices, spec_of)
from core.world.scene import MIN_GAP

# ---------------------------------------------------------------- values and words (the spec's tables)


def test_palettes_shapes_sizes_positions_are_the_spec_s():
    assert list(PALETTE.items()) == [
        ("red", (220, 40, 40)), ("green", (40, 170, 60)), ("blue", (40, 80, 220)),
        ("yellow", (240, 210, 40)), ("purple", (140, 60, 180)), ("orange", (245, 140, 30))]
    assert list(BACKGROUNDS.items()) == [
        ("white", (245, 245, 245)), ("black", (20, 20, 20)), ("gray", (128, 128, 128))]
    assert SHAPES == ("circle", "square", "triangle", "star")
    assert SIZES == {"small": (0.18, 0.22), "large": (0.28, 0.32)}
    assert POSITIONS == ("top left", "top", "top right", "left", "center", "right",
                         "bottom left", "bottom", "bottom right")


# ---------------------------------------------------------------- captions

def _obj(shape, colour, size, cell):
    return ObjectSpec(shape, colour, size, cell)


def test_caption_spec_example_and_hand_written_cases():
    spec = SceneSpec("gray", (_obj("circle", "red", "large", 0), _obj("star", "blue", "small", 4)))
    assert caption(spec) == ("a large red circle at the top left and a small blue star in the "
                             "center on a gray background")
    one = SceneSpec("black", (_obj("triangle", "green", "small", 7),))
    assert caption(one) == "a small green triangle at the bottom on a black background"
    # Given out of order: listed top-to-bottom, then left-to-right.
    three = SceneSpec("white", (_obj("square", "orange", "large", 8), _obj("star", "yellow", "small", 1),
                                _obj("circle", "purple", "small", 3)))
    assert caption(three) == ("a small yellow star at the top and a small purple circle at the left "
                              "and a large orange square at the bottom right on a white background")
    row = SceneSpec("gray", (_obj("circle", "red", "small", 5), _obj("circle", "blue", "small", 3)))
    assert caption(row) == ("a small blue circle at the left and a small red circle at the right "
                            "on a gray background")


def test_caption_of_a_scene_uses_its_objects():
    o = Obj("square", "purple", "large", 2, 0.83, 0.17, 0.3, 12.0)
    assert caption(Scene("white", (o,))) == "a large purple square at the top right on a white background"


def test_parse_caption_round_trip_over_random_scenes():
    rng = np.random.default_rng(0)
    for _ in range(500):
        s = random_scene(rng)
        text = caption(s)
        assert text == text.lower() and "\n" not in text
        assert parse_caption(text) == spec_of(s)


def test_parse_caption_normalises_case_spacing_and_order():
    spec = parse_caption("  A Small blue star in the center   and a large RED circle at the top left "
                         "on a gray background ")
    assert spec == SceneSpec("gray", (_obj("circle", "red", "large", 0), _obj("star", "blue", "small", 4)))


@pytest.mark.parametrize("text", [
    "a big red circle at the top left on a gray background",             # unknown size
    "a large pink circle at the top left on a gray background",          # unknown colour
    "a large red circle at the center on a gray background",             # centre is "in the center"
    "a large red circle in the top on a gray background",                # others are "at the"
    "a large red circle at the top left on a grey background",           # background word
    "a large red circle at the top left",                                # no background
    "on a gray background",                                              # no object
    "a large red circle at the top and a small red star at the top on a white background",
    " and ".join(f"a small red circle at the {p}" for p in ("top", "left", "right", "bottom"))
    + " on a white background",                                          # four objects
])
def test_parse_caption_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError):
        parse_caption(text)


# ---------------------------------------------------------------- class labels and layouts

def test_class_label_formula_and_inverse():
    one = lambda shape, colour: SceneSpec("white", (_obj(shape, colour, "small", 4),))
    assert class_label(one("circle", "red")) == 0
    assert class_label(one("square", "green")) == 1 * 6 + 1
    assert class_label(one("triangle", "purple")) == 2 * 6 + 4
    assert class_label(one("star", "orange")) == 23
    two = SceneSpec("white", (_obj("circle", "red", "small", 0), _obj("star", "red", "small", 8)))
    assert class_label(two) is None
    for label in range(24):
        shape, colour = class_words(label)
        assert class_label(one(shape, colour)) == label
    with pytest.raises(ValueError):
        class_words(24)


def test_layout_is_the_circumscribed_square_in_unit_coordinates():
    rng = np.random.default_rng(1)
    for _ in range(200):
        s = random_scene(rng)
        boxes = layout(s)
        assert len(boxes) == len(s.objects)
        for (shape, colour, x0, y0, x1, y1), o in zip(boxes, s.objects):
            assert (shape, colour) == (o.shape, o.colour)
            assert x1 - x0 == pytest.approx(o.diameter) and y1 - y0 == pytest.approx(o.diameter)
            assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((o.cx, o.cy))
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


# ---------------------------------------------------------------- sampling

def test_random_scenes_follow_the_rules():
    rng = np.random.default_rng(2)
    counts = set()
    seen = {"shape": set(), "colour": set(), "background": set(), "size": set()}
    for _ in range(2000):
        s = random_scene(rng)
        objs = s.objects
        counts.add(len(objs))
        seen["background"].add(s.background)
        cells = [o.cell for o in objs]
        assert cells == sorted(set(cells))                  # distinct, in caption order
        for o in objs:
            seen["shape"].add(o.shape), seen["colour"].add(o.colour), seen["size"].add(o.size)
            lo, hi = SIZES[o.size]
            assert lo <= o.diameter <= hi
            centre = ((o.cell % 3 + 0.5) / 3, (o.cell // 3 + 0.5) / 3)
            assert abs(o.cx - centre[0]) <= 1 / 24 + 1e-12 and abs(o.cy - centre[1]) <= 1 / 24 + 1e-12
            r = o.diameter / 2
            assert r <= o.cx <= 1 - r and r <= o.cy <= 1 - r    # inside the frame
            if o.shape == "circle":
                assert o.rotation == 0.0
            else:
                assert 0.0 <= o.rotation < 360.0
        for i, a in enumerate(objs):                         # never overlapping
            for b in objs[i + 1:]:
                gap = np.hypot(a.cx - b.cx, a.cy - b.cy) - (a.diameter + b.diameter) / 2
                assert gap >= MIN_GAP - 1e-12
    assert counts == {1, 2, 3}
    assert seen == {"shape": set(SHAPES), "colour": set(PALETTE), "background": set(BACKGROUNDS),
                    "size": {"small", "large"}}


def test_random_scene_object_count_option():
    rng = np.random.default_rng(3)
    assert all(len(random_scene(rng, 1).objects) == 1 for _ in range(50))
    assert {len(random_scene(rng, (2, 3)).objects) for _ in range(50)} == {2, 3}
    with pytest.raises(ValueError):
        random_scene(rng, 4)


# ---------------------------------------------------------------- the renderer

def test_shape_vertices_geometry():
    R = 10.0
    for shape in ("square", "triangle", "star"):
        v = shape_vertices(shape, R, 23.0)
        radii = np.hypot(v[:, 0], v[:, 1])
        tips = radii[0::2] if shape == "star" else radii
        assert tips == pytest.approx(np.full(len(tips), R))     # on the circumscribed circle
        if shape == "star":
            assert len(v) == 10 and radii[1::2] == pytest.approx(np.full(5, 0.45 * R))
        else:                                                    # regular: equal edges
            edges = np.hypot(*(v - np.roll(v, -1, axis=0)).T)
            assert edges == pytest.approx(np.full(len(v), 2 * R * np.sin(np.pi / len(v))))
    # Rotation 0: triangle and star point up (-y), the square is axis-aligned.
    assert shape_vertices("triangle", R, 0)[0] == pytest.approx([0, -R])
    assert shape_vertices("star", R, 0)[0] == pytest.approx([0, -R])
    sq = shape_vertices("square", R, 0)
    assert np.abs(sq) == pytest.approx(np.full((4, 2), R / np.sqrt(2)))
    # Positive rotation turns clockwise on screen (y down): the top tip moves to the right.
    assert shape_vertices("star", R, 90)[0] == pytest.approx([R, 0], abs=1e-9)


def _shoelace(v):
    x, y = v[:, 0], v[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


@pytest.mark.parametrize("shape", SHAPES)
def test_coverage_matches_an_independent_rasteriser(shape):
    # Reference: cv2.fillPoly at 64x, box-filtered down; its half-canvas-pixel growth is 1/128 px.
    rng = np.random.default_rng(4)
    for _ in range(3):
        cx, cy, R, rot = 20 + rng.uniform(-1, 1), 21 + rng.uniform(-1, 1), rng.uniform(5, 12), rng.uniform(0, 360)
        ours = coverage(shape, cx, cy, R, rot, 40, 42)
        if shape == "circle":
            t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
            v, area = np.stack([R * np.cos(t), R * np.sin(t)], 1), np.pi * R * R
        else:
            v = shape_vertices(shape, R, rot)
            area = _shoelace(v)
        k = 64
        big = np.zeros((40 * k, 42 * k), np.uint8)
        pts = np.round(((v + [cx, cy]) * k - 0.5) * 16).astype(np.int32)
        cv2.fillPoly(big, [pts], 255, lineType=cv2.LINE_8, shift=4)
        ref = cv2.resize(big.astype(np.float32) / 255, (42, 40), interpolation=cv2.INTER_AREA)
        assert np.abs(ours - ref).max() <= 0.2              # 4x4 sub-samples per pixel
        assert np.abs(ours - ref).mean() <= 0.01
        assert ours.sum() == pytest.approx(area, rel=0.01)


def _single(shape, colour, background, cx, cy, d, rot, cell=4, size="small"):
    return Scene(background, (Obj(shape, colour, size, cell, cx, cy, d, rot),))


def test_render_background_corners_centre_colour_and_antialiasing():
    rng = np.random.default_rng(5)
    for S in (64, 256):
        for _ in range(40):
            s = random_scene(rng)
            img = render(s, S)
            assert img.shape == (S, S, 3) and img.dtype == np.uint8
            bg = BACKGROUNDS[s.background]
            for y, x in ((0, 0), (0, S - 1), (S - 1, 0), (S - 1, S - 1)):
                assert tuple(img[y, x]) == bg
            for o in s.objects:
                assert tuple(img[int(o.cy * S), int(o.cx * S)]) == PALETTE[o.colour]
            # Anti-aliased: pixels that are neither background nor an object colour exist.
            pure = np.zeros((S, S), bool)
            for c in [bg] + [PALETTE[o.colour] for o in s.objects]:
                pure |= (img == c).all(axis=2)
            assert (~pure).sum() >= 8 * len(s.objects)
    assert np.array_equal(render(s, 64), render(s, 64))      # deterministic


def test_render_is_a_4x_box_filter_mix_inside_the_circumscribed_circle():
    # Every pixel = round(bg + k/16 (colour - bg)) with one k in 0..16 (4x4 sub-samples), k > 0
    # only within the circumscribed circle, and the object's area in range for its size class.
    rng = np.random.default_rng(6)
    S = 64
    per_r2 = {"circle": np.pi, "square": 2.0, "triangle": 3 * np.sqrt(3) / 4,
              "star": 5 * 0.45 * np.sin(np.pi / 5)}
    for shape in SHAPES:
        for size in SIZES:
            d = rng.uniform(*SIZES[size])
            s = _single(shape, "blue", "white", 0.5 + rng.uniform(-1, 1) / 24,
                        0.5 + rng.uniform(-1, 1) / 24, d, rng.uniform(0, 360), size=size)
            img = render(s, S).astype(np.float64)
            bg, c = np.array(BACKGROUNDS["white"], float), np.array(PALETTE["blue"], float)
            levels = np.floor(bg + np.arange(17)[:, None] / 16 * (c - bg) + 0.5)   # (17, 3)
            match = (img[:, :, None, :] == levels[None, None]).all(axis=3)        # (S, S, 17)
            assert match.any(axis=2).all()
            k = match.argmax(axis=2)
            assert 0 < ((k > 0) & (k < 16)).sum()
            yy, xx = np.mgrid[0:S, 0:S]
            # Distance from the centre to the nearest point of each pixel.
            ox = np.maximum(np.abs(xx + 0.5 - s.objects[0].cx * S) - 0.5, 0)
            oy = np.maximum(np.abs(yy + 0.5 - s.objects[0].cy * S) - 0.5, 0)
            assert (k[np.hypot(ox, oy) > d / 2 * S] == 0).all()
            # Vertices reach the circle: the pixel 0.9 R out towards each tip is covered.
            if shape != "circle":
                o = s.objects[0]
                tips = shape_vertices(shape, 0.9 * d / 2 * S, o.rotation)[::2 if shape == "star" else 1]
                for tx, ty in tips + [o.cx * S, o.cy * S]:
                    assert k[int(ty), int(tx)] > 0
            diameter = 2 * np.sqrt(k.sum() / 16 / per_r2[shape]) / S
            assert diameter == pytest.approx(d, abs=0.005)


def test_render_objects_in_distinct_cells_never_share_a_pixel():
    rng = np.random.default_rng(7)
    S = 64
    for _ in range(100):
        s = random_scene(rng, 3)
        covs = [coverage(o.shape, o.cx * S, o.cy * S, o.diameter / 2 * S, o.rotation, S, S)
                for o in s.objects]
        assert ((np.stack(covs) > 0).sum(axis=0) <= 1).all()
        for o, cov in zip(s.objects, covs):                   # centred in its own cell
            ys, xs = np.mgrid[0:S, 0:S] + 0.5
            centroid = ((cov * xs).sum() / cov.sum() / S, (cov * ys).sum() / cov.sum() / S)
            assert centroid == pytest.approx((o.cx, o.cy), abs=0.1 / S)  # 4x4 sub-samples
            assert 3 * int(centroid[1] * 3) + int(centroid[0] * 3) == o.cell


# ---------------------------------------------------------------- the dataset

def test_shapes_world_is_deterministic_per_seed_and_index():
    w = ShapesWorld(size=64, seed=0)
    a, b = w.sample(5), w[9]
    again = ShapesWorld(size=64, seed=0)
    assert again.sample(9)["caption"] == b["caption"]          # any order, any instance
    a2 = again[5]
    assert np.array_equal(a["image"], a2["image"]) and a["scene"] == a2["scene"]
    assert a["caption"] == caption(a["scene"]) and np.array_equal(a["image"], render(a["scene"], 64))
    assert a["layout"] == layout(a["scene"]) and a["class_label"] == class_label(a["scene"])
    other = ShapesWorld(size=64, seed=1)
    assert sum(other[i]["caption"] != w[i]["caption"] for i in range(20)) >= 18
    assert len({w[i]["caption"] for i in range(20)}) == 20
    # Regression guard: a given (seed, index) must keep its scene, or trained models' data changes.
    assert ShapesWorld(seed=0).scene(0) == ShapesWorld(seed=0).scene(0)
    assert caption(ShapesWorld(seed=0).scene(0)) == GOLDEN_CAPTION_SEED0_INDEX0


GOLDEN_CAPTION_SEED0_INDEX0 = ("a large yellow circle at the top right and a large orange circle at "
                               "the left and a large yellow star at the bottom right on a black "
                               "background")


def test_shapes_world_single_objects_and_bad_arguments():
    w = ShapesWorld(size=32, seed=3, n_objects=1)
    for i in range(30):
        s = w[i]
        assert s["image"].shape == (32, 32, 3)
        assert len(s["scene"].objects) == 1 and 0 <= s["class_label"] < 24
    for bad in (dict(size=4), dict(seed=-1), dict(n_objects=0)):
        with pytest.raises(ValueError):
            ShapesWorld(**bad)
    with pytest.raises(ValueError):
        ShapesWorld().sample(-1)


# ---------------------------------------------------------------- the checker

def _perturbations(spec: SceneSpec, rng):
    """One perturbed spec per kind (None where the kind does not apply)."""
    objs = list(spec.objects)
    i = int(rng.integers(len(objs)))
    o = objs[i]
    empty = [c for c in range(9) if c not in {x.cell for x in objs}]

    def with_obj(new):
        return SceneSpec(spec.background, tuple(sorted(objs[:i] + [new] + objs[i + 1:], key=lambda x: x.cell)))
    others = lambda seq, cur: [x for x in seq if x != cur]
    return {
        "colour": with_obj(dataclasses.replace(o, colour=rng.choice(others(list(PALETTE), o.colour)))),
        "shape": with_obj(dataclasses.replace(o, shape=rng.choice(others(SHAPES, o.shape)))),
        "size": with_obj(dataclasses.replace(o, size="large" if o.size == "small" else "small")),
        "cell": with_obj(dataclasses.replace(o, cell=int(rng.choice(empty)))),
        # The caption lacks an object the image shows (needs two objects to leave one).
        "missing": (SceneSpec(spec.background, tuple(objs[:i] + objs[i + 1:])) if len(objs) > 1 else None),
        # The caption asks for an object the image lacks.
        "extra": SceneSpec(spec.background, tuple(sorted(objs + [ObjectSpec(
            rng.choice(SHAPES), rng.choice(list(PALETTE)), rng.choice(list(SIZES)),
            int(rng.choice(empty)))], key=lambda x: x.cell))) if len(objs) < 3 else None,
        "background": SceneSpec(rng.choice(others(list(BACKGROUNDS), spec.background)), spec.objects),
    }


@pytest.fixture(scope="module")
def analysed():
    """(size, spec, analysis) for rendered random scenes: 300 at 64 px, 60 at 32, 12 at 256."""
    rng = np.random.default_rng(8)
    out = []
    for S, n in ((64, 300), (32, 60), (256, 12)):
        for _ in range(n):
            s = random_scene(rng)
            out.append((S, spec_of(s), analyse(render(s, S))))
    return out


def test_checker_accepts_true_captions(analysed):
    for S in (64, 32, 256):
        results = [compare(a, spec)["scene_ok"] for size, spec, a in analysed if size == S]
        rate = np.mean(results)
        assert rate >= 0.99, f"S={S}: true captions judged right in only {rate:.1%}"


def test_checker_rejects_perturbed_captions(analysed):
    rng = np.random.default_rng(9)
    rejected = {}
    for S, spec, a in analysed:
        if S != 64:
            continue
        for kind, wrong in _perturbations(spec, rng).items():
            if wrong is not None:
                rejected.setdefault(kind, []).append(not compare(a, wrong)["scene_ok"])
    for kind, r in rejected.items():
        assert len(r) >= 100 and np.mean(r) >= 0.97, f"{kind}: rejected only {np.mean(r):.1%} of {len(r)}"


def test_checker_recovers_the_geometry():
    rng = np.random.default_rng(10)
    for _ in range(40):
        s = random_scene(rng)
        seen = analyse(render(s, 64)).objects
        assert len(seen) == len(s.objects)
        for o, v in zip(s.objects, seen):
            assert (v.shape, v.colour, v.size, v.cell) == (o.shape, o.colour, o.size, o.cell)
            assert (v.cx, v.cy) == pytest.approx((o.cx, o.cy), abs=0.3 / 64)
            assert v.diameter == pytest.approx(o.diameter, rel=0.03)
            if o.shape != "circle":
                period = {"square": 90, "triangle": 120, "star": 72}[o.shape]
                err = (v.rotation - o.rotation + period / 2) % period - period / 2
                assert abs(err) < 4.0


def test_judge_caption_and_its_verdict_fields():
    s = Scene("gray", (Obj("star", "blue", "small", 4, 0.5, 0.5, 0.2, 10.0),
                       Obj("circle", "red", "large", 0, 0.17, 0.17, 0.3, 0.0)))
    img = render(s, 64)
    text = "a large red circle at the top left and a small blue star in the center on a gray background"
    r = judge_caption(img, text)
    assert r["scene_ok"] and r["no_extra"] and r["background"]["ok"]
    assert [o["asked"]["position"] for o in r["objects"]] == ["top left", "center"]
    wrong = judge_caption(img, text.replace("blue star", "green star"))
    assert not wrong["scene_ok"]
    assert [o["colour_ok"] for o in wrong["objects"]] == [True, False]
    assert all(o["shape_ok"] and o["size_ok"] and o["cell_ok"] for o in wrong["objects"])
    assert judge(img, s)["scene_ok"]                          # a Scene works as the spec too
    with pytest.raises(ValueError):
        judge_caption(img, "a red circle")
    with pytest.raises(ValueError):
        judge(img, text)                                      # text goes through judge_caption
    with pytest.raises(ValueError):
        judge(img.astype(np.float32) / 255, s)
    with pytest.raises(ValueError):
        judge(img[:, :, 0], s)


def test_checker_finds_nothing_on_a_blank_image_and_rejects_misshapen_blobs():
    blank = np.full((64, 64, 3), BACKGROUNDS["white"], np.uint8)
    r = judge_caption(blank, "a small red circle in the center on a white background")
    assert not r["scene_ok"] and not r["objects"][0]["found"] and r["no_extra"]
    # An ellipse (aspect 2.4) where a circle is asked: right colour, cell and place, wrong shape.
    big = np.full((256, 256, 3), BACKGROUNDS["gray"], np.uint8)
    cv2.ellipse(big, (128, 128), (48, 20), 30, 0, 360, PALETTE["red"], -1)
    img = cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA)
    o = judge_caption(img, "a large red circle in the center on a gray background")["objects"][0]
    assert o["found"] and o["colour_ok"] and o["cell_ok"] and not o["shape_ok"]


def test_checker_tolerates_mild_noise_and_blur():
    # Generated images are rarely pixel-exact: Gaussian noise (sigma 5) and blur (sigma 1 px).
    rng = np.random.default_rng(11)
    ok = []
    for i in range(60):
        s = random_scene(rng)
        img = render(s, 64)
        if i % 2:
            img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
        else:
            img = cv2.GaussianBlur(img, (0, 0), 1.0)
        ok.append(judge(img, s)["scene_ok"])
    assert np.mean(ok) >= 0.95
