"""The pipelines on a CUDA device give what they give on the CPU. Marked `cuda` (pytest.ini) and
skipped without a CUDA device; bench/gpu_check.sh runs them on a GPU machine
(`python -m pytest -m cuda tests/test_cuda.py`).

Every image's noise is drawn on the CPU from its seed (core.samplers.noise.randn), so the same seed
gives the same image on both devices up to float rounding (cuDNN convolutions use TF32 by default):
a device-side draw or a device-dependent code path shows as a difference of tens of pixel levels,
far above the tolerances here.
"""
import copy

import numpy as np
import pytest
import torch
from PIL import Image

from core import load_model, save_model
from core import pipelines as P
from core.pipelines.memory import available_memory
from core.pipelines.vae import plan_decode_tile
from tests.tiny_models import fp16_overflowing_sr_model, tiny_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device (bench/gpu_check.sh runs these on a GPU)")]
MAX_PIXEL_DIFF, MEAN_PIXEL_DIFF = 8, 1.0


@pytest.fixture
def device():
    return torch.device("cuda")


def _on(m, device):
    return copy.deepcopy(m).to(device)


def _pixels(image) -> np.ndarray:
    return np.asarray(image, np.int16)


def _assert_same_image(a, b, max_diff=MAX_PIXEL_DIFF, mean_diff=MEAN_PIXEL_DIFF):
    diff = np.abs(_pixels(a) - _pixels(b))
    assert diff.max() <= max_diff and diff.mean() <= mean_diff, (diff.max(), diff.mean())


def _photo(w, h, seed=0) -> Image.Image:
    rng = np.random.RandomState(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.array([1.0, 0.5, 0.2])
    return Image.fromarray((base + rng.rand(h, w, 3) * 40).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("sampler", ["ddim", "euler_a"])          # euler_a: ancestral noise every step
def test_txt2img_from_cpu_seeded_noise_matches_the_cpu(device, sampler):
    m = tiny_model("sd2")
    kw = {"steps": 3, "sampler": sampler, "seed": 5, "width": 64, "height": 64}
    ref_z = P.txt2img(m, "a red circle", **kw, output="latent")
    z = P.txt2img(_on(m, device), "a red circle", **kw, output="latent")
    assert z.device.type == device.type
    assert ((z.cpu() - ref_z).norm() / ref_z.norm()).item() < 1e-2
    _assert_same_image(P.txt2img(_on(m, device), "a red circle", **kw)[0], P.txt2img(m, "a red circle", **kw)[0])


def test_sdxl_txt2img_matches_the_cpu(device):
    m = tiny_model("sdxl")
    kw = {"steps": 3, "sampler": "dpmpp_2m", "seed": 2, "width": 128, "height": 128}
    _assert_same_image(P.txt2img(_on(m, device), "a blue square", **kw)[0], P.txt2img(m, "a blue square", **kw)[0])


def test_load_model_on_cuda_runs_in_float16(device, tmp_path):
    m = tiny_model("sd2")
    path = save_model(m, tmp_path / "m.safetensors", dtype=torch.float32)
    g = load_model(path, device=device)                               # core.inference_dtype: float16 on CUDA
    assert g.dtype == torch.float16 and g.device.type == device.type
    assert g.alphas_cumprod.dtype == torch.float32                    # the schedule stays float32
    kw = {"steps": 3, "sampler": "ddim", "seed": 1, "width": 64, "height": 64}
    _assert_same_image(P.txt2img(g, "a red circle", **kw)[0], P.txt2img(m, "a red circle", **kw)[0],
                       max_diff=16, mean_diff=2.0)     # float16: 2 levels max on the CPU here


def test_tiled_upscale_matches_the_cpu(device):
    m = tiny_model("ldm_sr")
    lr = _photo(40, 24)
    kw = {"steps": 2, "seed": 0, "tile": 16, "overlap": 4}            # 3 x 2 tiles blended every step
    assert P.plan_upscale(m, 40, 24, P.SamplingSettings.resolve(P.model_defaults(m), steps=2), tile=16).tiles > 1
    _assert_same_image(P.upscale(_on(m, device), lr, **kw), P.upscale(m, lr, **kw))


def test_inpaint_matches_the_cpu(device):
    m = tiny_model("sd2_inpaint")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 20:44] = 255
    kw = {"steps": 2, "seed": 3, "sampler": "ddim"}
    out = P.inpaint(_on(m, device), _photo(64, 64), Image.fromarray(mask), "a circle", **kw)[0]
    _assert_same_image(out, P.inpaint(m, _photo(64, 64), Image.fromarray(mask), "a circle", **kw)[0])


def test_tiled_vae_decode_matches_the_cpu(device):
    m = tiny_model("sd2")
    z = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(0))
    ref = P.vae.decode(m, z, tile=8, stat_tiles=None)                 # exact shared GroupNorm statistics
    tiled = P.vae.decode(_on(m, device), z.to(device), tile=8, stat_tiles=None)
    whole = P.vae.decode(_on(m, device), z.to(device), tile=0)
    assert tiled.device.type == device.type and tiled.shape == whole.shape == ref.shape
    assert ((tiled.cpu() - ref).norm() / ref.norm()).item() < 5e-3
    assert ((tiled - whole).norm() / whole.norm()).item() < 1e-2   # tiling itself: 3e-3 on the CPU here


def test_fp16_vae_overflow_falls_back_to_fp32_on_cuda(device):
    m, z = fp16_overflowing_sr_model()
    reference = m.decode_first_stage(z).float()
    m = m.to(device)
    m.first_stage_model.half()
    with pytest.warns(UserWarning, match="decoding again in float32"):
        x = P.vae.decode(m, z.to(device))
    assert torch.isfinite(x).all() and torch.allclose(x.cpu(), reference, atol=1e-2)


def test_memory_planner_reads_the_gpu(device):
    free, total = torch.cuda.mem_get_info(device)
    assert 0 < available_memory(device) <= total
    m = _on(tiny_model("sd2"), device)
    assert plan_decode_tile(m, 64, 64, 1) == 0                        # a small decode fits whole
    assert 0 < plan_decode_tile(m, 512, 512, 1, budget=64 << 20) < 512  # a small budget tiles
