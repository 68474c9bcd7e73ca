"""The latent-level core and what is decided once (issue 18): capabilities, batches that keep each
image reproducible from its seed, latent outputs, interrupted runs' partial images, the upscale
plan, the x4 upscaler's independent noise stream, img2img resize modes and the Lanczos upscaler."""
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from core import pipelines as P
from core import save_model
from core.capabilities import capabilities
from core.samplers import SamplingInterrupted, SamplingSettings, ddim_timesteps
from core.samplers.noise import cpu_generator, randn
from tests.tiny_models import tiny_model


@pytest.fixture(scope="module")
def sd2():
    return tiny_model("sd2")


def _photo(w=32, h=32, seed=0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8))


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(i, dtype=np.int16) for i in images])


# ---------------------------------------------------------------------------------------------
# Capabilities: one record, from the config alone
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family, tasks, prompt, guidance", [
    ("sd2", ("txt2img", "img2img", "inpaint"), True, True),
    ("sd2_inpaint", ("inpaint",), True, True),
    ("sd_x4", ("upscale",), True, True),
    ("ldm_sr", ("upscale",), False, False),
    ("ldm_inpaint", ("inpaint",), False, False),
    ("ldm_uncond", ("unconditional", "img2img", "inpaint"), False, False),
    ("ldm_class", ("class",), False, False),
    ("ldm_txt2img", (), False, True),            # BERT token ids: no tokenizer here, so nothing runs it
])
def test_capabilities_from_model_and_from_config(family, tasks, prompt, guidance):
    m = tiny_model(family)
    caps = capabilities(m)
    assert caps == capabilities(m.config)                         # the header's config is enough
    assert (caps.tasks, caps.prompt, caps.guidance) == (tasks, prompt, guidance)
    assert caps.grid == caps.factor * 2 ** (len(m.config.unet.channel_mult) - 1)


def test_max_clip_skip_is_the_text_encoders_block_count():
    """A1111's clip skip reaches back to the first block of a CLIP / OpenCLIP encoder, from its config."""
    from core.checkpoints.bundled_configs import BUNDLED_CONFIGS
    for family, limit in (("sd1", 2), ("sd2", 1), ("sd2_inpaint", 1), ("ldm_sr", 1), ("ldm_class", 1)):
        m = tiny_model(family)
        assert capabilities(m).max_clip_skip == limit, family
        if limit > 1:
            assert m.cond_stage_model.n_blocks == limit                  # what the encoder runs at clip skip 1
    real = {name: capabilities(BUNDLED_CONFIGS[name]()).max_clip_skip for name in ("sd1", "sd2", "sd2_v")}
    assert real == {"sd1": 12, "sd2": 23, "sd2_v": 23}                 # SD1: 12 CLIP blocks; SD2: 24, penultimate


def test_pickers_list_only_models_that_can_run(tmp_path):
    """The CompVis BERT text model loads but cannot encode a prompt: no tab offers it."""
    from ui.models import ModelCache
    for family in ("sd2", "ldm_txt2img", "sd2_inpaint", "ldm_sr"):
        save_model(tiny_model(family), tmp_path / f"{family}.safetensors")
    cache = ModelCache(tmp_path, "cpu", "float32")
    assert [e.name for e in cache.for_tab("txt2img")] == ["sd2.safetensors"]
    assert [e.name for e in cache.for_tab("inpaint")] == ["sd2_inpaint.safetensors", "sd2.safetensors"]
    assert [e.name for e in cache.for_tab("upscale")] == ["ldm_sr.safetensors"]
    with pytest.raises(ValueError, match="BERT ids"):
        P.txt2img(tiny_model("ldm_txt2img"), "x", steps=1)


# ---------------------------------------------------------------------------------------------
# Batches: image i depends only on its seed
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["euler_a", "ddim", "dpmpp_2m"])
def test_a_batch_equals_its_images_made_alone(sd2, sampler):
    together = P.txt2img(sd2, "a red circle", steps=3, sampler=sampler, seed=11, n=3, batch_size=3,
                         width=32, height=32)
    alone = [P.txt2img(sd2, "a red circle", steps=3, sampler=sampler, seed=11 + i, width=32, height=32)[0]
             for i in range(3)]
    assert np.abs(_pixels(together) - _pixels(alone)).max() <= 1          # float rounding of a batched UNet
    assert [i.info["ldm_studio"]["seed"] for i in together] == [11, 12, 13]
    assert np.abs(_pixels(together[:1]) - _pixels(together[1:2])).max() > 10   # different seeds differ


def test_latent_output_is_what_the_images_are_decoded_from(sd2):
    z = P.txt2img(sd2, "x", steps=2, seed=5, n=2, width=32, height=32, output="latent")
    assert isinstance(z, torch.Tensor) and z.shape == (2, 4, 4, 4)
    images = P.txt2img(sd2, "x", steps=2, seed=5, n=2, width=32, height=32)
    from core.pipelines.generation import decode
    from core.pipelines.images import tensor_to_images
    again = [tensor_to_images(x)[0] for x in decode(sd2, z)]
    assert np.array_equal(_pixels(again), _pixels(images))
    with pytest.raises(ValueError, match="output must be"):
        P.txt2img(sd2, "x", steps=1, output="pil")


def test_denoise_is_the_one_core_and_takes_frozen_settings(sd2):
    settings = SamplingSettings("euler", True, 3, 2.0)
    c, u = sd2.get_learned_conditioning(["a"]), sd2.get_learned_conditioning([""])
    z = P.denoise(sd2, c, u, settings, (1, 4, 4, 4), [cpu_generator(1)])
    z2 = P.denoise(sd2, c, u, settings, (1, 4, 4, 4), [cpu_generator(1)])
    assert torch.equal(z, z2) and z.dtype == sd2.dtype
    with pytest.raises(ValueError, match="Karras sigmas apply"):
        SamplingSettings("ddim", True, 3, 2.0)
    with pytest.raises(ValueError, match="steps must be a whole number"):
        SamplingSettings("ddim", False, 0, 2.0)
    with pytest.raises(Exception):
        settings.steps = 4                                                  # frozen


def test_per_image_generators_draw_each_row_from_its_own_seed():
    rows = randn((2, 3, 4, 4), [cpu_generator(7), cpu_generator(8)], "cpu", torch.float32)
    assert torch.equal(rows[1:], randn((1, 3, 4, 4), cpu_generator(8), "cpu", torch.float32))
    with pytest.raises(ValueError, match="one per image"):
        randn((3, 3, 4, 4), [cpu_generator(7)], "cpu", torch.float32)


# ---------------------------------------------------------------------------------------------
# Interruption: finished images and the interrupted one, decoded
# ---------------------------------------------------------------------------------------------

def test_interrupt_hands_back_finished_and_partial_images(sd2):
    stop = threading.Event()

    def on_step(p):
        if p.image == 1 and p.step == 2:
            stop.set()

    with pytest.raises(SamplingInterrupted) as caught:
        P.txt2img(sd2, "x", steps=4, seed=3, n=3, width=32, height=32, callback=on_step, should_stop=stop)
    stopped = caught.value
    assert [i.info["ldm_studio"]["seed"] for i in stopped.images] == [3]
    assert len(stopped.partial) == 1 and stopped.partial[0].size == (32, 32)
    assert stopped.partial[0].info["ldm_studio"]["interrupted"] == "interrupted at step 2 of 4"
    assert "Interrupted: interrupted at step 2 of 4" in stopped.partial[0].info["parameters"]


# ---------------------------------------------------------------------------------------------
# Upscale: one plan, the SD x4 noise stream
# ---------------------------------------------------------------------------------------------

def test_upscale_plan_is_what_runs():
    m = tiny_model("ldm_sr")
    settings = SamplingSettings("ddim", False, 7, 1.0, 1.0)
    plan = P.plan_upscale(m.config, 40, 24, settings, tile=16, overlap=4)
    assert (plan.out_width, plan.out_height, plan.latent, plan.tiles) == (160, 96, (24, 40), 6)
    assert plan.steps == len(ddim_timesteps(1000, 7)) == 8           # DDIM runs more than 7 here
    out = P.upscale(m, _photo(40, 24), tile=16, overlap=4, steps=2, seed=0)
    assert out.size == (160, 96) and out.info["ldm_studio"]["tile"] == 16
    with pytest.raises(ValueError, match="at most 16384 px per side"):
        P.plan_upscale(m.config, 5000, 10, settings)
    with pytest.raises(ValueError, match="upscale \\(upscaling\\) cannot run"):
        P.plan_upscale(tiny_model("sd2").config, 40, 24, settings)


def test_sd_x4_noise_augmentation_is_not_the_starting_noise():
    """Defect 1: the augmentation noise was drawn from x_T's seed, so it equalled x_T's first channels."""
    m = tiny_model("sd_x4")
    seen = {}
    real = m.apply_model

    def spy(x, t, cond):
        seen.setdefault("c_concat", cond["c_concat"][0][:1].clone())
        return real(x, t, cond)

    m.apply_model = spy
    lr = _photo(16, 16)
    P.upscale(m, lr, steps=1, seed=5, noise_level=350, guidance_scale=1.0, back_projection=0)
    level = torch.tensor(350)
    abar = m.low_scale_model.sqrt_alphas_cumprod[level] ** 2
    lr_t = torch.from_numpy(np.asarray(lr, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    aug_noise = (seen["c_concat"] - abar.sqrt() * lr_t) / (1 - abar).sqrt()
    x_T = randn((1, 4, 16, 16), cpu_generator(5), "cpu", torch.float32)
    assert not torch.allclose(aug_noise, x_T[:, :3], atol=1e-2)
    assert aug_noise.std() == pytest.approx(1.0, abs=0.25)


# ---------------------------------------------------------------------------------------------
# img2img resize modes (A1111's 0, 1, 2) and the fast upscaler
# ---------------------------------------------------------------------------------------------

def test_resize_modes():
    wide = Image.new("RGB", (40, 20), (200, 0, 0))
    wide.paste((0, 0, 200), (0, 0, 10, 20))                       # a blue band on the left
    assert P.resize_image(wide, 32, 32, "just_resize").size == (32, 32)
    cropped = P.resize_image(wide, 32, 32, 1)                     # cover, centre crop: the band is cut
    assert cropped.size == (32, 32) and np.asarray(cropped)[16, 0, 0] > 150
    filled = np.asarray(P.resize_image(wide, 32, 32, "Resize and fill"))
    assert filled.shape == (32, 32, 3) and (filled[0] == filled[8]).all()   # top filled from the first row
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        P.resize_image(wide, 32, 32, "stretch")


def test_img2img_takes_a_size_and_a_resize_mode(sd2):
    out = P.img2img(sd2, _photo(48, 32), "x", strength=0.5, steps=2, seed=0, width=32, height=32,
                    resize_mode="crop_and_resize")[0]
    assert out.size == (32, 32)


def test_lanczos_upscaler():
    out = P.lanczos(_photo(20, 10), 3)
    assert out.size == (60, 30) and out.info["ldm_studio"]["upscaler"] == "Lanczos"
    with pytest.raises(ValueError, match="at most 64 px"):
        P.lanczos(_photo(20, 10), 4, max_side=64)
