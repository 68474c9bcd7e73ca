"""Semantic synthesis (CompVis' semantic_synthesis256 / 512): the released configs translate, a tiny
model in the original key layout loads key-exact and samples from a label map, bad maps are refused
in words."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core import load_model, pipelines
from core.capabilities import capabilities
from core.checkpoints.compvis_yaml import config_from_yaml
from core.generate import main
from core.models.conditioners import SpatialRescaler, SpatialRescalerConfig
from core.pipelines import read_infotext
from tests.tiny_models import FAMILIES, original_state_dict, tiny_model

# models/ldm/semantic_synthesis256/config.yaml of CompVis/latent-diffusion, as released (data block left out).
SEMANTIC_256 = """
model:
  base_learning_rate: 1.0e-06
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.0015
    linear_end: 0.0205
    log_every_t: 100
    timesteps: 1000
    loss_type: l1
    first_stage_key: image
    cond_stage_key: segmentation
    image_size: 64
    channels: 3
    concat_mode: true
    cond_stage_trainable: true
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 64
        in_channels: 6
        out_channels: 3
        model_channels: 128
        attention_resolutions: [32, 16, 8]
        num_res_blocks: 2
        channel_mult: [1, 4, 8]
        num_heads: 8
    first_stage_config:
      target: ldm.models.autoencoder.VQModelInterface
      params:
        embed_dim: 3
        n_embed: 8192
        ddconfig:
          double_z: false
          z_channels: 3
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult: [1, 2, 4]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
      target: ldm.modules.encoders.modules.SpatialRescaler
      params:
        n_stages: 2
        in_channels: 182
        out_channels: 3
"""


@pytest.fixture(scope="module")
def model():
    return tiny_model("ldm_semantic")


@pytest.fixture(scope="module")
def original_files(model, tmp_path_factory):
    """The tiny model as a CompVis file: model.ckpt (state_dict in the original key layout) + config.yaml."""
    folder = tmp_path_factory.mktemp("semantic")
    torch.save({"state_dict": original_state_dict(model, "ldm_semantic"), "global_step": 1}, folder / "model.ckpt")
    (folder / "config.yaml").write_text(FAMILIES["ldm_semantic"])
    return folder / "model.ckpt", folder / "config.yaml"


def _labels(h=32, w=48) -> np.ndarray:
    labels = np.zeros((h, w), np.uint8)
    labels[:, w // 2:] = 3                                    # two regions: class 0 left, class 3 right
    labels[h // 2:, : w // 4] = 4
    return labels


@pytest.mark.parametrize("text, latent_side", [(SEMANTIC_256, 64), (SEMANTIC_256.replace("64", "128"), 128)])
def test_the_released_configs_translate(text, latent_side):
    cfg = config_from_yaml(text)
    assert cfg.cond_stage == SpatialRescalerConfig(n_stages=2, in_channels=182, out_channels=3)
    assert (cfg.conditioning_key, cfg.task, cfg.image_size) == ("concat", "semantic-ldm", latent_side)
    caps = capabilities(cfg)
    assert (caps.conditioning, caps.tasks, caps.guidance) == ("segmentation", ("semantic",), False)
    assert (caps.factor, caps.grid, caps.native_size) == (4, 16, 4 * latent_side)


def test_spatial_rescaler_is_the_references_interpolation_then_a_1x1_conv():
    """Bilinear x0.5 (align_corners=False) averages 2x2 blocks, so two stages are a 4x4 mean."""
    torch.manual_seed(0)
    rescaler = SpatialRescaler(SpatialRescalerConfig(n_stages=2, in_channels=5, out_channels=3))
    x = torch.rand(2, 5, 16, 24)
    expected = F.conv2d(F.avg_pool2d(x, 4), rescaler.channel_mapper.weight)
    torch.testing.assert_close(rescaler(x), expected, rtol=1e-5, atol=1e-6)
    assert [k for k, _ in rescaler.named_parameters()] == ["channel_mapper.weight"]     # the checkpoint key
    assert list(SpatialRescaler(SpatialRescalerConfig(n_stages=1, in_channels=4)).state_dict()) == []
    with pytest.raises(ValueError, match=r"\(B, 5, H, W\)"):
        rescaler(torch.rand(1, 4, 16, 16))


def test_original_layout_loads_key_exact_and_samples_like_the_model(model, original_files):
    ckpt, yaml_path = original_files
    loaded = load_model(ckpt, config=yaml_path)                           # strict: every key used, none missing
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert loaded.cond_stage_model.channel_mapper.weight.shape == (3, 5, 1, 1)
    ours = pipelines.sample_semantic(model, _labels(), steps=2, seed=3)
    theirs = pipelines.sample_semantic(loaded, _labels(), steps=2, seed=3)
    diff = np.abs(np.asarray(ours[0], np.int16) - np.asarray(theirs[0], np.int16)).max()
    assert diff <= 1


def test_label_map_png_array_and_one_hot_give_the_same_images(model, tmp_path):
    labels = _labels()
    Image.fromarray(labels, mode="L").save(tmp_path / "labels.png")
    one_hot = np.eye(5, dtype=np.float32)[labels].transpose(2, 0, 1)   # the reference's np.eye(n_labels)[seg]
    runs = [pipelines.sample_semantic(model, source, n=2, steps=2, seed=5, batch_size=2)
            for source in (tmp_path / "labels.png", labels, torch.from_numpy(one_hot))]
    pixels = [np.stack([np.asarray(i) for i in images]) for images in runs]
    assert pixels[0].shape == (2, 32, 48, 3)                              # the map's size
    assert np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2])
    record = runs[0][1].info["ldm_studio"]
    assert (record["task"], record["seed"], record["segmentation_classes"]) == ("semantic", 6, [0, 3, 4])
    assert record["segmentation_hash"] == runs[2][1].info["ldm_studio"]["segmentation_hash"]
    other = labels.copy()
    other[:, :8] = 1
    changed = pipelines.sample_semantic(model, other, steps=2, seed=5)[0]
    assert changed.info["ldm_studio"]["segmentation_hash"] != record["segmentation_hash"]
    assert np.abs(np.asarray(changed, np.int16) - pixels[0][0]).max() > 0      # the map conditions the image


@pytest.mark.parametrize("segmentation, message", [
    (np.full((32, 32), 5, np.uint8), r"class ids 5..5, but this model knows 5 classes \(ids 0..4\)"),
    (np.full((32, 32), -1, np.int64), r"class ids -1..-1"),
    (np.zeros((182, 32, 32), np.float32), "has 182 channels, but this model takes 5 classes"),
    (np.zeros((36, 32), np.uint8), r"32x36 .*height 36 is not a multiple of 8"),
    (np.full((32, 32), 0.5, np.float32), "whole class ids"),
    (np.zeros((1, 5, 32, 32), np.float32), r"got shape \(1, 5, 32, 32\)"),
    (Image.new("RGB", (32, 32)), "RGB image; a label map is a single-channel PNG"),
    ("not-a-file.png", "image file not found"),
])
def test_bad_maps_are_refused_in_words(model, segmentation, message):
    with pytest.raises(ValueError, match=message):
        pipelines.sample_semantic(model, segmentation, steps=1)


def test_other_tasks_say_what_the_model_is_for(model):
    with pytest.raises(ValueError, match="conditioned on segmentation; use sample_semantic"):
        pipelines.txt2img(model, "a red circle", steps=1)
    with pytest.raises(ValueError, match="use sample_semantic"):
        pipelines.sample_unconditional(model, steps=1)
    shrinks_too_little = config_from_yaml(SEMANTIC_256.replace("n_stages: 2", "n_stages: 1"))
    caps = capabilities(shrinks_too_little)
    assert caps.tasks == () and "first stage's factor is 4" in caps.why_not


def test_cli_semantic_writes_the_image_and_refuses_a_bad_map(original_files, tmp_path, capsys):
    ckpt, yaml_path = original_files
    Image.fromarray(_labels(), mode="L").save(tmp_path / "labels.png")
    args = ["semantic", "--model", str(ckpt), "--config", str(yaml_path), "--steps", "2", "--seed", "4",
            "--quiet", "--device", "cpu", "--outdir", str(tmp_path / "out")]
    assert main([*args, "--segmentation", str(tmp_path / "labels.png")]) == 0
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == ["00000-4.png"]
    info = read_infotext(written[0])
    assert (info["task"], info["width"], info["height"]) == ("semantic", 48, 32)
    assert info["segmentation_classes"] == [0, 3, 4]
    Image.new("RGB", (32, 32)).save(tmp_path / "colours.png")
    capsys.readouterr()
    assert main([*args, "--segmentation", str(tmp_path / "colours.png")]) == 2
    assert "single-channel PNG" in capsys.readouterr().err
    assert main([*args, "--segmentation", str(tmp_path / "labels.png"), "--cfg-scale", "3"]) == 2
