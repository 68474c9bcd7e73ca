"""The SDXL refiner as a second stage, A1111's way (core/pipelines/refiner.py): the tiny base samples
the first steps and the tiny refiner continues the same trajectory with its own conditioning."""
import pytest
import torch

from core import pipelines as P
from core.pipelines.conditioning import sdxl_conditioning
from core.pipelines.refiner import refiner_stage
from core.samplers import CFGDenoiser, SamplingSettings
from core.samplers.noise import cpu_generator
from core.samplers.registry import SAMPLERS
from core.samplers.sgm import DiscreteDenoiser, sgm_sigmas
from tests.tiny_models import tiny_model

SIZE = 64                                     # px: the refiner's grid (f8 x 3 down-samplings)
RUN = dict(steps=5, sampler="euler", seed=3, width=SIZE, height=SIZE, guidance_scale=5.0)


@pytest.fixture(scope="module")
def base():
    return tiny_model("sdxl")


@pytest.fixture(scope="module")
def refiner():
    return tiny_model("sdxl_refiner", seed=1)


def test_switch_at_one_is_the_base_alone(base, refiner):
    alone = P.txt2img(base, "a photo", **RUN, output="latent")
    assert torch.equal(P.txt2img(base, "a photo", **RUN, refiner=refiner, refiner_switch_at=1.0, output="latent"),
                       alone)
    image = P.txt2img(base, "a photo", **RUN, refiner=refiner, refiner_switch_at=1.0)[0]
    assert "Refiner" not in image.info["parameters"]           # the refiner took no step (A1111 records none)


def test_refined_result_is_deterministic_and_recorded(base, refiner):
    a = P.txt2img(base, "a photo", **RUN, refiner=refiner, refiner_switch_at=0.6)[0]
    b = P.txt2img(base, "a photo", **RUN, refiner=refiner, refiner_switch_at=0.6)[0]
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != P.txt2img(base, "a photo", **RUN)[0].tobytes()
    assert "Refiner: refiner, Refiner switch at: 0.6" in a.info["parameters"]
    params = P.parse_infotext(a.info["parameters"])
    assert (params["refiner"], params["refiner_switch_at"]) == ("refiner", 0.6)


def test_handoff_equals_a_manual_split(base, refiner):
    """Base for steps 0..2 (ceil(0.6 x 5) = 3), then the refiner on the remaining sigmas from the
    base's x, with the refiner's own conditioning (aesthetic score 6 / 2.5)."""
    size = (SIZE, SIZE)
    c, u = sdxl_conditioning(base, "a photo", "", size=size)
    settings = SamplingSettings("euler", False, 5, 5.0)
    shape = (1, 4, SIZE // 8, SIZE // 8)
    states = {}
    P.denoise(base, c, u, settings, shape, [cpu_generator(3)],
              callback=lambda i, total, x, pred_x0: states.setdefault(i, x.clone()))
    stage = refiner_stage(base, refiner, 0.6, "a photo", "", size)
    assert stage.switch_step(5) == 3
    rc, ru = sdxl_conditioning(refiner, "a photo", "", size=size)
    assert torch.equal(stage.cond["y"], rc["y"]) and torch.equal(stage.uncond["y"], ru["y"])
    negative = refiner.conditioner.make_batch([""], original_size=size, target_size=size, aesthetic_score=2.5)
    assert torch.equal(ru["y"], refiner.get_learned_conditioning(negative)["y"])         # sgm's / A1111's 2.5

    grid = refiner.denoiser.sigmas
    denoiser = DiscreteDenoiser(CFGDenoiser(refiner.apply_model), grid, "eps")
    manual = SAMPLERS["euler"](denoiser, states[2], sgm_sigmas(grid, 5)[3:],
                               extra_args={"cond": rc, "uncond": ru, "cond_scale": 5.0})
    handoff = P.denoise(base, c, u, settings, shape, [cpu_generator(3)], refiner=stage)
    assert torch.allclose(handoff, manual, atol=1e-5)
    base_only = P.denoise(base, c, u, settings, shape, [cpu_generator(3)])
    assert (handoff - base_only).abs().max() > 1e-3                  # the refiner really ran


def test_capabilities_name_the_refiner(base, refiner):
    from core.capabilities import capabilities
    assert capabilities(refiner).refiner and not capabilities(base).refiner


def test_refiner_bad_input(base, refiner):
    for bad in (0, 1.5, "0.8", True):
        with pytest.raises(ValueError, match="refiner_switch_at"):
            P.txt2img(base, "a photo", **RUN, refiner=refiner, refiner_switch_at=bad)
    with pytest.raises(ValueError, match="base model itself"):
        P.txt2img(base, "a photo", **RUN, refiner=base)
    with pytest.raises(ValueError, match="text-to-image"):
        P.txt2img(base, "a photo", **RUN, refiner=tiny_model("ldm_sr"))
    with pytest.raises(ValueError, match="multiple of 64"):
        P.txt2img(base, "a photo", **{**RUN, "width": 96}, refiner=refiner)


def test_hires_first_pass_is_refined(base, refiner):
    hires = P.HiresSettings(scale=2.0, upscaler="Latent", steps=2, strength=0.5)
    run = dict(RUN, steps=3)
    plain = P.txt2img_hires(base, "a photo", hires, **run)[0]
    refined = P.txt2img_hires(base, "a photo", hires, **run, refiner=refiner, refiner_switch_at=0.5)[0]
    assert refined.size == (2 * SIZE, 2 * SIZE) and refined.tobytes() != plain.tobytes()
    assert P.parse_infotext(refined.info["parameters"])["refiner_switch_at"] == 0.5


def test_cli_refiner_flags(tmp_path, base, refiner):
    from core import save_model
    from core.generate import main
    from core.pipelines.infotext import cached_model_hash
    base_file = save_model(base, tmp_path / "xl_base.safetensors")
    refiner_file = save_model(refiner, tmp_path / "xl_refiner.safetensors")
    out = tmp_path / "out"
    assert main(["txt2img", "--model", str(base_file), "--refiner", str(refiner_file), "--refiner-switch-at", "0.5",
                 "--steps", "2", "--width", str(SIZE), "--height", str(SIZE), "--seed", "1", "--outdir", str(out),
                 "--quiet", "--device", "cpu"]) == 0
    params = P.read_infotext(next(out.iterdir()))
    assert params["refiner"] == f"xl_refiner [{cached_model_hash(refiner_file)}]"
    assert params["refiner_switch_at"] == 0.5
