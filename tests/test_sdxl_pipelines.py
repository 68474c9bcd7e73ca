"""SDXL through the pipelines (issue 15): txt2img / img2img / inpaint / hires on a tiny SDXL base,
with the size conditioning filled as A1111 does and sgm's sampling numerics."""
import numpy as np
import pytest
import torch

from core import pipelines as P
from core.capabilities import capabilities
from core.pipelines.conditioning import sdxl_conditioning
from tests.tiny_models import tiny_model


@pytest.fixture(scope="module")
def sdxl():
    return tiny_model("sdxl")


def test_sdxl_is_a_text_model_and_runs_every_text_pipeline(sdxl):
    caps = capabilities(sdxl)
    assert caps.tasks == ("txt2img", "img2img", "inpaint") and caps.prompt
    size = caps.grid * 2
    image = P.txt2img(sdxl, "a photo", steps=2, sampler="euler", seed=1, width=size, height=size)[0]
    assert image.size == (size, size) and np.asarray(image).std() > 0
    again = P.img2img(sdxl, image, "a photo", strength=0.5, steps=2, sampler="euler", seed=2)[0]
    assert again.size == image.size
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2] = 255
    out = P.inpaint(sdxl, image, mask, "a photo", steps=2, sampler="euler", seed=3)[0]
    assert np.array_equal(np.asarray(out)[size // 2:], np.asarray(image)[size // 2:])


def test_sdxl_size_conditioning_and_uncond(sdxl):
    c, u = sdxl_conditioning(sdxl, "a photo", "", size=(64, 96))
    batch = sdxl.conditioner.make_batch(["a photo"], original_size=(64, 96), target_size=(64, 96))
    assert torch.equal(c["y"], sdxl.get_learned_conditioning(batch)["y"])
    assert torch.count_nonzero(u["c_crossattn"][0]) == 0                 # the base zeroes its text (reference)
    _, u_neg = sdxl_conditioning(sdxl, "a photo", "blurry", size=(64, 96))
    assert torch.count_nonzero(u_neg["c_crossattn"][0]) > 0              # a negative prompt is read (A1111)


def test_sdxl_pipeline_sampling_uses_the_reference_sigmas(sdxl):
    """The pipelines' denoise passes sgm's discrete sigmas, as core.samplers.sample does."""
    from core.samplers import sample
    from core.samplers.noise import cpu_generator, randn
    size = capabilities(sdxl).grid
    c, u = sdxl_conditioning(sdxl, "a photo", "", size=(size * 8, size * 8))
    settings = P.SamplingSettings("euler", False, 3, 5.0)
    z = P.denoise(sdxl, c, u, settings, (1, 4, size, size), [cpu_generator(7)])
    x_T = randn((1, 4, size, size), cpu_generator(7), "cpu", torch.float32)
    ref = sample(sdxl, c, uncond=u, guidance_scale=5.0, steps=3, sampler="euler", x_T=x_T)
    assert torch.allclose(z, ref, atol=1e-5)


def test_an_sdxl_file_without_config_is_listed_by_its_keys(tmp_path):
    """Most users have only the .safetensors: the picker detects the family from the header."""
    from safetensors.torch import save_file

    from ui.models import ModelCache
    sd = {k: v.contiguous() for k, v in tiny_model("sdxl").state_dict().items()}
    save_file(sd, str(tmp_path / "sd_xl_fine_tune.safetensors"))            # no metadata, no YAML
    (tmp_path / "mystery.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    cache = ModelCache(tmp_path, "cpu", "float32")
    entries, problems = cache.scan()
    assert [(e.name, e.config, e.caps.native_size) for e in entries] == [("sd_xl_fine_tune.safetensors",
                                                                          "sdxl_base", 1024)]
    assert [e.name for e in cache.for_tab("txt2img")] == ["sd_xl_fine_tune.safetensors"]
    assert "no config" in problems["mystery.safetensors"]


def test_sdxl_inpainting_checkpoint_is_detected_loaded_and_inpaints(tmp_path):
    """A 9-channel SDXL inpainting file (the released layout, no YAML): detected, loaded key-exact, and
    run through the dedicated path: UNet input [z, mask, masked-image latent] with SDXL's conditioning."""
    from safetensors.torch import save_file

    from core import load_model
    from core.checkpoints import bundled_configs
    from core.checkpoints.detect import detect_family
    from tests.tiny_models import original_state_dict
    model = tiny_model("sdxl_inpaint")
    sd = {k: v.contiguous() for k, v in original_state_dict(model, "sdxl_inpaint").items()}
    assert detect_family(sd).config == "sdxl_inpaint"
    caps = capabilities(model)
    assert (caps.family, caps.tasks, caps.dedicated_inpainting) == ("inpaint-sd", ("inpaint",), True)
    path = tmp_path / "xl_inpaint.safetensors"
    save_file(sd, str(path))
    loaded = load_model(path, config=model.config)          # the tiny architecture, from the original layout
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    real = bundled_configs.sdxl_inpaint()                   # what a real file without a config gets
    assert (real.unet.in_channels, capabilities(real).family) == (9, "inpaint-sd")

    size = 64
    image = np.zeros((size, size, 3), np.uint8)
    image[:, :, 0] = np.arange(size)[None, :] * 4
    mask = np.zeros((size, size), np.uint8)
    mask[16:48, 16:48] = 255
    out = P.inpaint(model, image, mask, "a photo", steps=2, sampler="euler", seed=3, mask_blur=0)[0]
    assert out.size == (size, size)
    assert np.array_equal(np.asarray(out)[:16], image[:16])                      # kept outside the mask
    seen = {}
    original = model.model.diffusion_model.forward

    def spy(x, t, **kw):
        seen.setdefault("x", x.clone())
        return original(x, t, **kw)
    model.model.diffusion_model.forward = spy
    P.inpaint(model, image, mask, "a photo", steps=1, sampler="euler", seed=3, mask_blur=0)
    x = seen["x"]                                                     # (2, 9, 8, 8): cond and uncond
    assert x.shape[1] == 9 and torch.equal(x[0, 4:], x[1, 4:])
    assert x[0, 4, 2:6, 2:6].eq(1).all() and x[0, 4].sum() == 16                 # channel 4: the mask (1 = repaint)
