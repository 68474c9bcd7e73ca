"""The shapes world: what a scene is, and how a random one is drawn.

Spec: shared/shapes_world.md. Every value and order below (palettes, words, sizes, cell centres,
jitter) is copied from that page; the renderer (`render.py`), the captions (`caption.py`) and the
checker (`checker.py`) all read them from here, so the world has one definition.

Coordinates are normalised to [0, 1] of the image side S (x to the right, y downwards), so a scene
can be rendered at any S (64 for the default models, 256 for super-resolution pairs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Object colours, in the spec's order (the order defines the class label).  sRGB 0-255.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# Size class -> circumscribed diameter range, as a fraction of S.
SIZES: dict[str, tuple[float, float]] = {"small": (0.18, 0.22), "large": (0.28, 0.32)}
# The 3x3 grid's cell words, row by row from the top; cell index = 3 * row + col.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
CELL_CENTRES: tuple[float, ...] = (1 / 6, 1 / 2, 5 / 6)  # on each axis, fraction of S
MAX_JITTER = 1 / 24                                        # S/24 on each axis, normalised
STAR_INNER_RATIO = 0.45                                    # inner radius / outer radius
ROTATED_SHAPES = ("square", "triangle", "star")            # the circle gets no rotation

# Our own choice, not in the spec (which only says "objects never overlap"): the circumscribed
# circles of two objects stay at least this far apart (1.9 px at S=64), so that anti-aliased edges
# never merge two objects into one blob and a checker can segment them.  Objects also stay inside
# the frame (their circumscribed circle does), so layout boxes lie in [0, 1].
MIN_GAP = 0.03


@dataclass(frozen=True)
class Obj:
    """One object of a rendered scene."""
    shape: str         # one of SHAPES
    colour: str        # a key of PALETTE
    size: str          # "small" or "large"
    cell: int          # 0..8, index into POSITIONS (3 * row + col)
    cx: float          # centre, fraction of S (x to the right)
    cy: float          # centre, fraction of S (y downwards)
    diameter: float    # circumscribed diameter, fraction of S
    rotation: float    # degrees, clockwise on screen; 0 for circles


@dataclass(frozen=True)
class Scene:
    background: str            # a key of BACKGROUNDS
    objects: tuple[Obj, ...]   # in caption order: top-to-bottom, then left-to-right


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object (no geometry)."""
    shape: str
    colour: str
    size: str
    cell: int


@dataclass(frozen=True)
class SceneSpec:
    """What a caption says about a scene: what a checker judges an image against."""
    background: str
    objects: tuple[ObjectSpec, ...]   # in caption order


def spec_of(scene: Scene | SceneSpec) -> SceneSpec:
    """The caption-level description of a scene (drops centres, diameters and rotations)."""
    objects = sorted(scene.objects, key=lambda o: o.cell)
    return SceneSpec(scene.background,
                     tuple(ObjectSpec(o.shape, o.colour, o.size, o.cell) for o in objects))


def class_label(scene: Scene | SceneSpec) -> int | None:
    """shape_index * 6 + colour_index for a single-object scene (24 classes), else None."""
    if len(scene.objects) != 1:
        return None
    o = scene.objects[0]
    return SHAPES.index(o.shape) * len(PALETTE) + list(PALETTE).index(o.colour)


# A layout's background token (layout models trained with data.layout_background): the classes after
# the 24 objects', white, black, gray in BACKGROUNDS' order.
BACKGROUND_CLASS0 = len(SHAPES) * len(PALETTE)


def background_class(background: str) -> int:
    """The layout class of a background word: 24 + its index in BACKGROUNDS."""
    return BACKGROUND_CLASS0 + list(BACKGROUNDS).index(background)


def class_words(label: int) -> tuple[str, str]:
    """The inverse of class_label: 0..23 -> (shape, colour)."""
    if not 0 <= label < len(SHAPES) * len(PALETTE):
        raise ValueError(f"class label must be in 0..{len(SHAPES) * len(PALETTE) - 1}, got {label}")
    return SHAPES[label // len(PALETTE)], list(PALETTE)[label % len(PALETTE)]


def layout(scene: Scene) -> list[tuple[str, str, float, float, float, float]]:
    """(shape, colour, x0, y0, x1, y1) per object: the circumscribed square, normalised to [0, 1]."""
    return [(o.shape, o.colour,
             o.cx - o.diameter / 2, o.cy - o.diameter / 2,
             o.cx + o.diameter / 2, o.cy + o.diameter / 2) for o in scene.objects]


def random_scene(rng: np.random.Generator, n_objects: int | tuple[int, ...] | None = None) -> Scene:
    """Draw a scene: background, 1-3 objects in distinct cells, sizes, jitter and rotations.

    n_objects: None draws 1, 2 or 3 uniformly; an int fixes the count; a tuple draws from it.
    Deterministic for a given generator state.
    """
    counts = (1, 2, 3) if n_objects is None else (
        (n_objects,) if isinstance(n_objects, (int, np.integer)) else tuple(n_objects))
    if not counts or any(not 1 <= int(n) <= 3 for n in counts):
        raise ValueError(f"n_objects must be 1, 2 or 3 (or a tuple of them), got {n_objects!r}")
    n = int(counts[rng.integers(len(counts))])
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))  # caption order
    shapes = [SHAPES[rng.integers(len(SHAPES))] for _ in cells]
    colours = [list(PALETTE)[rng.integers(len(PALETTE))] for _ in cells]
    sizes = [list(SIZES)[rng.integers(len(SIZES))] for _ in cells]
    rotations = [float(rng.uniform(0.0, 360.0)) if s in ROTATED_SHAPES else 0.0 for s in shapes]
    centres, diameters = _place(rng, cells, sizes)
    objects = tuple(Obj(shape, colour, size, cell, float(x), float(y), float(d), rot)
                    for shape, colour, size, cell, (x, y), d, rot
                    in zip(shapes, colours, sizes, cells, centres, diameters, rotations))
    return Scene(background, objects)


def _place(rng: np.random.Generator, cells: list[int], sizes: list[str]):
    """Diameters in their class range and jittered centres, such that no two objects come closer
    than MIN_GAP and every object stays inside the frame. Rejection sampling: three large objects
    in one row do not always fit, so every 16 failed jitters the diameters are drawn again."""
    base = np.array([(CELL_CENTRES[c % 3], CELL_CENTRES[c // 3]) for c in cells])  # (n, 2)
    for attempt in range(10_000):
        if attempt % 16 == 0:
            diameters = np.array([rng.uniform(*SIZES[s]) for s in sizes])           # (n,)
        r = diameters[:, None] / 2                                                   # (n, 1)
        # Uniform jitter of at most S/24, cut where the circumscribed circle would leave the frame.
        lo = np.maximum(-MAX_JITTER, r - base)
        hi = np.minimum(MAX_JITTER, 1 - r - base)
        centres = base + rng.uniform(lo, hi)                                         # (n, 2)
        if _separated(centres, diameters):
            return centres, diameters
    raise RuntimeError("could not place the objects without overlap; this is a bug")


def _separated(centres: np.ndarray, diameters: np.ndarray) -> bool:
    for i in range(len(centres)):
        for j in range(i + 1, len(centres)):
            dist = float(np.hypot(*(centres[i] - centres[j])))
            if dist < (diameters[i] + diameters[j]) / 2 + MIN_GAP:
                return False
    return True
