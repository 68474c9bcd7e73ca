"""LoRA training (core/train/lora.py, lora_network.py): 20 steps on tiny SD1 / SD2 models over a folder
of captioned images, exported in kohya's format, read back by core.lora.apply_lora into a fresh base
model: the same UNet and text-encoder outputs as the trained adapters; the file's names are the
kohya spellings of the one layer mapping (core/checkpoints/lora_keys.py) and its metadata kohya's.
Also: resume, the CLI (folder and zip), the Train tab's LoRA choice, and bad inputs."""
import json
import warnings
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from core import load_model, save_model
from core.checkpoints.lora_keys import kohya_layers, lora_targets
from core.lora import LoraTag, apply_lora, use_loras
from core.train import train
from core.train.__main__ import main
from core.train.checkpoint import load_checkpoint
from core.train.lora import base_version, export_lora, load_lora_config, make_lora_config
from core.train.lora_network import LoraNetwork, select_layers
from tests.tiny_models import example_inputs, tiny_model

CAPTIONS = ["a photo of sks, red", "a photo of sks, blue", "sks on grass", "a drawing of sks"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _base(tmp_path, family: str):
    path = tmp_path / f"{family}.safetensors"
    save_model(tiny_model(family), path, dtype=torch.float32)
    return path


def _images(folder, n: int = 4, side: int = 64):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])
    return folder


def _config(base, data, steps=20, **kw):
    kw = {"rank": 4, "alpha": 2.0, "layers": ["attn"], "batch_size": 2, "lr": 2e-3, "sample_steps": 1,
          "n_samples": 1, "log_every": 5, "warmup_steps": 0, **kw}
    return make_lora_config(str(base), str(data), steps=steps, **kw)


def _outputs(m, family):
    x, t, _ = example_inputs(m, family)
    with torch.no_grad():
        cond = m.get_learned_conditioning(["a photo of sks", ""])
        context = torch.cat([cond["c_crossattn"][0].flatten(1), cond["y"]], 1) if isinstance(cond, dict) else cond
        return context, m.apply_model(x, t, cond)


def _in_memory_and_merged(tmp_path, base, run: str, family: str, out):
    """(base outputs, outputs with the run's adapters attached, outputs with the exported file merged)."""
    ckpt = load_checkpoint(tmp_path / "runs" / run / "checkpoints" / "last.pt")
    lc = load_lora_config(ckpt["config"]).lora
    m = load_model(base, dtype=torch.float32)
    base_outputs = _outputs(m, family)
    network = LoraNetwork(m, select_layers(m, lc.layers), lc.rank, lc.alpha)
    network.load_kohya_state_dict(ckpt["model"])
    network.attach(m)
    trained = _outputs(m, family)
    network.detach(m)
    assert torch.equal(_outputs(m, family)[1], base_outputs[1])        # detached: the base model again
    merged = load_model(base, dtype=torch.float32)
    assert apply_lora(merged, out, 1.0) == len(network.adapters)
    return base_outputs, trained, _outputs(merged, family)


@pytest.mark.parametrize("family", ["sd1", pytest.param("sd2", marks=pytest.mark.slow)])
def test_trained_lora_exports_in_kohya_format_and_loads_back_identically(tmp_path, family):
    base = _base(tmp_path, family)
    cfg = _config(base, _images(tmp_path / "pics"), layers=["attn", "ff", "text"])
    assert train("lora", cfg, name="sks", runs_dir=tmp_path / "runs") == "finished"
    out = export_lora(tmp_path / "runs" / "sks", tmp_path / "weights" / "lora" / "sks.safetensors")
    rows = [json.loads(line) for line in (tmp_path / "runs" / "sks" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20] and all(np.isfinite(r["loss"]) for r in rows)
    assert (tmp_path / "runs" / "sks" / "samples" / "step_0000020.png").is_file()

    # The trained adapters in memory (from the run's checkpoint) around a fresh base model, against
    # the exported file merged by apply_lora at weight 1: the same outputs.
    (base_context, base_eps), (context, eps), (merged_context, merged_eps) = \
        _in_memory_and_merged(tmp_path, base, "sks", family, out)
    assert (eps - base_eps).abs().max() > 1e-3 and (context - base_context).abs().max() > 1e-3   # it learned
    torch.testing.assert_close(merged_context, context, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged_eps, eps, rtol=1e-5, atol=1e-6)

    # kohya's names and metadata, so kohya / A1111 / diffusers read the file as one of theirs.
    with safe_open(str(out), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    assert keys == {f"{n}.{s}" for n in names for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    m = load_model(base, dtype=torch.float32)
    table = lora_targets(m)
    assert names <= set(table) and all(n.startswith(("lora_unet_down_blocks_", "lora_unet_mid_block_",
                                                     "lora_unet_up_blocks_", "lora_te_text_model_")) for n in names)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k" in names
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj" in names
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert ("lora_te_text_model_encoder_layers_1_mlp_fc2" in names) == (family == "sd1")    # SD2: penultimate
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "2.0" and meta["ss_steps"] == "20"
    assert meta["ss_base_model_version"] == {"sd1": "sd_v1", "sd2": "sd_v2"}[family]
    assert meta["ss_v2"] == str(family == "sd2") and meta["ss_resolution"] == "(64, 64)"
    assert json.loads(meta["ss_tag_frequency"]) == {"pics": {"a photo of sks": 2, "red": 1, "blue": 1,
                                                             "sks on grass": 1, "a drawing of sks": 1}}
    # <lora:sks:1> picks it from weights/lora.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert use_loras(m, [LoraTag("sks")], tmp_path / "weights" / "lora").startswith("sks: ")


def test_sdxl_lora_uses_sgm_names_and_both_text_encoders(tmp_path):
    base = _base(tmp_path, "sdxl")
    cfg = _config(base, _images(tmp_path / "pics", n=2), steps=3, layers=["attn", "text"], image_size=64)
    assert train("lora", cfg, name="xl", runs_dir=tmp_path / "runs") == "finished"
    out = export_lora(tmp_path / "runs" / "xl", tmp_path / "xl.safetensors")
    base_outputs, trained, merged = _in_memory_and_merged(tmp_path, base, "xl", "sdxl", out)
    assert (trained[1] - base_outputs[1]).abs().max() > 1e-4
    for a, b in zip(merged, trained):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with safe_open(str(out), "pt") as f:
        names = {k.split(".")[0] for k in f.keys()}
        assert f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    assert {n.split("_")[1] for n in names} == {"unet", "te1", "te2"}
    assert all(n.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_",
                             "lora_te1_text_model_", "lora_te2_text_model_")) for n in names)


def test_kohya_names_are_the_inverse_of_the_loading_table():
    """SD1: diffusers paths; SDXL: sgm (CompVis) paths and lora_te1_ / lora_te2_, as kohya writes them."""
    for family, prefixes in (("sd1", ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_",
                                      "lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_",
                                      "lora_te_")),
                             ("sdxl", ("lora_unet_input_blocks_", "lora_unet_middle_block_",
                                       "lora_unet_output_blocks_", "lora_unet_time_embed_", "lora_unet_label_emb_",
                                       "lora_unet_out_", "lora_te1_", "lora_te2_"))):
        m = tiny_model(family)
        table, layers = lora_targets(m), kohya_layers(m)
        assert all(table[layer.name] == layer.target == table[layer.path] for layer in layers)
        assert all(layer.name.startswith(prefixes) for layer in layers), family
        assert len({layer.target for layer in layers}) == len(layers)           # one name per weight
    versions = {family: base_version(tiny_model(family)) for family in ("sd1", "sd2", "sd2_v", "sdxl", "ldm_txt2img")}
    assert versions == {"sd1": ("sd_v1", False), "sd2": ("sd_v2", True), "sd2_v": ("sd_v2_v", True),
                        "sdxl": ("sdxl_base_v1-0", False), "ldm_txt2img": ("ldm_studio_transformer", False)}


def test_resume_continues_exactly(tmp_path):
    base, data = _base(tmp_path, "sd1"), _images(tmp_path / "pics")
    cfg = _config(base, data, steps=6, ckpt_every=2)
    assert train("lora", cfg, name="whole", runs_dir=tmp_path / "runs") == "finished"
    assert train("lora", cfg, name="cut", runs_dir=tmp_path / "runs", max_steps=3) == "stopped"
    assert train("lora", None, name="cut", runs_dir=tmp_path / "runs", resume=True) == "finished"
    whole, cut = (load_checkpoint(tmp_path / "runs" / n / "checkpoints" / "last.pt") for n in ("whole", "cut"))
    assert cut["step"] == 6 and whole["model"].keys() == cut["model"].keys()
    for key, value in whole["model"].items():
        torch.testing.assert_close(cut["model"][key], value, rtol=0, atol=1e-6)


def test_cli_trains_from_a_zip_and_exports(tmp_path, capsys):
    base, data = _base(tmp_path, "sd2"), _images(tmp_path / "pics", n=2)
    with zipfile.ZipFile(tmp_path / "pics.zip", "w") as z:
        for p in sorted(data.iterdir()):
            z.write(p, p.name)
    out = tmp_path / "lora" / "zipped.safetensors"
    argv = ["lora", "--base", str(base), "--data", str(tmp_path / "pics.zip"), "--rank", "2", "--layers", "attn,conv",
            "--steps", "2", "--runs-dir", str(tmp_path / "runs"), "--name", "zipped", "--out", str(out)]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert (tmp_path / "runs" / "zipped" / "data" / "0.png").is_file()
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight" in f.keys()
        assert tuple(f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight").shape) == (2, 32, 3, 3)
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "2.0"}
    assert main(["export", str(tmp_path / "runs" / "zipped"), "--out", str(tmp_path / "again.safetensors")]) == 0
    assert main(["lora", "--base", str(base), "--runs-dir", str(tmp_path / "runs")]) == 1
    assert "give --base (the text-to-image model) and --data" in capsys.readouterr().err


def test_bad_inputs_have_clear_messages(tmp_path):
    base, data = _base(tmp_path, "sd1"), _images(tmp_path / "pics", n=1)
    with pytest.raises(ValueError, match="lora.rank must be a whole number >= 1, got 0"):
        _config(base, data, rank=0)
    with pytest.raises(ValueError, match="lora.alpha must be > 0"):
        _config(base, data, alpha=-1.0)
    with pytest.raises(ValueError, match=r"lora.layers must name some of \['attn', 'ff', 'proj', 'conv', 'text'\]"):
        _config(base, data, layers=["attention"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images .* under .*empty"):
        _config(base, tmp_path / "empty")
    with pytest.raises(ValueError, match="image folder .*missing does not exist"):
        _config(base, tmp_path / "missing")
    sr = _base(tmp_path, "ldm_sr")
    with pytest.raises(ValueError, match=r"ldm_sr.safetensors is a 'upscale-ldm' model conditioned on lr_image: "
                                         "a LoRA is trained for a text-to-image model"):
        train("lora", _config(sr, data, steps=1), name="sr", runs_dir=tmp_path / "runs")
    with pytest.raises(ValueError, match="rank 40 exceeds layer"):
        train("lora", _config(base, data, steps=1, rank=40), name="big", runs_dir=tmp_path / "runs")
    with pytest.raises(ValueError, match=r"this config trains a LoRA: run `python -m core.train lora"):
        train("ldm", _config(base, data, steps=1), name="wrong", runs_dir=tmp_path / "runs")


def test_a_lora_trained_in_the_train_tab_loads_back(tmp_path):
    """The tab's LoRA choice starts a real background `python -m core.train lora` run; "Use this
    model" writes weights/lora/NAME.safetensors, which apply_lora merges into the base model."""
    import gradio as gr

    from tests.test_runs import _wait_for
    from ui import train as tab
    from ui.settings import AppSettings
    from ui.studio import Studio

    settings = AppSettings(weights_dir=tmp_path / "weights", outputs_dir=tmp_path / "outputs",
                           runs_dir=tmp_path / "runs", data_root=tmp_path / "data")
    (tmp_path / "weights").mkdir()
    save_model(tiny_model("sd1"), tmp_path / "weights" / "tiny-sd1.safetensors", dtype=torch.float32)
    save_model(tiny_model("ldm_sr"), tmp_path / "weights" / "tiny-sr.safetensors")
    _images(tmp_path / "data" / "pics", n=2)
    studio = Studio.create(settings)
    start = {"stage": "lora", "dataset": "folder", "folder": "pics", "steps": 2, "batch_size": 1}
    with pytest.raises(gr.Error, match=r"in the field 'Base model \(LoRA\)' \(API base\)"):
        tab.train_start(studio, **start)
    with pytest.raises(gr.Error, match=r"Model 'tiny-sr.safetensors' is not a text-to-image model .* "
                                       r"choose one of: tiny-sd1.safetensors"):
        tab.train_start(studio, **start, base="tiny-sr.safetensors")
    with pytest.raises(gr.Error, match="The LoRA rank must be at least 1; got 0"):
        tab.train_start(studio, **start, base="tiny-sd1.safetensors", rank=0)

    info = tab.train_start(studio, **start, base="tiny-sd1.safetensors", rank=2, alpha=1, lora_layers=["attn", "text"],
                           learning_rate=0.01)
    name = info["name"]
    assert info["stage"] == "lora" and name.startswith("pics-tiny-sd1-lora-")
    done = _wait_for(lambda: studio.runs.status(name).status in ("finished", "failed"), timeout=240)
    assert done and studio.runs.status(name).status == "finished", studio.runs.log(name)
    path = tab.train_export(studio, name)
    assert path == str(tmp_path / "weights" / "lora" / f"{name}.safetensors")
    assert tab.run_view(studio, name)[5] == path                         # the tab shows where it went
    assert [e.name for e in studio.models.scan()[0]] == ["tiny-sd1.safetensors", "tiny-sr.safetensors"]
    m = load_model(tmp_path / "weights" / "tiny-sd1.safetensors", dtype=torch.float32)
    before = _outputs(m, "sd1")
    assert apply_lora(m, path, 1.0) == 7 * 8 + 2 * 6      # q, k, v, out of attn1 / attn2 in 7 transformers, 2 text
    after = _outputs(m, "sd1")
    assert (after[1] - before[1]).abs().max() > 1e-4 and (after[0] - before[0]).abs().max() > 1e-4


def test_a_stop_asked_while_sampling_ends_the_grid():
    """The loop's grids pass the stop flag to txt2img: Stop does not wait for a whole grid."""
    from core.samplers import SamplingInterrupted
    from core.train.config import TrainConfig
    from core.train.lora import sample_grid

    m = tiny_model("sd1")
    m.model.train()
    tc = TrainConfig(sample_steps=50, n_samples=2)
    assert sample_grid(m, ["a", "b"], replace(tc, sample_steps=1), 64).shape == (2, 3, 64, 64)
    with pytest.raises(SamplingInterrupted):
        sample_grid(m, ["a", "b"], tc, 64, should_stop=lambda: True)
    assert m.model.training                                   # the UNet back in training mode
