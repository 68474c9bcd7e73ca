"""AUTOMATIC1111's "parameters" infotext (shared/FORMATS.md): exact text written, parsing of
reference-written strings, PNG chunks, the model hash, and the round trip through a pipeline."""

import hashlib
import json

import pytest
import torch
from PIL import Image

from core import save_model
from core.pipelines import infotext, parse_infotext, read_infotext, save_png, txt2img
from core.pipelines.color import delta_e_2000, srgb_to_lab
from core.pipelines.infotext import attach_parameters, cached_model_hash
from tests.tiny_models import tiny_model

# The example of FORMATS.md, verbatim.
FORMATS_EXAMPLE = (
    "a large red circle in the center on a white background\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3416812380, Size: 64x64, "
    "Model hash: 6ce0161689, Model: shapes-txt2img, Version: ldm-studio 0.1")


def test_parse_formats_example():
    p = parse_infotext(FORMATS_EXAMPLE)
    assert p["prompt"] == "a large red circle in the center on a white background"
    assert p["negative_prompt"] == "blurry"
    assert (p["steps"], p["sampler"], p["karras"], p["guidance_scale"], p["seed"]) == (20, "dpmpp_2m", True, 7.0,
                                                                                       3416812380)
    assert (p["width"], p["height"]) == (64, 64)
    assert (p["model_hash"], p["model"], p["version"]) == ("6ce0161689", "shapes-txt2img", "ldm-studio 0.1")


def test_parse_a1111_string_with_unknown_and_quoted_keys():
    # As AUTOMATIC1111 writes it: a multi-line prompt, extension keys, a JSON-quoted value with commas.
    text = ('masterpiece, 1girl\nsecond line: with colon\n'
            'Negative prompt: lowres, bad hands\nmore negative\n'
            'Steps: 28, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 42, Size: 512x768, '
            'Model hash: abcdef1234, Clip skip: 2, ADetailer model: face_yolov8n.pt, '
            'Lora hashes: "detail: 1a2b3c, style: 4d5e6f", Version: v1.10.1')
    p = parse_infotext(text)
    assert p["prompt"] == "masterpiece, 1girl\nsecond line: with colon"
    assert p["negative_prompt"] == "lowres, bad hands\nmore negative"
    assert (p["sampler"], p["karras"], p["guidance_scale"], p["width"], p["height"]) == ("euler_a", False, 6.5,
                                                                                       512, 768)
    assert p["clip_skip"] == 2
    assert p["ADetailer model"] == "face_yolov8n.pt"                      # unknown keys kept as written
    assert p["lora_hashes"] == "detail: 1a2b3c, style: 4d5e6f"            # JSON-unquoted, a known key now
    # Older A1111 wrote Karras into the sampler name.
    assert parse_infotext("x\nSteps: 5, Sampler: DPM++ 2M Karras, Seed: 1")["karras"] is True


def test_fewer_than_three_pairs_is_all_prompt():
    p = parse_infotext("a cat\nStyle: photo, Light: soft")
    assert p["prompt"] == "a cat\nStyle: photo, Light: soft" and "steps" not in p


def test_written_text_is_exact_and_in_reference_order():
    params = {"prompt": "a red circle", "negative_prompt": "blurry", "seed": 7, "steps": 20,
              "sampler": "dpmpp_2m", "karras": True, "guidance_scale": 7.0, "width": 64, "height": 32,
              "model_hash": "6ce0161689", "model": "shapes-txt2img", "rng": "CPU", "strength": 0.5,
              "mask_blur": 4, "version": "ldm-studio 0.1", "eta": 0.3}
    expected = ("a red circle\nNegative prompt: blurry\n"
                "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 7, Size: 64x32, "
                "Model hash: 6ce0161689, Model: shapes-txt2img, Denoising strength: 0.5, RNG: CPU, "
                "Mask blur: 4, Version: ldm-studio 0.1")                  # eta only for DDIM
    assert infotext(params) == expected
    ddim = infotext({**params, "sampler": "ddim", "negative_prompt": ""})
    assert ddim.startswith("a red circle\nSteps: 20, Sampler: DDIM, CFG scale: 7,")   # no schedule type
    assert "Eta DDIM: 0.3" in ddim


def test_quoting_and_round_trip_of_awkward_values():
    params = {"prompt": "p", "steps": 3, "sampler": "ddim", "seed": 1, "model": 'my, model: "v2"\nnew',
              "layout": [[0, 0.1, 0.2, 0.5, 0.6]], "width": 8, "height": 8}
    text = infotext(params)
    assert 'Model: "my, model: \\"v2\\"\\nnew"' in text                    # JSON string, as quote() does
    back = parse_infotext(text)
    assert back["model"] == params["model"] and back["layout"] == params["layout"]


def test_png_chunk_latin1_and_utf8(tmp_path):
    image = Image.new("RGB", (4, 4), (10, 20, 30))
    for prompt, chunk in (("plain prompt", b"tEXt"), ("un chat \u732b", b"iTXt")):
        attach_parameters(image, {"prompt": prompt, "steps": 2, "sampler": "euler", "seed": 3})
        path = save_png(image, tmp_path / f"{chunk.decode()}.png")
        raw = path.read_bytes()
        assert chunk + b"parameters" in raw
        assert read_infotext(path)["prompt"] == prompt
    assert not list(tmp_path.glob(".*tmp"))                               # no temporary left behind


def test_read_without_parameters_is_a_clear_error(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="no generation parameters"):
        read_infotext(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="not found"):
        read_infotext(tmp_path / "missing.png")


def test_pipeline_round_trip_and_model_hash(tmp_path):
    path = save_model(tiny_model("sd2"), tmp_path / "tiny.safetensors",
                      metadata={"ldm_studio_name": "tiny-sd2"})
    from core import load_model
    m = load_model(path)
    image = txt2img(m, "a red circle, big", "blurry", steps=2, sampler="euler", karras=True, seed=11)[0]
    expected_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert cached_model_hash(path) == expected_hash
    saved = save_png(image, tmp_path / "out.png")
    back = read_infotext(saved)
    info = image.info["ldm_studio"]
    for key in ("prompt", "negative_prompt", "steps", "sampler", "karras", "guidance_scale", "seed", "width",
                "height", "model_hash", "model", "rng", "version"):
        assert back[key] == info[key], key
    assert back["model_hash"] == expected_hash and back["model"] == "tiny-sd2"
    json.dumps(info)                                                      # a plain, JSON-able dict


def test_ciede2000_against_sharma_table():
    # Sharma, Wu & Dalal (2005), Table 1: pairs 1, 2, 3, 4, 7, 9, 14, 15, 16, 17, 20.
    pairs = [((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
             ((50, 3.1571, -77.2803), (50, 0, -82.7485), 2.8615),
             ((50, 2.8361, -74.0200), (50, 0, -82.7485), 3.4412),
             ((50, -1.3802, -84.2814), (50, 0, -82.7485), 1.0000),
             ((50, 0, 0), (50, -1, 2), 2.3669),
             ((50, 2.5, 0), (50, 3.1736, 0.5854), 1.0000),
             ((50, 2.5, 0), (73, 25, -18), 27.1492),
             ((50, 2.5, 0), (61, -5, 29), 22.8977),
             ((50, 2.5, 0), (56, -27, -3), 31.9030),
             ((50, 2.5, 0), (58, 24, 15), 19.4535),
             ((50, 2.5, 0), (50, 3.2972, 0), 1.0000)]
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float64).numpy()
    b = torch.tensor([p[1] for p in pairs], dtype=torch.float64).numpy()
    got = delta_e_2000(a, b)
    assert got == pytest.approx([p[2] for p in pairs], abs=1e-4)
    assert delta_e_2000(b, a) == pytest.approx(got, abs=1e-9)             # symmetric


def test_srgb_to_lab_known_colours():
    lab = srgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).numpy())
    assert lab[0] == pytest.approx([100.0, 0.0, 0.0], abs=1e-3)
    assert lab[1] == pytest.approx([53.2408, 80.0925, 67.2032], abs=1e-3)  # sRGB red, D65
    assert lab[2] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
