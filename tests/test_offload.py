"""--medvram-style offloading (core/pipelines/offload.py): on the CPU a no-op; each pipeline step asks
for the part it runs (text encoders, UNet, VAE) in order, and the numbers do not change."""
import numpy as np
import pytest
import torch

from core import pipelines as P
from core.pipelines.offload import Offload, enable_offload, use_part
from tests.tiny_models import tiny_model
from ui.settings import parse_args

RUN = dict(steps=2, sampler="euler", seed=3, width=64, height=64)


def test_on_the_cpu_offloading_is_a_no_op():
    m = tiny_model("sdxl")
    before = {k: v.device for k, v in m.state_dict().items()}
    assert enable_offload(m, "cpu") is False and not hasattr(m, "offload")
    use_part(m, "text")                                       # nothing to do, nothing raised
    assert {k: v.device for k, v in m.state_dict().items()} == before
    assert parse_args(["--medvram"]).medvram and not parse_args([]).medvram


def _tracked(family):
    """A model whose parts are tracked as if offloaded (device = storage = cpu: nothing moves)."""
    m = tiny_model(family)
    m.__dict__["offload"] = Offload(torch.device("cpu"))
    return m


@pytest.mark.parametrize("family", ["sdxl", "sd1"])
def test_each_pipeline_step_asks_for_its_part_and_results_do_not_change(family):
    m = _tracked(family)
    image = P.txt2img(m, "a red circle", **RUN)[0]
    assert m.offload.history == ["text", "unet", "vae"]
    assert image.tobytes() == P.txt2img(tiny_model(family), "a red circle", **RUN)[0].tobytes()
    m.offload.history.clear()
    if family == "sd1":                         # A1111 syntax: the prompt is encoded again inside denoise
        P.img2img(m, image, "a red circle (blue:1.2)", strength=0.5, **RUN)
        assert m.offload.history == ["vae", "text", "text", "unet", "vae"]
    else:
        P.img2img(m, image, "a red circle", strength=0.5, **RUN)
        assert m.offload.history == ["vae", "text", "unet", "vae"]
    with pytest.raises(ValueError, match="part must be"):
        use_part(m, "clip")


def test_sdxl_inpainting_and_refiner_steps():
    m, refiner = _tracked("sdxl"), _tracked("sdxl_refiner")
    P.txt2img(m, "a photo", refiner=refiner, refiner_switch_at=0.5, **RUN)
    assert m.offload.history == ["text", "unet", "vae"] and refiner.offload.history == ["text", "unet"]
    inpainter = _tracked("sdxl_inpaint")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    P.inpaint(inpainter, np.zeros((64, 64, 3), np.uint8), mask, "a photo", **RUN)
    assert inpainter.offload.history == ["vae", "text", "vae", "unet", "vae"]
