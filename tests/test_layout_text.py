"""Layouts as text (core/pipelines/layout_text.py): the shapes world's labels, parse <-> format, JSON
forms, every bad input with a message naming the line and the fix; sample_layout, the CLI and
"Send to layout" reading the same text; the "Show boxes" picture."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from core import save_model
from core.generate import main
from core.models.conditioners import LayoutEmbedderConfig
from core.pipelines import format_layout, layout_vocabulary, parse_layout, read_infotext, sample_layout
from core.pipelines.conditioning import layout_conditioning, layout_encoder
from core.pipelines.layout_text import SHAPES_WORLD_NAMES, LayoutVocabulary
from core.pipelines.tiles import Tile
from core.world import PALETTE, SHAPES, class_label
from core.world.scene import Obj, Scene
from tests.tiny_models import tiny_model

SHAPES_VOCAB = LayoutVocabulary(24, 3, SHAPES_WORLD_NAMES)
NUMBERS_VOCAB = LayoutVocabulary(5, 2)


@pytest.fixture(scope="module")
def layout_model():
    return tiny_model("layout")


def test_shapes_world_names_follow_the_class_label():
    assert len(SHAPES_WORLD_NAMES) == 24 and SHAPES_WORLD_NAMES[:2] == ("circle red", "circle green")
    for shape in SHAPES:
        for colour in PALETTE:
            scene = Scene("white", (Obj(shape, colour, "small", 4, 0.5, 0.5, 0.2, 0.0),))
            assert SHAPES_WORLD_NAMES[class_label(scene)] == f"{shape} {colour}"


def test_vocabulary_of_a_model(layout_model):
    assert layout_vocabulary(layout_model) == SHAPES_VOCAB              # 24 classes: the shapes world
    other = dataclasses.replace(layout_model.config, cond_stage=LayoutEmbedderConfig(32, n_classes=5, max_objects=2))
    assert layout_vocabulary(other) == NUMBERS_VOCAB                     # from the config alone, numbers only
    with pytest.raises(ValueError, match=r"sample_layout \(layout to image\) cannot run this model"):
        layout_vocabulary(tiny_model("sd2"))


def test_parse_and_format_round_trip():
    text = "circle red 0.1 0.1 0.4 0.4\n\n# a comment\nred star, 0.55, 0.5, 0.9, 0.85\n7 0 0 1 1"
    boxes = parse_layout(text, SHAPES_VOCAB)
    assert boxes == [(0, 0.1, 0.1, 0.4, 0.4), (18, 0.55, 0.5, 0.9, 0.85), (7, 0.0, 0.0, 1.0, 1.0)]
    formatted = format_layout(boxes, SHAPES_VOCAB)
    assert formatted == "circle red 0.1 0.1 0.4 0.4\nstar red 0.55 0.5 0.9 0.85\nsquare green 0 0 1 1"
    assert parse_layout(formatted, SHAPES_VOCAB) == boxes
    assert format_layout([(3, 1 / 3, 0.25, 2 / 3, 0.75)], SHAPES_VOCAB) == "circle yellow 0.3333 0.25 0.6667 0.75"
    assert format_layout("4 0.1 0.2 0.3 0.4", NUMBERS_VOCAB) == "4 0.1 0.2 0.3 0.4"
    assert parse_layout("", SHAPES_VOCAB) == [] and parse_layout("[]", SHAPES_VOCAB) == []


def test_json_forms():
    ids = json.dumps([[3, 0.1, 0.1, 0.4, 0.4], ["blue square", 0.5, 0.5, 0.9, 0.9]])
    assert parse_layout(ids, SHAPES_VOCAB) == [(3, 0.1, 0.1, 0.4, 0.4), (8, 0.5, 0.5, 0.9, 0.9)]
    world = [("star", "orange", 0.0, 0.0, 0.2, 0.2)]                   # core.world.layout(scene)
    assert parse_layout(world, SHAPES_VOCAB) == [(23, 0.0, 0.0, 0.2, 0.2)]
    assert parse_layout([[4.0, 0, 0, 1, 1]], NUMBERS_VOCAB) == [(4, 0.0, 0.0, 1.0, 1.0)]


@pytest.mark.parametrize("layout, message", [
    ("circle red 0.1 0.1 1.2 0.4", "line 1: the box 0.1 0.1 1.2 0.4 reaches outside the image"),
    ("circle red -0.1 0.1 0.2 0.4", "reaches outside the image; coordinates are fractions"),
    ("\ncircle red 0.5 0.1 0.5 0.4", "line 2: the box 0.5 0.1 0.5 0.4 has no area; x0 must be less than x1"),
    ("circle red 0.1 0.6 0.5 0.4", "has no area"),
    ("circle red 0 0 0.1 0.1\n" * 4, "the layout has 4 objects; this model takes at most 3"),
    ("circle pink 0 0 0.1 0.1", r"line 1: unknown label 'circle pink'; this model's labels are a shape "
                                r"\(circle, square, triangle, star\) and a colour \(red, green, blue"),
    ("24 0 0 0.1 0.1", "unknown label '24'.*class numbers 0-23"),
    ("circle red 0 0 0.1", "line 1: 'circle red 0 0 0.1' needs a label and four numbers x0 y0 x1 y1"),
    ("circle red 0 0 x 0.1", "needs a label and four numbers"),
    ("circle red 0 0 nan 0.1", "reaches outside the image"),
    ("[[1, 0.1", "the layout is not valid JSON"),
    ("[[1, 0.1, 0.2]]", r"object 1: give \[class, x0, y0, x1, y1\]"),
    ('{"a": 1}', "needs a label and four numbers"),
])
def test_bad_layouts_say_what_is_wrong(layout, message):
    with pytest.raises(ValueError, match=message):
        parse_layout(layout, SHAPES_VOCAB)


def test_a_model_without_names_takes_numbers():
    with pytest.raises(ValueError, match="unknown label 'circle red'; this model's labels are class numbers 0-4"):
        parse_layout("circle red 0 0 0.1 0.1", NUMBERS_VOCAB)
    with pytest.raises(ValueError, match="3 objects; this model takes at most 2"):
        parse_layout([[0, 0, 0, 0.1, 0.1]] * 3, NUMBERS_VOCAB)


def test_sample_layout_reads_text_and_records_ids(layout_model):
    text = "circle red 0.1 0.1 0.4 0.4\nstar blue 0.55 0.5 0.9 0.85"
    image = sample_layout(layout_model, text, steps=2, seed=5)[0]
    assert read_infotext(image)["layout"] == [[0, 0.1, 0.1, 0.4, 0.4], [20, 0.55, 0.5, 0.9, 0.85]]
    same = sample_layout(layout_model, [(0, 0.1, 0.1, 0.4, 0.4), (20, 0.55, 0.5, 0.9, 0.85)], steps=2, seed=5)[0]
    assert np.array_equal(np.asarray(image), np.asarray(same))
    with pytest.raises(ValueError, match="line 1: the box"):
        sample_layout(layout_model, "circle red 0.1 0.1 0.4 1.5", steps=2)


def test_a_model_trained_with_backgrounds():
    m = tiny_model("layout_background")                                 # 27 classes, 4 tokens
    vocabulary = layout_vocabulary(m)
    assert vocabulary == LayoutVocabulary(24, 3, SHAPES_WORLD_NAMES, ("white", "black", "gray"))
    assert vocabulary.as_dict()["backgrounds"] == ["white", "black", "gray"]
    assert vocabulary.background("gray", 0) == (26, "gray")
    drawn = [vocabulary.background(None, seed) for seed in range(30)]
    assert drawn == [vocabulary.background("any", seed) for seed in range(30)]      # the seed decides
    assert {name for _, name in drawn} == {"white", "black", "gray"}
    with pytest.raises(ValueError, match="unknown background 'pink'; this model's backgrounds are white, black, gray"):
        vocabulary.background("pink", 0)
    with pytest.raises(ValueError, match="was not trained with a background"):
        SHAPES_VOCAB.background("gray", 0)
    assert SHAPES_VOCAB.background("any", 0) is None
    with pytest.raises(ValueError, match="at most 3"):                  # the background's token is not the user's
        parse_layout("circle red 0 0 0.1 0.1\n" * 4, vocabulary)

    # The PNG says which background; asking for it again gives the same picture, another one another.
    layout = "circle red 0.017 0.017 0.317 0.317"
    image = sample_layout(m, layout, steps=2, seed=4)[0]
    picked = read_infotext(image)["background"]
    assert picked == vocabulary.background(None, 4)[1]
    assert np.array_equal(np.asarray(image), np.asarray(sample_layout(m, layout, steps=2, seed=4, background=picked)[0]))
    other = next(b for b in vocabulary.backgrounds if b != picked)
    assert not np.array_equal(np.asarray(image), np.asarray(sample_layout(m, layout, steps=2, seed=4, background=other)[0]))
    # Larger than trained, every tile keeps the background token (objects only where their box is).
    cond, _ = layout_conditioning(m, [(26, 0, 0, 1, 1), (0, 0.017, 0.017, 0.317, 0.317)])
    classes = cond[..., 0].long()
    encode, far = layout_encoder(m), Tile(8, 8, 16, 16, 8, 8, 16, 16)  # the corner away from the circle
    assert torch.equal(encode(cond, far, 16, 16), m.cond_stage_model.encode_tensors(
        torch.tensor([[26, -1, -1, -1]]), torch.tensor([[[0.0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])))
    assert classes.tolist() == [[26, 0, -1, -1]]


def test_cli_reads_the_text_format(tmp_path, capsys, layout_model):
    path = save_model(layout_model, tmp_path / "layout.safetensors", metadata={"ldm_studio_defaults": '{"steps": 2}'})
    boxes = tmp_path / "boxes.txt"
    boxes.write_text("triangle green 0.2 0.2 0.6 0.6\n")
    args = ["layout", "--model", str(path), "--seed", "3", "--outdir", str(tmp_path / "out"), "--quiet",
            "--device", "cpu", "--layout"]
    assert main([*args, str(boxes)]) == 0
    written = capsys.readouterr().out.split()
    assert read_infotext(written[0])["layout"] == [[13, 0.2, 0.2, 0.6, 0.6]]         # triangle = 2, green = 1
    boxes.write_text("triangle green 0.2 0.2 0.6 0.6\nhexagon red 0 0 0.1 0.1\n")
    assert main([*args, str(boxes)]) == 2
    assert "error: line 2: unknown label 'hexagon red'" in capsys.readouterr().err
    boxes.write_text("triangle green 0.2 0.2 0.6 0.6\n")
    assert main([*args, str(boxes), "--background", "gray"]) == 2                    # a model without backgrounds
    assert "was not trained with a background" in capsys.readouterr().err
    with_background = save_model(tiny_model("layout_background"), tmp_path / "bg.safetensors",
                                 metadata={"ldm_studio_defaults": '{"steps": 2}'})
    args[args.index(str(path))] = str(with_background)
    assert main([*args, str(boxes), "--background", "black"]) == 0
    assert read_infotext(capsys.readouterr().out.split()[0])["background"] == "black"


def test_send_to_layout_and_the_boxes_picture(tmp_path, layout_model):
    from ui.layout_canvas import boxes_picture
    from ui.send import received
    from ui.settings import AppSettings
    from ui.studio import Studio
    weights = tmp_path / "weights"
    save_model(layout_model, weights / "tiny-layout.safetensors", metadata={"ldm_studio_name": "tiny-layout"})
    studio = Studio.create(AppSettings(weights_dir=weights, outputs_dir=tmp_path / "out", runs_dir=tmp_path / "runs"))
    params = {"prompt": "", "layout": [[0, 0.1, 0.1, 0.4, 0.4], [20, 0.5, 0.5, 0.9, 0.9]], "model": "tiny-layout",
              "steps": 3, "seed": 9}
    values, notes = received(studio, "layout", params, ("layout", "model", "steps", "seed"))
    assert values == ["circle red 0.1 0.1 0.4 0.4\nstar blue 0.5 0.5 0.9 0.9", "tiny-layout.safetensors", 3, 9]
    assert not notes
    values, notes = received(studio, "layout", {**params, "background": "gray"}, ("layout", "background"))
    assert values[1] == "any" and "background 'gray' (this model does not take it; 'any' is set)" in notes
    _, notes = received(studio, "txt2img", params, ("prompt", "steps"))
    assert any("Layout" in n for n in notes)                            # not taken by Text to image

    picture = boxes_picture(Image.new("RGB", (64, 64), "black"), [(0, 0.25, 0.25, 0.75, 0.75)], SHAPES_VOCAB)
    a = np.asarray(picture)
    assert picture.size == (384, 384)                                   # enlarged 6x, nearest neighbour
    assert tuple(a[200, 96]) == PALETTE["red"] and tuple(a[96, 200]) == PALETTE["red"]   # the box's edges
    assert 140 < a[300, 300].mean() < 170                               # the faint copy: black -> light grey


def test_boxes_off_the_shapes_world_grid_are_named_with_the_nearest_known(layout_model):
    """A shapes-world layout model learned objects only at the 3x3 cell centres (within 1/24) in two
    sizes; a box elsewhere is named, with the nearest box it knows, and sampling warns about it."""
    on_grid = parse_layout("circle red 0.02 0.02 0.32 0.32\nstar blue 0.73 0.4 0.93 0.6", SHAPES_VOCAB)
    assert SHAPES_VOCAB.off_grid(on_grid) == []
    jittered = parse_layout("circle red 0.05 0.05 0.35 0.35", SHAPES_VOCAB)      # centre 0.2: within 1/24
    assert SHAPES_VOCAB.off_grid(jittered) == []
    off = parse_layout("square green 0.15 0.2 0.45 0.5\ntriangle purple 0.4 0.4 0.6 0.6", SHAPES_VOCAB)
    assert SHAPES_VOCAB.off_grid(off) == ["box 1 (square green 0.15 0.2 0.45 0.5; nearest known: "
                                          "square green 0.017 0.35 0.317 0.65)"]
    oversized = parse_layout("star red 0.3 0.3 0.7 0.7", SHAPES_VOCAB)              # centred, side 0.4
    assert "nearest known: star red 0.35 0.35 0.65 0.65" in SHAPES_VOCAB.off_grid(oversized)[0]
    assert NUMBERS_VOCAB.off_grid(parse_layout("1 0.3 0.3 0.7 0.7", NUMBERS_VOCAB)) == []   # no grid known
    with pytest.warns(UserWarning, match="learned objects only at the 9 cell centres.*box 1 \\(square green"):
        sample_layout(layout_model, "square green 0.15 0.2 0.45 0.5", steps=1, seed=0)
    assert SHAPES_VOCAB.as_dict()["grid"] == {"centres": [1 / 6, 1 / 2, 5 / 6], "sizes": [0.2, 0.3]}
