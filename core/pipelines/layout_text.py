"""Layouts as people write them, for the layout-to-image models (Rombach et al. 2022, Sec. 4.3.1, Fig. 8).

A layout is a list of boxes `(class_id, x0, y0, x1, y1)`, coordinates in [0, 1] of the image's
width and height (x to the right, y downwards); in the shapes world (shared/shapes_world.md) a
box is the object's circumscribed square. People write it as text, one object a line, the label
then the box:

    circle red 0.02 0.02 0.32 0.32
    star blue 0.73 0.4 0.93 0.6

Labels are the model's class names: for a shapes-world layout model the 24 "shape colour" pairs
(class = shape_index * 6 + colour_index, the world's class label; "red circle" is read too); any
other layout model numbers its classes 0..n-1. A class number is accepted for every model. JSON is
accepted as well: a list of [class, x0, y0, x1, y1] (class a number or a label), or the world's
own [shape, colour, x0, y0, x1, y1]. Blank lines and lines starting with # are skipped.

A shapes-world model trained with the background in its layouts (27 classes: the 24 objects, then
"white", "black", "gray") reads the background as a token of its own, the whole image its box, ahead
of the objects; people pick it apart from the boxes (`LayoutVocabulary.background`), and a layout that
leaves it to the model gets one drawn from the seed, as the world draws its scenes'.

A shapes-world layout model learned objects only where that world puts them: at the 3x3 cell centres,
in two sizes. `LayoutVocabulary.off_grid` names the boxes it never saw (with the nearest it knows,
`snap_box`), which sample_layout warns about; the canvas snaps drawn boxes to that grid.

`parse_layout` checks a layout once, for the pipelines, the app, its API and the CLI;
`format_layout` writes the text back (PNG info sends a picture's layout to the Layout tab).
"""
import json
import math
from dataclasses import dataclass

import numpy as np

from core.capabilities import capabilities
from core.world.scene import (BACKGROUND_CLASS0, BACKGROUNDS, CELL_CENTRES, MAX_JITTER, PALETTE, SHAPES, SIZES,
                              class_words)

# The shapes world's classes in label order: "circle red", "circle green", ... "star orange".
SHAPES_WORLD_NAMES = tuple(" ".join(class_words(i)) for i in range(len(SHAPES) * len(PALETTE)))
# Box colours of the classes of a model without names (the canvas and the "Show boxes" picture).
CLASS_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                 (70, 240, 240), (240, 50, 230), (128, 128, 0))
EXAMPLE = "circle red 0.02 0.02 0.32 0.32"
# The box sides a shapes-world model learned, one per size class (0.2 small, 0.3 large): what boxes snap to.
GRID_SIDES = tuple(round(sum(r) / 2, 6) for r in SIZES.values())
ANY_BACKGROUND = "any"                          # the background left to the model: drawn from the seed


@dataclass(frozen=True)
class LayoutVocabulary:
    """What a layout model reads: how many classes, their names, and how many objects at most."""
    n_classes: int                              # object classes 0..n_classes-1
    max_objects: int                            # objects a layout may hold (the token budget, less the background's)
    names: tuple[str, ...] | None = None        # class id -> "shape colour"; None: class numbers only
    backgrounds: tuple[str, ...] = ()           # background words; background i is class n_classes + i

    def label(self, class_id: int) -> str:
        return self.names[class_id] if self.names else str(class_id)

    def colour(self, class_id: int) -> tuple[int, int, int]:
        """The colour a box of this class is drawn in: the shape's own colour in the shapes world."""
        if self.names:
            return PALETTE[self.names[class_id].split()[1]]
        return CLASS_COLOURS[class_id % len(CLASS_COLOURS)]

    def valid_labels(self) -> str:
        """The labels this model takes, in words (for error messages)."""
        numbers = f"class numbers 0-{self.n_classes - 1}"
        if not self.names:
            return f"this model's labels are {numbers}"
        return (f"this model's labels are a shape ({', '.join(SHAPES)}) and a colour ({', '.join(PALETTE)}), "
                f"e.g. 'circle red', or {numbers}")

    def class_id(self, label, where: str) -> int:
        """The class of a label ("circle red", "red circle", "7" or 7); ValueError naming `where`."""
        if isinstance(label, bool):
            label = str(label)
        if isinstance(label, int) or (isinstance(label, float) and label.is_integer()):
            number = int(label)
        else:
            words = str(label).lower().split()
            if self.names and len(words) == 2:
                for name in (" ".join(words), " ".join(reversed(words))):
                    if name in self.names:
                        return self.names.index(name)
            number = int(words[0]) if len(words) == 1 and words[0].isdigit() else None
        if number is None or not 0 <= number < self.n_classes:
            raise ValueError(f"{where}: unknown label {str(label)!r}; {self.valid_labels()}.")
        return number

    def background(self, name, seed: int) -> tuple[int, str] | None:
        """(class id, word) of the background a layout is drawn on: `name` ("white", ...), or for None,
        "" and "any" one drawn from `seed` (uniformly, as the world draws its scenes'). None for a model
        without backgrounds, which takes only "any"."""
        word = str(name or ANY_BACKGROUND).strip().lower()
        if not self.backgrounds:
            if word != ANY_BACKGROUND:
                raise ValueError(f"this layout model was not trained with a background in its layouts; "
                                 f"leave the background on {ANY_BACKGROUND!r} (got {name!r}).")
            return None
        if word == ANY_BACKGROUND:
            index = int(np.random.default_rng([int(seed), 0x6267]).integers(len(self.backgrounds)))
        elif word in self.backgrounds:
            index = self.backgrounds.index(word)
        else:
            raise ValueError(f"unknown background {name!r}; this model's backgrounds are "
                             f"{', '.join(self.backgrounds)} (or {ANY_BACKGROUND!r}: drawn from the seed).")
        return self.n_classes + index, self.backgrounds[index]

    def as_dict(self) -> dict:
        """For the browser's canvas: names (or None), the shapes and colours, each class's box colour,
        and for a shapes-world model the grid its boxes snap to (cell centres, the two sizes)."""
        grid = ({"centres": list(CELL_CENTRES), "sizes": list(GRID_SIDES)}
                if self.names else None)
        return {"names": list(self.names) if self.names else None, "n_classes": self.n_classes,
                "backgrounds": list(self.backgrounds),
                "max_objects": self.max_objects, "shapes": list(SHAPES) if self.names else [],
                "colours": list(PALETTE) if self.names else [],
                "box_colours": ["#%02x%02x%02x" % self.colour(i) for i in range(self.n_classes)], "grid": grid}

    def off_grid(self, boxes: list) -> list[str]:
        """For a shapes-world model, the boxes it never saw in training, each with the nearest one it
        knows: objects sit at the 3x3 cell centres (1/6, 1/2, 5/6 of each side, within 1/24) and
        their box is a square of side 0.18-0.22 (small) or 0.28-0.32 (large). Empty otherwise."""
        if not self.names:
            return []
        slack = 0.01                                                        # rounding of typed boxes
        out = []
        for i, (c, x0, y0, x1, y1) in enumerate(boxes):
            sides_ok = all(any(lo - slack <= side <= hi + slack for lo, hi in SIZES.values())
                           for side in (x1 - x0, y1 - y0))
            centred = all(min(abs((a + b) / 2 - cc) for cc in CELL_CENTRES) <= MAX_JITTER + slack
                          for a, b in ((x0, x1), (y0, y1)))
            if not (sides_ok and centred):
                out.append(f"box {i + 1} ({format_layout([(c, x0, y0, x1, y1)], self)}; nearest known: "
                           f"{format_layout([(c, *snap_box((x0, y0, x1, y1)))], self)})")
        return out


def snap_box(box) -> tuple[float, float, float, float]:
    """The shapes-world box nearest `box`: centred on the nearest cell centre of each axis, a square of
    the nearer size class (0.2 or 0.3; the canvas snaps the same way)."""
    x0, y0, x1, y1 = box
    side = min(GRID_SIDES, key=lambda s: abs(s - ((x1 - x0) + (y1 - y0)) / 2))
    cx, cy = (min(CELL_CENTRES, key=lambda c: abs(c - (a + b) / 2)) for a, b in ((x0, x1), (y0, y1)))
    return tuple(round(v, 3) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))


def layout_vocabulary(model_or_config) -> LayoutVocabulary:
    """The vocabulary of a layout model (a LatentDiffusion or its config); ValueError for another model.

    A layout embedder of 24 classes is a shapes-world model: this project trains layout models only
    on the shapes world (core/train/config.py refuses other data), whose 24 classes they read; one of
    27 classes was trained with the background as a token (data.layout_background) after them."""
    cfg = getattr(model_or_config, "config", model_or_config)
    capabilities(cfg).require("layout")
    cond = cfg.cond_stage                                           # a LayoutEmbedderConfig
    if cond.n_classes == BACKGROUND_CLASS0 + len(BACKGROUNDS) and cond.max_objects > 1:
        return LayoutVocabulary(BACKGROUND_CLASS0, cond.max_objects - 1, SHAPES_WORLD_NAMES, tuple(BACKGROUNDS))
    names = SHAPES_WORLD_NAMES if cond.n_classes == len(SHAPES_WORLD_NAMES) else None
    return LayoutVocabulary(cond.n_classes, cond.max_objects, names)


def _box(values, where: str) -> tuple[float, float, float, float]:
    """Four coordinates in [0, 1] with x0 < x1 and y0 < y1, or a ValueError naming `where`."""
    try:
        x0, y0, x1, y1 = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the box must be four numbers x0 y0 x1 y1; got {' '.join(map(str, values))}.") \
            from None
    box = (x0, y0, x1, y1)
    shown = " ".join(f"{v:g}" for v in box)
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in box):
        raise ValueError(f"{where}: the box {shown} reaches outside the image; coordinates are fractions of "
                         "the image's width and height, from 0 to 1.")
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"{where}: the box {shown} has no area; x0 must be less than x1 and y0 less than y1 "
                         "(left, top, right, bottom).")
    return box


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def _text_objects(text: str) -> list[tuple[str, object, list]]:
    """(where, label, four values) per line of the text format."""
    objects = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.replace(",", " ").split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) < 5 or not all(_is_number(w) for w in words[-4:]):
            raise ValueError(f"line {number}: {line.strip()!r} needs a label and four numbers x0 y0 x1 y1, "
                             f"e.g. '{EXAMPLE}'.")
        objects.append((f"line {number}", " ".join(words[:-4]), words[-4:]))
    return objects


def _json_objects(text: str) -> list[tuple[str, object, list]]:
    """(where, label, four values) per object of a JSON list."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"the layout is not valid JSON ({err}); give a list of [class, x0, y0, x1, y1], "
                         f"or one object a line as text: '{EXAMPLE}'.") from None
    return _list_objects(items)


def _list_objects(items) -> list[tuple[str, object, list]]:
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"a layout is a list of [class, x0, y0, x1, y1] boxes; got {type(items).__name__}.")
    objects = []
    for i, item in enumerate(items, start=1):
        where = f"object {i}"
        if isinstance(item, (list, tuple)) and len(item) == 6 and all(isinstance(v, str) for v in item[:2]):
            item = [f"{item[0]} {item[1]}", *item[2:]]              # the world's (shape, colour, x0, y0, x1, y1)
        if not isinstance(item, (list, tuple)) or len(item) != 5:
            raise ValueError(f"{where}: give [class, x0, y0, x1, y1]; got {item!r}.")
        objects.append((where, item[0], list(item[1:])))
    return objects


def parse_layout(layout, vocabulary: LayoutVocabulary) -> list[tuple[int, float, float, float, float]]:
    """A layout as text (one object a line), a JSON string or a list -> checked boxes
    [(class_id, x0, y0, x1, y1), ...]. ValueError saying which line or object is wrong and why: a
    malformed line, an unknown label (listing the valid ones), a box outside [0, 1] or without
    area, more objects than the model takes. The empty layout [] is the model's unconditional."""
    if isinstance(layout, str):
        objects = _json_objects(layout) if layout.lstrip().startswith("[") else _text_objects(layout)
    else:
        objects = _list_objects(layout)
    if len(objects) > vocabulary.max_objects:
        raise ValueError(f"the layout has {len(objects)} objects; this model takes at most {vocabulary.max_objects} "
                         "(its layout token budget).")
    return [(vocabulary.class_id(label, where), *_box(values, where)) for where, label, values in objects]


def _number(v: float) -> str:
    return f"{round(float(v), 4):g}"


def format_layout(layout, vocabulary: LayoutVocabulary) -> str:
    """Boxes (any form parse_layout reads) -> the text format, one object a line."""
    return "\n".join(f"{vocabulary.label(c)} {' '.join(_number(v) for v in box)}"
                     for c, *box in parse_layout(layout, vocabulary))
