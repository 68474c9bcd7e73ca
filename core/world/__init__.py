"""The shapes world (shared/shapes_world.md): coloured shapes on a plain background, with exact
captions, class labels and layouts, a renderer, and a checker that judges an image against a caption.

    from core.world import ShapesWorld, judge_caption
    s = ShapesWorld(size=64, seed=0)[7]          # {image, caption, class_label, layout, scene}
    judge_caption(s["image"], s["caption"])["scene_ok"]   # True
"""
from .caption import caption, parse_caption
from .checker import Analysis, Seen, analyse, compare, judge, judge_caption
from .dataset import ShapesWorld
from .render import coverage, render, shape_vertices
from .scene import (BACKGROUND_CLASS0, BACKGROUNDS, CELL_CENTRES, MAX_JITTER, PALETTE, POSITIONS, SHAPES, SIZES,
                    STAR_INNER_RATIO, Obj, ObjectSpec, Scene, SceneSpec, background_class, class_label, class_words,
                    layout, random_scene, spec_of)

__all__ = [
    "BACKGROUND_CLASS0", "BACKGROUNDS", "background_class", "CELL_CENTRES", "MAX_JITTER", "PALETTE", "POSITIONS",
    "SHAPES", "SIZES",
    "STAR_INNER_RATIO", "Obj", "ObjectSpec", "Scene", "SceneSpec", "class_label", "class_words",
    "layout", "random_scene", "spec_of", "caption", "parse_caption", "render", "coverage",
    "shape_vertices", "ShapesWorld", "Analysis", "Seen", "analyse", "compare", "judge",
    "judge_caption",
]
