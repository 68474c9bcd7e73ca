"""Judge whether an image shows the shapes-world scene a caption asks for.

Spec: shared/shapes_world.md, "What a checker judges": for each object asked, its colour (nearest
palette colour), shape, size class and grid cell (from the centroid), and that no extra object is
present; a scene is right when every object is. We also judge the background (nearest background
colour), and count it in `scene_ok`: an image on the wrong background does not show the caption.

How (analysis by synthesis; the world's rules are exact, so we compare with the ideal shapes):
 1. background = per-channel median of the border pixels; object pixels are those far from it
    (half the way to the least contrasting palette colour); 8-connected components above a
    minimum area are the objects seen.
 2. colour = median of each component's most saturated pixels, snapped to the nearest palette
    colour; coverage alpha of every pixel = its position on the line background -> object colour,
    so anti-aliased edges count by how much of them the shape covers.
 3. area = sum of alpha, centre = alpha-weighted centroid. For each candidate shape, the
    circumscribed radius follows from the area (circle pi R^2, square 2 R^2, triangle 3 sqrt(3)/4 R^2,
    star 5 * 0.45 sin(36 deg) R^2) and the rotation from the phase of the k-th angular moment
    sum(alpha z^k) (k = 4, 3, 5); we render that ideal shape with the renderer's own `coverage`,
    sharp and slightly blurred (generated images have softer edges), and keep the shape whose
    coverage best matches alpha (soft IoU, sum(min) / sum(max)); a best match under MIN_FIT is no
    shape of this world. Its radius gives the size class (threshold 0.25 S, between the classes'
    0.22 and 0.28); the centroid gives the cell. Asked and seen objects are matched closest first.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .caption import parse_caption
from .render import coverage, shape_vertices
from .scene import (BACKGROUNDS, PALETTE, POSITIONS, SHAPES, STAR_INNER_RATIO, Scene, SceneSpec,
                    spec_of)

OBJECT_CONTRAST = 0.5    # object pixels are further from the background than this fraction of
                         # the least contrasting palette colour's distance (purple on gray: 86),
                         # so anti-aliased edges do not bridge the gap between two objects
MIN_AREA = 0.003         # components smaller than this (sum of alpha, fraction of the image) are
                         # noise: 30% of the smallest object (small triangle, 0.0105)
MIN_FIT = 0.8            # soft IoU with the best ideal shape below which no shape is recognised:
                         # rendered single shapes fit their own shape at >= 0.89 (S=32) and
                         # >= 0.96 (S=64), another shape at <= 0.87 (a circle as a square)
EDGE_REACH = 2           # pixels beyond a component that still count towards its coverage
TEMPLATE_BLURS = (0.0, 0.7, 1.4)  # Gaussian sigmas (pixels) the ideal shape is also compared
                         # with: a generated image's edges may be softer than the renderer's
SIZE_THRESHOLD = 0.25    # circumscribed diameter / S between "small" (<= 0.22) and "large" (>= 0.28)
MATCH_RADIUS = 0.5       # an asked object is matched to a seen one at most this far (fraction of
                         # S) from its cell centre: reaches the neighbouring cells, diagonals too
# Area of each shape per squared circumscribed radius R^2.
AREA_PER_R2 = {
    "circle": np.pi,
    "square": 2.0,
    "triangle": 3 * np.sqrt(3) / 4,
    "star": 5 * STAR_INNER_RATIO * np.sin(np.pi / 5),   # 10 triangles (centre, tip, inner vertex)
}
FOLD = {"square": 4, "triangle": 3, "star": 5}           # k of the k-fold symmetric shapes


@dataclass(frozen=True)
class Seen:
    """One object found in an image."""
    shape: str          # best-fitting ideal shape
    colour: str         # nearest palette colour
    size: str           # "small" or "large"
    cell: int           # 0..8 from the centroid
    position: str       # POSITIONS[cell]
    cx: float           # centroid, fraction of the width
    cy: float           # centroid, fraction of the height
    diameter: float     # circumscribed diameter of the fitted shape, fraction of S
    rotation: float     # degrees, as in Obj
    fit: float          # soft IoU of the pixels' coverage with the fitted ideal shape, 0..1
                        # (shape_ok needs fit >= MIN_FIT)
    area: float         # sum of coverage, fraction of the image


@dataclass(frozen=True)
class Analysis:
    background: str                # nearest background colour of the border
    objects: tuple[Seen, ...]


def _check_image(image) -> np.ndarray:
    if hasattr(image, "convert"):                         # a PIL image
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("the checker takes an RGB image as a numpy array (H, W, 3), got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    if image.dtype != np.uint8:
        raise ValueError(f"the checker takes uint8 pixels (0-255), got {image.dtype}; convert with "
                         "(x.clip(0, 1) * 255).round().astype(np.uint8) for images in [0, 1]")
    if min(image.shape[:2]) < 16:
        raise ValueError(f"image {image.shape[:2]} is too small to judge; use at least 16x16")
    return image


def _nearest(colour: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    d = np.linalg.norm(np.array([palette[n] for n in names], np.float32) - colour, axis=1)
    return names[int(np.argmin(d))]


def analyse(image) -> Analysis:
    """What the image shows: its background and the objects in it (sorted by cell)."""
    img = _check_image(image).astype(np.float32)                          # (H, W, 3)
    h, w = img.shape[:2]
    side = float(np.sqrt(h * w))
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])    # (2H + 2W, 3)
    bg = np.median(border, axis=0)                                        # (3,)
    offset = img - bg                                                     # (H, W, 3)
    distance = np.linalg.norm(offset, axis=2)                             # (H, W)
    background = _nearest(bg, BACKGROUNDS)
    threshold = OBJECT_CONTRAST * min(
        np.linalg.norm(np.subtract(c, BACKGROUNDS[background])) for c in PALETTE.values())
    n, labels, stats, _ = cv2.connectedComponentsWithStats(
        (distance > threshold).astype(np.uint8), connectivity=8)
    seen = []
    for label in range(1, n):
        x, y, bw, bh = stats[label, :4]
        # A window around the component with room for its faint edges and a blurred template.
        m = EDGE_REACH + 3
        x0, y0, x1, y1 = max(x - m, 0), max(y - m, 0), min(x + bw + m, w), min(y + bh + m, h)
        own = labels[y0:y1, x0:x1] == label                               # (h', w')
        reach = np.ones((2 * EDGE_REACH + 1,) * 2, np.uint8)
        near = cv2.dilate(own.astype(np.uint8), reach).astype(bool)       # own + faint edges
        near &= (labels[y0:y1, x0:x1] == 0) | own                         # not another object's
        obj = _seen(offset[y0:y1, x0:x1], distance[y0:y1, x0:x1], own, near, bg, x0, y0, w, h, side)
        if obj is not None:
            seen.append(obj)
    return Analysis(background, tuple(sorted(seen, key=lambda o: (o.cell, o.cy, o.cx))))


def _seen(offset, distance, own, near, bg, x0, y0, w, h, side) -> Seen | None:
    """Describe one component; None when it is too small to be an object."""
    d_own = distance[own]
    core = own & (distance >= 0.8 * d_own.max())                          # the most saturated pixels
    colour = bg + np.median(offset[core], axis=0)                         # (3,)
    direction = colour - bg
    alpha = np.clip(offset @ direction / (direction @ direction), 0.0, 1.0) * near  # (h', w')
    area = float(alpha.sum())
    if area < MIN_AREA * w * h:
        return None
    ys, xs = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]]
    cx = float((alpha * (xs + 0.5)).sum() / area)                         # window pixels
    cy = float((alpha * (ys + 0.5)).sum() / area)
    z = (xs + 0.5 - cx) + 1j * (ys + 0.5 - cy)                            # (h', w') complex offsets
    best = None
    for shape in SHAPES:
        radius = float(np.sqrt(area / AREA_PER_R2[shape]))
        rotation = 0.0
        if shape in FOLD:
            rotation = _rotation(shape, complex((alpha * z ** FOLD[shape]).sum()))
        ideal = coverage(shape, cx, cy, radius, rotation, *alpha.shape)   # (h', w')
        for sigma in TEMPLATE_BLURS:
            t = cv2.GaussianBlur(ideal, (0, 0), sigma) if sigma else ideal
            fit = float(np.minimum(alpha, t).sum() / np.maximum(alpha, t).sum())
            if best is None or fit > best[0]:
                best = (fit, shape, radius, rotation)
    fit, shape, radius, rotation = best
    fx, fy = (cx + x0) / w, (cy + y0) / h
    cell = 3 * min(int(fy * 3), 2) + min(int(fx * 3), 2)
    diameter = 2 * radius / side
    return Seen(shape=shape, colour=_nearest(colour, PALETTE),
                size="small" if diameter < SIZE_THRESHOLD else "large",
                cell=cell, position=POSITIONS[cell], cx=fx, cy=fy, diameter=diameter,
                rotation=rotation, fit=fit, area=area / (w * h))


def _rotation(shape: str, moment: complex) -> float:
    """Rotation (degrees) of a k-fold shape from its k-th angular moment sum(alpha z^k).

    The boundary of a k-fold shape reaches furthest at its tips, so the moment's phase is k times
    the angle of a tip; the renderer's first tip at rotation 0 gives the offset."""
    k = FOLD[shape]
    first = shape_vertices(shape, 1.0, 0.0)[0]
    tip = np.angle(moment) / k                                            # radians, mod 2 pi / k
    return float(np.rad2deg(tip - np.arctan2(first[1], first[0])) % (360 / k))


def judge(image, spec: SceneSpec | Scene) -> dict:
    """Judge `image` (uint8 (H, W, 3)) against a scene spec (or a Scene): compare(analyse(image), spec).

    Returns plain values: {"scene_ok", "background": {asked, seen, ok}, "objects": [per asked
    object: {asked, seen, found, colour_ok, shape_ok, size_ok, cell_ok, ok}], "extra_objects":
    [seen objects no asked object matched], "no_extra"}.
    """
    return compare(analyse(image), spec)


def judge_caption(image, text: str) -> dict:
    """judge(image, parse_caption(text)); raises ValueError for text outside the caption grammar."""
    return judge(image, parse_caption(text))


def compare(analysis: Analysis, spec: SceneSpec | Scene) -> dict:
    """Judge what an image shows (`analyse`'s result) against a spec; see `judge`.
    Analysing once and comparing with many specs is cheap."""
    if isinstance(spec, str):
        raise ValueError("a spec is a SceneSpec or a Scene; for caption text use judge_caption "
                         "or parse_caption")
    if isinstance(spec, Scene):
        spec = spec_of(spec)
    seen = analysis.objects
    # Greedy matching, closest pair first: asked cell centre <-> seen centroid.
    pairs = sorted(
        (np.hypot(s.cx - (a.cell % 3 + 0.5) / 3, s.cy - (a.cell // 3 + 0.5) / 3), i, j)
        for i, a in enumerate(spec.objects) for j, s in enumerate(seen))
    match: dict[int, int] = {}
    for dist, i, j in pairs:
        if dist <= MATCH_RADIUS and i not in match and j not in match.values():
            match[i] = j
    objects = []
    for i, a in enumerate(spec.objects):
        s = seen[match[i]] if i in match else None
        verdict = {
            "asked": {**asdict(a), "position": POSITIONS[a.cell]},
            "seen": None if s is None else asdict(s),
            "found": s is not None,
            "colour_ok": s is not None and s.colour == a.colour,
            "shape_ok": s is not None and s.shape == a.shape and s.fit >= MIN_FIT,
            "size_ok": s is not None and s.size == a.size,
            "cell_ok": s is not None and s.cell == a.cell,
        }
        verdict["ok"] = all(verdict[k] for k in ("colour_ok", "shape_ok", "size_ok", "cell_ok"))
        objects.append(verdict)
    extra = [asdict(s) for j, s in enumerate(seen) if j not in match.values()]
    background_ok = analysis.background == spec.background
    return {
        "scene_ok": background_ok and not extra and all(o["ok"] for o in objects),
        "background": {"asked": spec.background, "seen": analysis.background, "ok": background_ok},
        "objects": objects,
        "extra_objects": extra,
        "no_extra": not extra,
    }
