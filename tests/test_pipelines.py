"""core.pipelines on tiny models: composition (pipeline == sampler + decoder + the reference's
uint8 conversion), seeds, defaults, conditioning layouts of the dedicated models, inpainting
guarantees and reports, progress / interruption, and bad inputs."""

import dataclasses
import importlib
import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core import load_model, save_model, speed
from core import pipelines as P
from core.models.conditioners import LayoutEmbedderConfig
from core.models.diffusion import LatentDiffusion
from core.pipelines.images import load_image, tensor_to_images
from core.pipelines.inpaint import _match_and_measure
from core.pipelines.masks import fill_holes
from core.samplers import SamplingInterrupted, sample
from core.samplers.noise import stream_seed
from tests.tiny_models import fp16_overflowing_sr_model, tiny_model


@pytest.fixture(scope="module")
def sd2():
    return tiny_model("sd2")


def _photo(w=64, h=64, seed=0) -> Image.Image:
    rng = np.random.RandomState(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.array([1.0, 0.5, 0.2])
    return Image.fromarray((base + rng.rand(h, w, 3) * 40).clip(0, 255).astype(np.uint8))


def _mask(w=64, h=64, box=(20, 16, 44, 40)) -> Image.Image:
    a = np.zeros((h, w), np.uint8)
    a[box[1]:box[3], box[0]:box[2]] = 255
    return Image.fromarray(a)


def _capture_unet(m):
    """Record the UNet's inputs (x, y) on every call."""
    seen = []
    hook = m.model.diffusion_model.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append((args[0].clone(), kwargs.get("y"))), with_kwargs=True)
    return seen, hook


# ---------------------------------------------------------------------------------------------
# Composition, seeds, defaults
# ---------------------------------------------------------------------------------------------

def test_txt2img_equals_sampler_then_decoder_then_truncation(sd2):
    image = P.txt2img(sd2, "a red circle", "blurry", steps=3, sampler="ddim", seed=5, width=64, height=32)[0]
    # The same thing by hand: sample(), decode_first_stage, clamp((x+1)/2)*255 truncated (FACTS.md 7).
    c, u = sd2.get_learned_conditioning(["a red circle"]), sd2.get_learned_conditioning(["blurry"])
    z = sample(sd2, c, u, guidance_scale=7.5, steps=3, sampler="ddim", shape=(1, 4, 4, 8), seed=5)
    x = sd2.decode_first_stage(z)[0].permute(1, 2, 0).numpy()
    expected = (np.clip((x + 1) / 2, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(image), expected)
    assert image.size == (64, 32)


def test_output_conversion_truncates():
    x = torch.tensor([254.9 / 255, 0.5 / 255, 1.2, -0.3]) * 2 - 1           # -> 254, 0, 255, 0
    img = tensor_to_images(x.view(1, 1, 2, 2).expand(1, 3, 2, 2))[0]
    assert np.asarray(img)[..., 0].ravel().tolist() == [254, 0, 255, 0]


def test_seeds_per_image_and_determinism(sd2):
    two = P.txt2img(sd2, "a cat", steps=2, seed=100, n=2)
    second = P.txt2img(sd2, "a cat", steps=2, seed=101)[0]
    assert [im.info["ldm_studio"]["seed"] for im in two] == [100, 101]
    assert np.array_equal(np.asarray(two[1]), np.asarray(second))           # image i == seed + i alone
    assert not np.array_equal(np.asarray(two[0]), np.asarray(two[1]))
    rand = P.txt2img(sd2, "a cat", steps=2)[0]                                # random seed, recorded
    again = P.txt2img(sd2, "a cat", steps=2, seed=rand.info["ldm_studio"]["seed"])[0]
    assert np.array_equal(np.asarray(rand), np.asarray(again))


def test_defaults_from_metadata_and_reference(tmp_path, sd2):
    meta = {"ldm_studio_defaults": json.dumps({"sampler": "euler", "karras": True, "steps": 2,
                                               "guidance_scale": 3.5, "width": 32, "height": 48})}
    m = load_model(save_model(sd2, tmp_path / "m.safetensors", dtype=None, metadata=meta))
    info = P.txt2img(m, "x", seed=0)[0].info["ldm_studio"]
    assert (info["sampler"], info["karras"], info["steps"], info["guidance_scale"], info["width"],
            info["height"]) == ("euler", True, 2, 3.5, 32, 48)
    # A different sampler chosen by the caller drops the file's Karras choice and its eta.
    assert P.txt2img(m, "x", seed=0, sampler="ddim")[0].info["ldm_studio"]["karras"] is False
    assert P.model_defaults(sd2).guidance_scale == 7.5                       # eps model: SD1 / LDM
    assert P.model_defaults(tiny_model("sd2_v")).guidance_scale == 9.0       # v model: SD2
    assert P.model_defaults(tiny_model("ldm_sr")).eta == 1.0                 # LDM-SR notebook


def test_size_grid_and_limits(sd2):
    assert P.size_multiple(sd2) == 16                                         # f=8 x 2 UNet levels
    with pytest.raises(ValueError, match=r"width 50 is not a multiple of 16.*48 or 64"):
        P.txt2img(sd2, "x", steps=1, width=50, height=64)
    with pytest.raises(ValueError, match="nearest valid height: 16"):
        P.txt2img(sd2, "x", steps=1, width=64, height=8)
    with pytest.raises(ValueError, match="too large"):
        P.txt2img(sd2, "x", steps=1, width=4096, height=64)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"), ({"steps": -3}, "steps"), ({"steps": 2.5}, "steps"),
    ({"guidance_scale": float("nan")}, "guidance_scale"), ({"guidance_scale": float("inf")}, "guidance_scale"),
    ({"sampler": "euler", "eta": 0.5}, "eta applies to the 'ddim'"),
    ({"n": 0}, "n \\(the number"), ({"seed": "abc"}, "seed"), ({"seed": 2 ** 64}, "seed"),
])
def test_bad_sampling_arguments(sd2, kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.txt2img(sd2, "x", **{"steps": 2, **kwargs})


def test_prompts(sd2):
    with pytest.warns(UserWarning, match="empty"):
        P.txt2img(sd2, "", steps=1, seed=0)
    P.txt2img(sd2, "word " * 200, steps=1, seed=0)                          # 75-token chunks (A1111)
    with pytest.warns(UserWarning, match="'nope'"):                          # a sampler we lack: the default
        assert P.txt2img(sd2, "x", steps=1, sampler="nope", seed=0)[0].info["ldm_studio"]["sampler"] == "ddim"
    with pytest.warns(UserWarning, match="Karras"):                          # DDIM takes no schedule type
        P.txt2img(sd2, "x", steps=1, sampler="ddim", karras=True, seed=0)
    with pytest.raises(ValueError, match="prompt must be a string"):
        P.txt2img(sd2, 42, steps=1)
    # Display names work too: what the infotext says can be fed back.
    assert P.txt2img(sd2, "x", steps=1, sampler="Euler a", seed=0)[0].info["ldm_studio"]["sampler"] == "euler_a"


def test_wrong_model_for_the_task(sd2):
    with pytest.raises(ValueError, match=r"upscale \(upscaling\) cannot run this model.*use txt2img"):
        P.upscale(sd2, _photo(16, 16), steps=1)
    with pytest.raises(ValueError, match=r"txt2img \(text to image\) cannot run this model.*use upscale"):
        P.txt2img(tiny_model("ldm_sr"), "x", steps=1)
    with pytest.raises(ValueError, match="use sample_class"):
        P.txt2img(tiny_model("ldm_class"), "x", steps=1)
    with pytest.raises(ValueError, match=r"sample_class \(class-conditional sampling\) cannot run"):
        P.sample_class(sd2, 1, steps=1)
    for family in ("sd_x4", "sd2_inpaint"):                  # text models that need a dense input
        with pytest.raises(ValueError, match=r"txt2img \(text to image\) cannot run this model"):
            P.txt2img(tiny_model(family), "x", steps=1)
    with pytest.raises(ValueError, match=r"inpaint \(inpainting\) cannot run this model"):
        P.inpaint(tiny_model("ldm_sr"), _photo(), _mask(), steps=1)


def test_images_too_large_for_the_mode(sd2):
    wide = Image.new("RGB", (2064, 16))                      # 2064 > 256 latent px x 8
    with pytest.raises(ValueError, match="too large for inpainting the whole picture.*only_masked"):
        P.inpaint(sd2, wide, _mask(2064, 16, box=(0, 0, 8, 8)), "x", steps=1)
    with pytest.raises(ValueError, match="too large for img2img"):
        P.img2img(sd2, wide, "x", steps=1)
    with pytest.raises(ValueError, match="at most 16384 px per side"):
        P.upscale(tiny_model("ldm_sr"), Image.new("RGB", (4100, 4)), steps=1)


# ---------------------------------------------------------------------------------------------
# Input images
# ---------------------------------------------------------------------------------------------

def test_load_image_modes(tmp_path):
    gray = Image.fromarray(np.full((6, 4), 77, np.uint8), mode="L")
    assert np.asarray(load_image(gray))[0, 0].tolist() == [77, 77, 77]
    rgba = Image.new("RGBA", (4, 4), (200, 0, 0, 0))                         # fully transparent
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [255, 255, 255]    # composited on white
    sixteen = Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16))        # a 16-bit PNG's mode
    sixteen.save(tmp_path / "16.png")
    assert np.asarray(load_image(tmp_path / "16.png"))[0, 0].tolist() == [127, 127, 127]   # 32767/257
    assert np.asarray(load_image(np.full((3, 3), 1000, np.uint16) * 65))[0, 0, 0] == 253    # 65000/257
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): width and height swap.
    photo = Image.new("RGB", (8, 4), (0, 0, 0))
    photo.paste((255, 0, 0), (0, 0, 4, 2))                                  # red block, top-left
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(tmp_path / "rot.jpg", exif=exif, quality=100, subsampling=0)
    upright = load_image(tmp_path / "rot.jpg")
    assert upright.size == (4, 8)
    assert np.asarray(upright)[1, 3, 0] > 200 and np.asarray(upright)[6, 0, 0] < 60   # now top-right
    with pytest.raises(ValueError, match="not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read"):
        load_image(tmp_path / "bad.png")


def test_img2img_keeps_size_and_checks_strength(sd2):
    gray = _photo(72, 56).convert("L")                                       # off-grid size, grayscale
    out = P.img2img(sd2, gray, "a cat", strength=0.5, steps=4, seed=1)[0]
    assert out.size == (72, 56) and out.info["ldm_studio"]["strength"] == 0.5
    for bad in (0, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="strength"):
            P.img2img(sd2, gray, "a cat", strength=bad, steps=2)
    small = P.img2img(sd2, gray, "a cat", strength=0.5, steps=2, seed=1, width=32, height=32)[0]
    assert small.size == (32, 32)


# ---------------------------------------------------------------------------------------------
# Inpainting
# ---------------------------------------------------------------------------------------------

def test_inpaint_blending_keeps_outside_and_reports(sd2):
    image, mask = _photo(), _mask()
    out = P.inpaint(sd2, image, mask, "a cat", steps=3, seed=2, mask_blur=4)[0]
    inside = np.asarray(mask) > 127
    assert np.array_equal(np.asarray(out)[~inside], np.asarray(image)[~inside])      # bit-exact outside
    assert not np.array_equal(np.asarray(out)[inside], np.asarray(image)[inside])
    info = out.info["ldm_studio"]
    assert info["delta_e_formula"] == "CIEDE2000" and "outside_psnr" not in info
    assert 0 <= info["border_delta_e"] <= info["border_delta_e_raw"]
    assert info["mask_fraction"] == pytest.approx(inside.mean())
    assert (info["mask_blur"], info["inpaint_area"], info["masked_content"]) == (4, "Whole picture", "original")
    json.dumps(info)


def test_color_match_removes_a_constant_shift():
    rng = np.random.RandomState(0)
    original = rng.rand(32, 32, 3).astype(np.float32) * 0.6 + 0.2
    hard = np.zeros((32, 32), bool)
    hard[8:24, 8:24] = True
    ring = np.zeros_like(hard)
    ring[4:28, 4:28] = True
    ring &= ~hard
    shifted = original + np.array([0.1, -0.05, 0.0], np.float32)             # a decoder-like tone shift
    r = _match_and_measure(shifted, original, ring, hard, color_match=True)
    assert r["border_delta_e_raw"] > 3 and r["border_delta_e"] < 1e-3
    assert r["color_offset"] == pytest.approx([-0.1, 0.05, 0.0], abs=1e-6)
    assert _match_and_measure(shifted, original, ring, hard, False)["border_delta_e"] == r["border_delta_e_raw"]


def test_sd_inpainting_model_input_layout():
    m = tiny_model("sd2_inpaint")
    image, mask = _photo(), _mask(box=(13, 5, 45, 29))
    seen, hook = _capture_unet(m)
    P.inpaint(m, image, mask, "a cat", steps=1, seed=0, guidance_scale=1.0)
    hook.remove()
    x_in = seen[0][0]                                                        # (1, 9, 8, 8)
    assert x_in.shape[1] == 9
    # Reference layout (FACTS.md 9): [z, mask nearest-resized (1 = repaint), latent of image * (mask < 0.5)].
    img = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    msk = torch.from_numpy((np.asarray(mask) > 127).astype(np.float32))[None, None]
    assert torch.equal(x_in[:, 4:5], F.interpolate(msk, size=(8, 8), mode="nearest"))
    assert torch.allclose(x_in[:, 5:], m.encode_first_stage(img * (msk < 0.5)), atol=1e-5)


def test_ldm_inpainting_model_input_layout():
    m = tiny_model("ldm_inpaint")
    image, mask = _photo(32, 32), _mask(32, 32, box=(8, 4, 24, 20))
    seen, hook = _capture_unet(m)
    P.inpaint(m, image, mask, steps=1, seed=0)
    hook.remove()
    x_in = seen[0][0]                                                        # (1, 7, 8, 8)
    img01 = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
    msk = torch.from_numpy((np.asarray(mask) > 127).astype(np.float32))[None, None]
    # [z, latent of (1 - mask) * image mapped to [-1, 1], mask * 2 - 1] (inpainting_big).
    assert torch.allclose(x_in[:, 3:6], m.encode_first_stage((1 - msk) * img01 * 2 - 1), atol=1e-5)
    assert torch.equal(x_in[:, 6:7], F.interpolate(msk, size=(8, 8), mode="nearest") * 2 - 1)


def test_inpaint_only_masked_runs_at_model_size(sd2):
    image, mask = _photo(128, 96), _mask(128, 96, box=(70, 40, 82, 52))
    seen, hook = _capture_unet(sd2)
    out = P.inpaint(sd2, image, mask, "a cat", steps=1, seed=0, inpaint_area="only_masked", padding=8,
                    width=32, height=32)[0]
    hook.remove()
    assert seen[0][0].shape[-2:] == (4, 4)                                   # 32 px at f=8, not 128x96
    inside = np.asarray(mask) > 127
    assert out.size == (128, 96)
    assert np.array_equal(np.asarray(out)[~inside], np.asarray(image)[~inside])
    assert out.info["ldm_studio"]["inpaint_area"] == "Only masked" and out.info["ldm_studio"]["padding"] == 8


def test_inpaint_masks_and_options(sd2):
    image = _photo()
    with pytest.raises(ValueError, match="mask is empty"):
        P.inpaint(sd2, image, Image.new("L", (64, 64), 0), "x", steps=1)
    with pytest.warns(UserWarning, match="covers the whole image"):
        out = P.inpaint(sd2, image, Image.new("L", (64, 64), 255), "x", steps=1, seed=0)[0]
    assert out.info["ldm_studio"]["border_delta_e"] is None
    with pytest.warns(UserWarning, match="resizing the mask"):
        P.inpaint(sd2, image, _mask().resize((32, 32)), "x", steps=1, seed=0)
    with pytest.raises(ValueError, match="inpaint_area"):
        P.inpaint(sd2, image, _mask(), "x", steps=1, inpaint_area="everything")
    # The whole picture at another processing size (A1111's "resize to"), pasted back at its own size.
    small = P.inpaint(sd2, image, _mask(), "x", steps=1, seed=0, width=32, height=32)[0]
    assert small.size == (64, 64) and "Size: 32x32" in small.info["parameters"]
    outside = np.asarray(_mask()) == 0
    assert np.array_equal(np.asarray(small)[outside], np.asarray(image)[outside])
    with pytest.raises(ValueError, match="multiple"):
        P.inpaint(sd2, image, _mask(), "x", steps=1, width=30, height=32)
    with pytest.raises(ValueError, match="takes no prompt"):
        P.inpaint(tiny_model("ldm_inpaint"), image, _mask(), "a cat", steps=1)
    for content in ("fill", "latent_noise", "latent_nothing"):
        res = P.inpaint(sd2, image, _mask(), "x", steps=1, seed=0, masked_content=content)[0]
        assert res.info["ldm_studio"]["masked_content"] == content.replace("_", " ")


def test_fill_holes_takes_the_surrounding_colour():
    image = np.zeros((16, 16, 3), np.float32) + np.array([0.2, 0.4, 0.6], np.float32)
    hard = np.zeros((16, 16), np.float32)
    hard[4:12, 4:12] = 1
    image[4:12, 4:12] = 1.0                                                  # whatever was there
    assert np.allclose(fill_holes(image, hard), [0.2, 0.4, 0.6], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Upscaling conditioning, other conditioning modes
# ---------------------------------------------------------------------------------------------

def test_ldm_sr_concatenates_the_low_res_image():
    m = tiny_model("ldm_sr")
    lr = _photo(20, 12)                                                      # off-grid: padded, cropped
    seen, hook = _capture_unet(m)
    out = P.upscale(m, lr, steps=1, seed=0)
    hook.remove()
    assert out.size == (80, 48) and out.info["ldm_studio"]["upscale"] == 4.0
    expected = torch.from_numpy(np.asarray(lr, np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert torch.allclose(seen[0][0][0, 3:6, :12, :20], expected, atol=1e-6)


def _box_down(a: np.ndarray, f: int) -> np.ndarray:
    h, w, c = a.shape
    return a.reshape(h // f, f, w // f, f, c).astype(np.float64).mean(axis=(1, 3))


def test_back_projection_restores_the_input_and_is_banded_exactly(monkeypatch):
    U = importlib.import_module("core.pipelines.upscale")          # the module (the package exports the function)
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 3, 10, 7, generator=g) * 2 - 1
    x = F.interpolate(lr, scale_factor=4, mode="nearest") + 0.3 * torch.randn(1, 3, 40, 28, generator=g)
    error = lambda y: (F.avg_pool2d(y, 4) - lr).abs().mean().item()          # noqa: E731
    once, twice = U.back_project(x, lr, 1), U.back_project(x, lr, 2)
    assert error(U.back_project(x, lr, 8)) < error(twice) < error(once) < 0.3 * error(x)   # converges to lr
    assert torch.equal(U.back_project(x, lr, 0), x.float())
    monkeypatch.setattr(U, "BACK_PROJECTION_BAND", 3)                            # 4 bands with their halos
    assert torch.allclose(U.back_project(x, lr, 2), twice, atol=1e-6)


def test_upscale_back_projection_default_argument_and_record(tmp_path):
    m = tiny_model("ldm_sr")
    lr = _photo(16, 12)
    plain = np.asarray(P.upscale(m, lr, steps=1, seed=0), np.float64)
    projected = P.upscale(m, lr, steps=1, seed=0, back_projection=3)
    target = np.asarray(lr, np.float64)
    gap = lambda a: np.abs(_box_down(a, 4) - target).mean()                   # noqa: E731
    assert gap(np.asarray(projected, np.float64)) < 0.1 * gap(plain)
    assert projected.info["ldm_studio"]["back_projection"] == 3
    assert "Back-projection: 3" in projected.info["parameters"]
    assert "Back-projection" not in P.upscale(m, lr, steps=1, seed=0).info["parameters"]
    # A file's defaults ask for it; the caller's 0 turns it off.
    path = tmp_path / "sr.safetensors"
    save_model(m, path, dtype=None, metadata={"ldm_studio_defaults": json.dumps({"back_projection": 3})})
    stored = load_model(path)
    with speed.plain_kernels():    # pixel-exact: the same kernels as m (packed ones round differently)
        assert np.array_equal(np.asarray(P.upscale(stored, lr, steps=1, seed=0)), np.asarray(projected))
        assert np.array_equal(np.asarray(P.upscale(stored, lr, steps=1, seed=0, back_projection=0)), plain)
    for bad in (-1, 17, 1.5, True):
        with pytest.raises(ValueError, match=r"back_projection must be a whole number in \[0, 16\]"):
            P.upscale(m, lr, steps=1, back_projection=bad)


def test_upscale_scale_below_the_model_factor_resizes_its_result():
    m = tiny_model("ldm_sr")
    lr = _photo(16, 12)
    full = P.upscale(m, lr, steps=1, seed=0)
    half = P.upscale(m, lr, steps=1, seed=0, scale=2.5)
    assert full.size == (64, 48) and half.size == (40, 30)
    expected = full.resize((40, 30), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(half), np.asarray(expected))
    assert half.info["ldm_studio"]["upscale"] == 2.5 and "Size: 40x30" in half.info["parameters"]
    for bad in (1, 4.5, 0, "2", True):
        with pytest.raises(ValueError, match=r"scale must be a number in \(1, 4\]"):
            P.upscale(m, lr, steps=1, scale=bad)


def test_sd_x4_noise_augmentation_and_level():
    m = tiny_model("sd_x4")
    lr = _photo(16, 16)
    seen, hook = _capture_unet(m)
    P.upscale(m, lr, steps=1, seed=9, noise_level=30, guidance_scale=1.0)
    hook.remove()
    x_in, y = seen[0]
    assert y.tolist() == [30]                                                # level as the class label
    # x_aug = sqrt(abar[n]) lr + sqrt(1 - abar[n]) noise, low_scale schedule linear 1e-4..2e-2 over 1000.
    betas = torch.linspace(1e-4 ** 0.5, 2e-2 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[30].float()
    lr_t = torch.from_numpy(np.asarray(lr, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    noise = torch.randn(lr_t.shape, generator=torch.Generator().manual_seed(stream_seed(9, "noise_augmentation")))
    assert torch.allclose(x_in[:, 4:7], abar.sqrt() * lr_t + (1 - abar).sqrt() * noise, atol=1e-5)
    with pytest.raises(ValueError, match="noise_level"):
        P.upscale(m, lr, steps=1, noise_level=351)


def test_class_layout_unconditional():
    mc = tiny_model("ldm_class")
    img = P.sample_class(mc, 3, n=2, steps=2, seed=4)
    assert [i.info["ldm_studio"]["class_label"] for i in img] == [3, 3]
    with pytest.raises(ValueError, match="no null class"):
        P.sample_class(mc, 3, steps=2, guidance_scale=3.0)
    with pytest.raises(ValueError, match="class_label must be in"):
        P.sample_class(mc, 11, steps=2)
    cfg = dataclasses.replace(tiny_model("ldm_layout").config,
                              cond_stage=LayoutEmbedderConfig(embed_dim=32, n_classes=5))
    ml = LatentDiffusion(cfg).eval()
    layout = [(1, 0.1, 0.1, 0.5, 0.5), (4, 0.5, 0.5, 0.9, 0.8)]
    out = P.sample_layout(ml, layout, steps=2, seed=1)[0]
    assert P.read_infotext(out)["layout"] == [[1, 0.1, 0.1, 0.5, 0.5], [4, 0.5, 0.5, 0.9, 0.8]]
    with pytest.raises(ValueError, match="has no area"):
        P.sample_layout(ml, [(1, 0.6, 0.1, 0.5, 0.5)], steps=1)
    mu = tiny_model("ldm_uncond")
    assert len(P.sample_unconditional(mu, n=2, steps=2, seed=0)) == 2
    assert P.img2img(mu, _photo(32, 32), "", strength=0.5, steps=2, seed=0)[0].size == (32, 32)


# ---------------------------------------------------------------------------------------------
# Progress, interruption, float16 safety
# ---------------------------------------------------------------------------------------------

def test_progress_and_preview(sd2):
    reports = []
    P.txt2img(sd2, "x", steps=4, sampler="euler", seed=0, n=2, callback=reports.append)
    sampling = [r for r in reports if r.stage == "sample"]
    assert [(r.image, r.step) for r in sampling] == [(i, s) for i in range(2) for s in range(1, 5)]
    assert sampling[-1].fraction == 1.0
    preview = sampling[0].preview()
    assert preview.size == (8, 8) and preview.mode == "RGB"


def test_interruption_returns_finished_images(sd2):
    stop = threading.Event()

    def callback(progress):
        if progress.image == 1 and progress.step == 1:
            stop.set()

    with pytest.raises(SamplingInterrupted) as caught:
        P.txt2img(sd2, "x", steps=3, seed=0, n=3, callback=callback, should_stop=stop)
    assert len(caught.value.images) == 1 and caught.value.images[0].info["ldm_studio"]["seed"] == 0


def test_fp16_vae_overflow_falls_back_to_fp32():
    m, z = fp16_overflowing_sr_model()
    reference = m.decode_first_stage(z).float()
    m.first_stage_model.half()
    assert not torch.isfinite(m.decode_first_stage(z).float()).all()
    with pytest.warns(UserWarning, match="decoding again in float32"):
        x = P.vae.decode(m, z)
    assert torch.isfinite(x).all() and torch.allclose(x, reference, atol=1e-2)
    assert next(m.first_stage_model.parameters()).dtype == torch.float16     # put back as it was
