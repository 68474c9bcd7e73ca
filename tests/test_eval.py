"""core.eval: PSNR and SSIM against independent formulas, the shapes judging path with a perfect and
a colour-blind fake "model", and the model plumbing (determinism, JSON, CLI) on tiny random models
(which score about zero, so only the plumbing is checked there)."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from core import pipelines, save_model
from core.eval import (EVAL_PHOTOS, SCENE_STREAM, area_downsample, bicubic_upscale, center_crop, eval_autoencoder,
                       eval_inpaint, eval_scenes, eval_shapes, eval_sr, evaluate_shapes, evaluate_sr, gaussian_window,
                       inpaint_cases, psnr, reconstruct_uint8, sr_upscaler, ssim, text_generator, write_json)
from core.eval.__main__ import main
from core.samplers import SamplingSettings
from core.world import CELL_CENTRES, PALETTE, SIZES, Obj, Scene, caption, parse_caption, render
from tests.tiny_models import tiny_model

# ---------------------------------------------------------------- metrics


def test_psnr_known_values():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 10, np.uint8)                     # MSE 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    c = a.copy()
    c[0, 0, 0] = 255                                         # MSE 255^2 / 192
    assert psnr(a, c) == pytest.approx(10 * math.log10(192))
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[:4])


def test_psnr_per_image_of_a_batch_of_tensors():
    """What training logs: one PSNR per image of [-1, 1] tensors (peak-to-peak 2)."""
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[0] += 0.2                                                 # [0, 1] error 0.1 -> mse 0.01 -> 20 dB
    y[1, 0, 0, 0] = 1.0                                         # one value off by 0.5 in [0, 1]
    per_image = psnr(x, y, data_range=2.0, dim=(1, 2, 3))
    assert per_image.shape == (2,)
    assert torch.allclose(per_image, torch.tensor([20.0, 10 * math.log10(48 / 0.25)], dtype=torch.float64))
    assert psnr(x, y, data_range=2.0) == pytest.approx(10 * math.log10(4 / ((0.04 * 48 + 1) / 96)))
    assert psnr(x, x, data_range=2.0, dim=(1, 2, 3)).isinf().all()


def _ssim_reference(a, b, L=255.0):
    """Wang et al. 2004 written out window by window in float64 (no convolution)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    values = []
    for ch in range(a.shape[2]):
        for i in range(a.shape[0] - 10):
            for j in range(a.shape[1] - 10):
                x, y = a[i:i + 11, j:j + 11, ch], b[i:i + 11, j:j + 11, ch]
                mx, my = (w * x).sum(), (w * y).sum()
                vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
                cxy = (w * (x - mx) * (y - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_against_the_windowed_formula_and_known_cases():
    rng = np.random.default_rng(0)
    clean = np.zeros((20, 24, 3))
    clean[:, 12:] = 200                                       # an edge
    clean += np.linspace(0, 40, 24)[None, :, None]
    noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).round().astype(np.uint8)
    clean = clean.round().astype(np.uint8)
    value = ssim(clean, noisy)
    assert value == pytest.approx(_ssim_reference(clean, noisy), abs=1e-12)
    assert 0.2 < value < 0.9
    assert ssim(clean, clean) == pytest.approx(1.0, abs=1e-12)
    assert ssim(clean[..., 0], noisy[..., 0]) == pytest.approx(_ssim_reference(clean[..., :1], noisy[..., :1]),
                                                                abs=1e-12)
    # Constant images: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1), no structure term.
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 120.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1), abs=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[:10], b[:10])


def test_ssim_matches_scikit_image_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (32, 40, 3)).astype(np.uint8)
    b = np.clip(a + rng.normal(0, 15, a.shape), 0, 255).astype(np.uint8)
    ref = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=255, channel_axis=2)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-9)


def test_gaussian_window_and_resampling_helpers():
    w = gaussian_window()
    assert w.shape == (11,) and w.sum() == pytest.approx(1.0)
    assert w[5] / w[4] == pytest.approx(math.exp(1 / (2 * 1.5 ** 2)))
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    small = area_downsample(img, 2)
    assert small.shape == (2, 3, 3)
    assert small[1, 2, 1] == np.floor(img[2:4, 4:6, 1].astype(float).mean() + 0.5)
    assert bicubic_upscale(small, 2).shape == img.shape
    assert center_crop(np.zeros((300, 451, 3)), 16).shape == (288, 448, 3)
    assert center_crop(np.zeros((300, 451, 3)), 16, max_side=100).shape == (96, 96, 3)


# ---------------------------------------------------------------- shapes: the judging path


def _ideal_scene(text: str, recolour: bool = False) -> Scene:
    """What a perfect model draws for a caption (each object at its cell centre, mid-size)."""
    spec = parse_caption(text)
    colours = list(PALETTE)
    objects = tuple(
        Obj(o.shape, colours[(colours.index(o.colour) + 1) % len(colours)] if recolour else o.colour,
            o.size, o.cell, CELL_CENTRES[o.cell % 3], CELL_CENTRES[o.cell // 3], sum(SIZES[o.size]) / 2,
            0.0) for o in spec.objects)
    return Scene(spec.background, objects)


def test_eval_scenes_are_seeded_and_follow_the_object_count():
    a, b = eval_scenes(5, "mixed", seed=3), eval_scenes(5, "mixed", seed=3)
    assert a == b and a != eval_scenes(5, "mixed", seed=4)
    assert {len(s.objects) for s in eval_scenes(6, "2")} == {2}
    with pytest.raises(ValueError, match="objects"):
        eval_scenes(2, "4")


def test_a_perfect_model_scores_one_and_a_colour_blind_one_fails_only_colour():
    scenes = eval_scenes(4, "mixed", seed=0)
    seeds = [10, 11, 12, 13]
    calls = []

    def perfect(captions, seeds_):
        calls.append((list(captions), list(seeds_)))
        return [render(_ideal_scene(c), 64) for c in captions]

    out = evaluate_shapes(perfect, scenes, seeds, batch_size=3, log=None)
    assert calls == [([caption(s) for s in scenes[:3]], seeds[:3]), ([caption(scenes[3])], seeds[3:])]
    s = out["summary"]
    n_objects = sum(len(sc.objects) for sc in scenes)
    assert (s["scenes"], s["objects"]) == (4, n_objects)
    for key in ("scene_accuracy", "object_accuracy", "found", "colour", "shape", "size", "cell", "count",
                "background"):
        assert s[key] == 1.0, key
    assert sum(v["scenes"] for v in out["by_objects"].values()) == 4
    assert [r["seed"] for r in out["scenes"]] == seeds and all(r["scene_ok"] for r in out["scenes"])

    blind = evaluate_shapes(lambda cs, _: [render(_ideal_scene(c, recolour=True), 64) for c in cs],
                            scenes, seeds, log=None)["summary"]
    assert (blind["colour"], blind["scene_accuracy"], blind["object_accuracy"]) == (0.0, 0.0, 0.0)
    assert (blind["shape"], blind["size"], blind["cell"], blind["count"], blind["background"]) == (1, 1, 1, 1, 1)


def test_judging_counts_a_missing_object():
    scenes = [s for s in eval_scenes(10, "2", seed=1)][:2]

    def drops_one(captions, _):
        out = []
        for c in captions:
            scene = _ideal_scene(c)
            out.append(render(Scene(scene.background, scene.objects[:1]), 64))
        return out

    out = evaluate_shapes(drops_one, scenes, [0, 1], log=None)
    s = out["summary"]
    assert (s["found"], s["count"], s["scene_accuracy"], s["object_accuracy"]) == (0.5, 0.0, 0.0, 0.5)
    assert out["by_objects"]["2"]["scenes"] == 2 and list(out["by_objects"]) == ["2"]


# ---------------------------------------------------------------- shapes: a tiny text model


@pytest.fixture(scope="module")
def text_model():
    return tiny_model("sd2")


DDIM_1 = SamplingSettings("ddim", False, 1, 3.0, 0.0)


def test_text_generator_is_seeded_per_image(text_model):
    gen = text_generator(text_model, 32, 32, DDIM_1)
    caps = ["a small red circle in the center on a gray background",
            "a large blue star at the top left on a white background"]
    a, b = gen(caps, [5, 6]), gen(caps, [5, 6])
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and a[0].shape == (32, 32, 3)
    assert a[0].dtype == np.uint8
    assert np.array_equal(gen(caps[1:], [6])[0], a[1])        # batch position does not matter
    assert not np.array_equal(gen(caps[:1], [7])[0], a[0])     # another seed, another image


@pytest.mark.parametrize("sampler, eta", [("euler_a", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_evaluated_image_is_the_pipelines_image_for_its_seed(text_model, sampler, eta, tmp_path):
    """Issue 18 defect 3: for ancestral samplers too, the image judged for seed s is exactly
    pipelines.txt2img(..., seed=s)'s, whatever its place in the evaluation."""
    kw = dict(steps=3, guidance_scale=2.0, sampler=sampler, eta=eta, width=32, height=32)
    r = eval_shapes(text_model, n=2, seed=4, save_dir=tmp_path, log=None, **kw)
    for rec in r["scenes"]:
        want = np.asarray(pipelines.txt2img(text_model, rec["caption"], "", seed=rec["seed"], **kw)[0])
        saved = sorted(tmp_path.glob(f"{rec['index']:05d}_*.png"))
        assert len(saved) == 1 and np.array_equal(np.asarray(Image.open(saved[0])), want), rec["seed"]


def test_eval_shapes_json_structure_and_determinism(text_model, tmp_path):
    kw = dict(n=2, objects="mixed", seed=3, sampler="ddim", steps=1, guidance_scale=2.0,
              width=32, height=32, log=None)
    r1 = eval_shapes(text_model, **kw, save_dir=tmp_path / "imgs")
    r2 = eval_shapes(text_model, **kw)
    assert r1["scenes"] == r2["scenes"] and r1["summary"] == r2["summary"]
    assert r1["settings"] == {"n": 2, "objects": "mixed", "seed": 3, "sampler": "ddim", "karras": False,
                              "steps": 1, "guidance_scale": 2.0, "eta": 0.0, "width": 32, "height": 32,
                              "batch_size": 16}
    assert [r["seed"] for r in r1["scenes"]] == [3, 4]
    assert [r["caption"] for r in r1["scenes"]] == [caption(s) for s in eval_scenes(2, "mixed", 3)]
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 2
    write_json(r1, tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["task"] == "shapes" and set(back["summary"]) >= {"scene_accuracy", "colour", "shape", "size",
                                                                 "cell", "count", "object_accuracy"}
    assert set(back["scenes"][0]) >= {"index", "seed", "caption", "scene_ok", "objects", "count_ok"}


def test_wrong_model_kinds_are_refused(text_model):
    with pytest.raises(ValueError, match=r"txt2img \(text to image\) cannot run this model"):
        text_generator(tiny_model("ldm_sr"), 32, 32, DDIM_1)
    with pytest.raises(ValueError, match=r"upscale \(upscaling\) cannot run this model"):
        sr_upscaler(text_model, DDIM_1)
    with pytest.raises(ValueError, match="needs an 'upscale-ldm' model"):
        sr_upscaler(tiny_model("sd_x4"), DDIM_1)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        text_generator(text_model, 40, 40, DDIM_1)


# ---------------------------------------------------------------- super-resolution


def test_evaluate_sr_with_an_oracle_and_with_bicubic():
    rng = np.random.default_rng(0)
    hr = {"a": rng.integers(0, 256, (32, 48, 3)).astype(np.uint8)}
    oracle = evaluate_sr(lambda lr: hr["a"], hr, 4, log=None)
    assert oracle["images"]["a"]["psnr"] == math.inf and oracle["images"]["a"]["ssim"] == pytest.approx(1.0)
    lr = area_downsample(hr["a"], 4)
    expected = psnr(bicubic_upscale(lr, 4), hr["a"])
    assert oracle["images"]["a"]["psnr_bicubic"] == pytest.approx(expected)
    same = evaluate_sr(lambda x: bicubic_upscale(x, 4), hr, 4, log=None)
    assert same["mean"]["psnr"] == same["mean"]["psnr_bicubic"] and not same["mean"]["better_psnr_than_bicubic"]
    with pytest.raises(ValueError, match="returned"):
        evaluate_sr(lambda x: x, hr, 4, log=None)


def test_eval_sr_tiny_model_shapes_and_photos(tmp_path):
    m = tiny_model("ldm_sr")
    photos = pytest.importorskip("skimage") is not None
    r = eval_sr(m, n_shapes=1, steps=1, max_side=32, photos=photos, shapes_size=32, log=None)
    assert r["factor"] == 4 and r["shapes"]["images"]["scene_0"]["size"] == [32, 32]
    if photos:
        assert list(r["photos"]["images"]) == list(EVAL_PHOTOS)
        assert all(v["size"] == [32, 32] for v in r["photos"]["images"].values())
    again = eval_sr(m, n_shapes=1, steps=1, photos=False, shapes_size=32, log=None)
    assert again["shapes"] == r["shapes"]                      # fixed seed: the same numbers
    for rec in r["shapes"]["images"].values():
        assert 0 < rec["psnr"] < 60 and -1 <= rec["ssim"] <= 1 and rec["psnr_bicubic"] > 15


def test_cli_shapes_and_sr(tmp_path, capsys, text_model):
    path = save_model(text_model, tmp_path / "tiny-t2i.safetensors", dtype=torch.float32,
                      metadata={"ldm_studio_defaults": json.dumps({"sampler": "ddim", "steps": 1,
                                                                   "guidance_scale": 2.0, "width": 32,
                                                                   "height": 32})})
    r = main(["shapes", "--model", str(path), "--n", "2", "--device", "cpu", "--out", str(tmp_path / "s.json")])
    assert r["settings"]["steps"] == 1 and r["settings"]["width"] == 32      # the file's defaults
    assert json.loads((tmp_path / "s.json").read_text())["model_hash"] == r["model_hash"]
    assert "entirely right" in capsys.readouterr().out
    sr = save_model(tiny_model("ldm_sr"), tmp_path / "tiny-sr.safetensors", dtype=torch.float32)
    r = main(["sr", "--model", str(sr), "--no-photos", "--n-shapes", "1", "--shapes-size", "32", "--steps", "1",
              "--out", str(tmp_path / "sr.json")])
    assert "bicubic" in capsys.readouterr().out and "photos" not in r
    assert json.loads((tmp_path / "sr.json").read_text())["shapes"]["mean"]["psnr_bicubic"] > 15


# ---------------------------------------------------------------- inpainting


def test_inpaint_cases_recolour_one_object_under_its_mask():
    cases = inpaint_cases(6, seed=2, size=64)
    again = inpaint_cases(6, seed=2, size=64)
    for case, same in zip(cases, again):
        assert case["prompt"] == same["prompt"] and np.array_equal(case["mask"], same["mask"])
        k = case["object"]
        old, new = case["scene"].objects[k], case["edited"].objects[k]
        assert new.colour == case["new_colour"] != old.colour
        assert dataclasses.replace(new, colour=old.colour) == old            # only the colour changes
        assert case["prompt"] == caption(case["edited"])
        # the object's pixels all lie under the mask; the mask is a box a few pixels larger than it
        changed = np.any(render(case["edited"], 64) != case["image"], axis=-1)
        assert changed.any() and (case["mask"][changed] == 255).all()
        assert 0 < (case["mask"] == 255).mean() < 0.25


def test_eval_inpaint_with_a_tiny_text_model(text_model, tmp_path):
    r = eval_inpaint(text_model, n=2, seed=1, steps=1, guidance_scale=2.0, save_dir=tmp_path, log=None)
    assert r["task"] == "inpaint" and r["settings"]["method"] == "latent blending"
    assert len(r["scenes"]) == 2 and len(list(tmp_path.glob("*.png"))) == 2
    # nothing is measured outside the mask: the pipeline keeps those pixels (next test)
    assert "outside_psnr" not in r["summary"] and "outside_psnr" not in r["scenes"][0]
    assert all(rec["border_delta_e"] is not None and rec["border_delta_e"] >= 0 for rec in r["scenes"])
    assert r == {**eval_inpaint(text_model, n=2, seed=1, steps=1, guidance_scale=2.0, log=None),
                 "wall_time_s": r["wall_time_s"]}


@pytest.mark.parametrize("family", ["sd2", "sd2_inpaint"])
def test_inpainting_keeps_every_pixel_outside_the_mask(family):
    """Why the evaluation reports no PSNR outside the mask: it is the original there, bit for bit
    (blending and dedicated models alike, with a feathered paste-back)."""
    m = tiny_model(family)
    for i, case in enumerate(inpaint_cases(2, seed=3, size=64)):
        out = pipelines.inpaint(m, Image.fromarray(case["image"]), Image.fromarray(case["mask"]), case["prompt"],
                                steps=2, seed=i, mask_blur=4, guidance_scale=2.0)[0]
        result, keep = np.asarray(out.convert("RGB")), case["mask"] == 0
        assert np.array_equal(result[keep], case["image"][keep])
        assert not np.array_equal(result[~keep], case["image"][~keep])        # and the inside was repainted


# ---------------------------------------------------------------- autoencoder


def test_eval_autoencoder_scores_reconstructions(tmp_path, text_model):
    ae = text_model.first_stage_model
    r = eval_autoencoder(ae, n_shapes=3, size=32, photos=False, log=None)
    assert r["task"] == "autoencoder" and set(r["shapes"]["images"]) == {"scene_0", "scene_1", "scene_2"}
    s = r["shapes"]
    assert s["min_psnr"] <= s["median_psnr"] <= max(v["psnr"] for v in s["images"].values())
    # the scores are those of the reconstruction computed independently
    from core.world import ShapesWorld
    image = ShapesWorld(size=32, seed=SCENE_STREAM)[1]["image"]
    assert s["images"]["scene_1"]["psnr"] == pytest.approx(psnr(reconstruct_uint8(ae, image), image))
    path = save_model(ae, tmp_path / "ae.safetensors", dtype=torch.float32)
    out = main(["autoencoder", "--model", str(path), "--n", "2", "--no-photos", "--out", str(tmp_path / "ae.json")])
    assert out["settings"]["n_shapes"] == 2 and json.loads((tmp_path / "ae.json").read_text())["task"] == "autoencoder"
    with pytest.raises(ValueError, match="first-stage"):
        eval_autoencoder(text_model, n_shapes=1, photos=False, log=None)


class PerfectAutoencoder(torch.nn.Module):
    """D(E(x)) = x exactly, through eval_autoencoder's own path (encode, decode, uint8)."""

    def __init__(self):
        super().__init__()
        self.decoder = torch.nn.Identity()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.cfg = dataclasses.make_dataclass("Cfg", ["ddconfig"])(
            dataclasses.make_dataclass("DD", ["downsample_factor"])(4))

    def encode(self, x):
        return x

    def decode(self, z):
        return z


def test_eval_autoencoder_judges_reconstructions_with_the_checker():
    perfect = eval_autoencoder(PerfectAutoencoder(), n_shapes=6, size=64, photos=False, log=None)["shapes"]
    assert perfect["checker"]["scene_accuracy"] == 1.0 and perfect["checker"]["colour"] == 1.0
    assert perfect["checker"]["scenes"] == 6 and perfect["min_psnr"] > 40      # uint8 round trip only
    # A VQ first stage (encode returns the pre-quantisation h) goes through the same path.
    vq = tiny_model("ldm_uncond").first_stage_model
    r = eval_autoencoder(vq, n_shapes=2, size=32, photos=False, log=None)["shapes"]
    assert 0 < r["median_psnr"] < 60 and r["checker"]["scenes"] == 2


# ---------------------------------------------------------------- layout following


def test_layout_judge_rewards_each_object_inside_its_box_and_nothing_else():
    from core.eval import judge_layout, layout_boxes
    scenes = eval_scenes(6, "2", seed=2)
    for scene in scenes:
        boxes = layout_boxes(scene)
        assert len(boxes) == 2 and all(0 <= v <= 1 for box in boxes for v in box[1:])
        assert all(0 <= box[0] < 24 for box in boxes)
        verdict = judge_layout(render(scene, 64), scene)
        assert verdict["scene_ok"] and verdict["extra_objects"] == 0, verdict
    scene = scenes[0]
    a, b = scene.objects
    # the second object drawn in another cell: its box is empty and an object is drawn outside it
    moved = dataclasses.replace(b, cell=next(c for c in range(9) if c not in (a.cell, b.cell)))
    moved = dataclasses.replace(moved, cx=CELL_CENTRES[moved.cell % 3], cy=CELL_CENTRES[moved.cell // 3])
    verdict = judge_layout(render(Scene(scene.background, (a, moved)), 64), scene)
    assert not verdict["scene_ok"] and verdict["extra_objects"] == 1
    assert [o["ok"] for o in verdict["objects"]] == [True, False] and not verdict["objects"][1]["found"]
    # right place, wrong colour
    recoloured = dataclasses.replace(a, colour=next(c for c in PALETTE if c != a.colour))
    verdict = judge_layout(render(Scene(scene.background, (recoloured, b)), 64), scene)
    assert [(o["found"], o["colour"], o["ok"]) for o in verdict["objects"]] == [(True, False, False), (True, True, True)]


def test_eval_layout_records_the_background_each_layout_got():
    from core.eval.layout import eval_layout, summary_lines
    from core.pipelines.layout_text import layout_vocabulary
    from tests.tiny_models import tiny_model
    m = tiny_model("layout_background")
    result = eval_layout(m, n=4, objects="1", seed=3, steps=2, log=None)
    drawn = [r["background"] for r in result["scenes"]]
    assert drawn == [layout_vocabulary(m).background(None, 3 + i)[1] for i in range(4)]     # the default: from the seed
    assert sum(s["scenes"] for s in result["by_background"].values()) == 4
    assert summary_lines(result)[-1].startswith("by background: ")
