"""The Upscale tab's size line is the pipeline's own plan, read from the model file alone: it
refuses what the app would refuse before anything runs (issue 19 item 9, issue 18 defect 4)."""
import json

from PIL import Image

from core import pipelines, save_model
from tests.tiny_models import tiny_model
from ui.settings import AppSettings
from ui.studio import Studio
from ui.upscale import estimate, plan_for, prompt_visibility


def _studio(tmp_path, max_side=4096) -> Studio:
    weights = tmp_path / "weights"
    weights.mkdir()
    defaults = json.dumps({"steps": 7, "sampler": "ddim", "eta": 1.0, "guidance_scale": 1.0})
    save_model(tiny_model("ldm_sr"), weights / "sr.safetensors", metadata={"ldm_studio_defaults": defaults})
    return Studio.create(AppSettings(weights_dir=weights, outputs_dir=tmp_path / "out", runs_dir=tmp_path / "runs",
                                     max_side=max_side))


def test_the_size_line_refuses_a_too_large_result_before_upscale_is_pressed(tmp_path):
    studio = _studio(tmp_path)
    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000), "gray").save(big)
    text = estimate.__wrapped__(studio, image=str(big))
    assert text.startswith("**Cannot upscale this:**") and "16000x12000" in text and "--max-size" in text
    assert not studio.models._loaded                                 # nothing was loaded to say so


def test_the_plan_shown_is_the_pipelines_plan(tmp_path):
    studio = _studio(tmp_path)
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 24), "gray").save(small)
    text = estimate.__wrapped__(studio, image=str(small), tile=16, overlap=4)
    assert "40x24 -> **160x96**: 6 tile(s) of 16 px (overlap 4) x 8 steps" in text   # DDIM 7 runs 8
    entry = studio.models.entry("upscale", None)
    m = studio.models.load(entry)
    settings = pipelines.SamplingSettings.resolve(pipelines.model_defaults(m))
    assert plan_for(studio, entry, 40, 24, 16, 4) == pipelines.plan_upscale(m, 40, 24, settings, tile=16, overlap=4)
    assert "instant, no model" in estimate.__wrapped__(studio, image=str(small), upscaler="lanczos")


def test_the_prompt_boxes_hide_for_upscalers_that_read_no_prompt(tmp_path):
    studio = _studio(tmp_path)
    assert [u["visible"] for u in prompt_visibility(studio, None)] == [False, False]       # LDM-SR
    assert [u["visible"] for u in prompt_visibility(studio, None, "lanczos")] == [False, False]
