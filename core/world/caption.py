"""Captions of the shapes world, and their inverse.

Grammar (shared/shapes_world.md):
    caption := phrase (" and " phrase)* " on a " background " background"
    phrase  := "a " size " " colour " " shape " " place
    place   := "in the center" | "at the " position          (position != center)
Objects are listed top-to-bottom, then left-to-right (by cell index); a caption is lower case.

`parse_caption` turns a caption back into a SceneSpec, so a checker can judge an image against a
caption alone.
"""
from __future__ import annotations

import re

from .scene import BACKGROUNDS, PALETTE, POSITIONS, SHAPES, SIZES, ObjectSpec, Scene, SceneSpec

CENTER = POSITIONS.index("center")


def _place(cell: int) -> str:
    return "in the center" if cell == CENTER else f"at the {POSITIONS[cell]}"


def caption(scene: Scene | SceneSpec) -> str:
    """The scene's caption, e.g.
    'a large red circle at the top left and a small blue star in the center on a gray background'."""
    objects = sorted(scene.objects, key=lambda o: o.cell)
    phrases = [f"a {o.size} {o.colour} {o.shape} {_place(o.cell)}" for o in objects]
    return " and ".join(phrases) + f" on a {scene.background} background"


def _alternation(words) -> str:
    # Longest first, so "top left" is tried before "top".
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_PHRASE = re.compile(
    rf"a ({_alternation(SIZES)}) ({_alternation(PALETTE)}) ({_alternation(SHAPES)}) "
    rf"(in the center|at the ({_alternation(p for p in POSITIONS if p != 'center')}))")
_TAIL = re.compile(rf"(?:(.*) )?on a ({_alternation(BACKGROUNDS)}) background")

_FORM = ("a {small|large} {" + "|".join(PALETTE) + "} {" + "|".join(SHAPES) + "} "
         "{in the center|at the <position>} [and ...] on a {" + "|".join(BACKGROUNDS) + "} background")


def parse_caption(text: str) -> SceneSpec:
    """Inverse of `caption`: text -> SceneSpec (objects sorted by cell).

    Case and runs of whitespace are normalised; objects may come in any order but must sit in
    distinct cells, 1 to 3 of them. Anything else raises ValueError saying what was expected.
    """
    if not isinstance(text, str):
        raise ValueError(f"a caption must be a string, got {type(text).__name__}")
    norm = " ".join(text.lower().split())
    tail = _TAIL.fullmatch(norm)
    if tail is None:
        raise ValueError(f"caption {text!r} must end with 'on a <background> background' where "
                         f"<background> is one of {list(BACKGROUNDS)}; expected the form: {_FORM}")
    if not tail.group(1):
        raise ValueError(f"caption {text!r} names no object; a caption names 1 to 3 objects, "
                         f"the form: {_FORM}")
    objects = []
    for phrase in tail.group(1).split(" and "):
        m = _PHRASE.fullmatch(phrase)
        if m is None:
            raise ValueError(f"object phrase {phrase!r} in caption {text!r} is outside the grammar; "
                             f"expected 'a <size> <colour> <shape> <place>', the form: {_FORM}; "
                             f"positions: 'in the center' or 'at the' one of "
                             f"{[p for p in POSITIONS if p != 'center']}")
        size, colour, shape, place, position = m.groups()
        cell = CENTER if place == "in the center" else POSITIONS.index(position)
        objects.append(ObjectSpec(shape, colour, size, cell))
    if len(objects) > 3:
        raise ValueError(f"a caption names 1 to 3 objects, {text!r} names {len(objects)}")
    cells = [o.cell for o in objects]
    if len(set(cells)) != len(cells):
        raise ValueError(f"caption {text!r} puts two objects in one cell; each object needs its own")
    return SceneSpec(tail.group(2), tuple(sorted(objects, key=lambda o: o.cell)))
