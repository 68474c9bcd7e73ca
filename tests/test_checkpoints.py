"""Every model family loads from its original file layout + YAML, key-exact, with the same outputs;
project-native files round-trip; bad files give clear errors."""

import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core import load_model, save_model, speed
from core.checkpoints import CheckpointError, model_hash
from core.checkpoints.files import numpy_core, read_checkpoint
from core.models.schedule import SCHEDULE_BUFFERS
from tests.tiny_models import FAMILIES, example_inputs, original_state_dict, tiny_model

# Families whose YAML leaves use_ema at its default (True): the reference samples with model_ema.*.
EMA_FAMILIES = {"ldm_uncond", "ldm_churches", "ldm_sr", "ldm_inpaint", "ldm_layout", "ldm_semantic"}


def _write(tmp_path: Path, family: str, sd: dict, fmt: str = "ckpt") -> tuple[Path, Path]:
    yaml_path = tmp_path / f"{family}.yaml"
    yaml_path.write_text(FAMILIES[family])
    if fmt == "ckpt":
        path = tmp_path / f"{family}.ckpt"
        torch.save({"state_dict": sd, "global_step": 7, "epoch": 1}, path)
    else:
        path = tmp_path / f"{family}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path, yaml_path


def _outputs(model, family):
    # torch's plain kernels on both sides: these tests check what the loader put where, to 1e-6;
    # load_model's oneDNN-packed kernels differ by float rounding (tests/test_speed.py bounds that).
    with torch.no_grad(), speed.plain_kernels():
        x, t, cond = example_inputs(model, family)   # inpainting: its c_concat encodes an image
        eps = model.apply_model(x, t, cond)
        image = model.decode_first_stage(x[:, : model.config.first_stage.embed_dim])
    return eps, image


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_loads_from_original_layout(tmp_path, family):
    model = tiny_model(family)
    use_ema = family in EMA_FAMILIES
    sd = original_state_dict(model, family, ema=use_ema)
    path, yaml_path = _write(tmp_path, family, sd)
    loaded = load_model(path, config=yaml_path)
    # Keys: exactly our module's, nothing left over.
    assert set(loaded.state_dict()) == set(model.state_dict())
    for name in SCHEDULE_BUFFERS:
        assert getattr(loaded, name).dtype == torch.float32
    if use_ema:  # the UNet carries the EMA weights, everything else the plain ones (FACTS.md 1, trap 8)
        for k, v in loaded.model.state_dict().items():
            torch.testing.assert_close(v, sd["model_ema." + k.replace(".", "")], rtol=0, atol=0)
        model.model.load_state_dict(loaded.model.state_dict())
    if family == "ldm_churches":  # the stored scale_factor overrides the config's (trap 7)
        assert loaded.scale_factor == pytest.approx(0.5)
        model.scale_factor = 0.5
    for a, b in zip(_outputs(model, family), _outputs(loaded, family)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["sd1", "sd2_inpaint", "ldm_inpaint"])
def test_safetensors_original_layout(tmp_path, family):
    model = tiny_model(family)
    path, yaml_path = _write(tmp_path, family, original_state_dict(model, family), fmt="safetensors")
    loaded = load_model(path, config=yaml_path)
    for a, b in zip(_outputs(model, family), _outputs(loaded, family)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sd1_text_keys_in_both_hf_layouts(tmp_path):
    model = tiny_model("sd1")
    sd = original_state_dict(model, "sd1")
    assert any(k.startswith("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj") for k in sd)
    # transformers >= 5 drops the `text_model.` level
    sd5 = {k.replace("transformer.text_model.", "transformer."): v for k, v in sd.items()}
    path, yaml_path = _write(tmp_path, "sd1", sd5)
    loaded = load_model(path, config=yaml_path)
    ref = model.get_learned_conditioning(["a small blue star"])
    with speed.plain_kernels():
        torch.testing.assert_close(loaded.get_learned_conditioning(["a small blue star"]), ref)


@pytest.mark.parametrize("family", ["sd2", "ldm_class", "sd_x4", "ldm_uncond"])
def test_native_round_trip_fp16(tmp_path, family):
    model = tiny_model(family)
    path = save_model(model, tmp_path / "m.safetensors", metadata={"note": "test"})
    loaded = load_model(path)  # no config: it is in the metadata
    assert loaded.metadata["note"] == "test"
    assert loaded.config == model.config
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:                     # stored in float16 ...
        assert f.get_tensor(next(k for k in f.keys() if k.startswith("model."))).dtype == torch.float16
    assert next(loaded.model.parameters()).dtype == torch.float32       # ... run in float32 on the CPU
    assert loaded.alphas_cumprod.dtype == torch.float32
    assert next(load_model(path, dtype=torch.float16).model.parameters()).dtype == torch.float16
    loaded32 = load_model(path, dtype=torch.float32)
    for a, b in zip(_outputs(model, family), _outputs(loaded32, family)):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    bf16 = load_model(path, dtype=torch.bfloat16)
    x, t, cond = example_inputs(bf16, family)
    cond = cond.to(torch.bfloat16) if isinstance(cond, torch.Tensor) else cond
    if isinstance(cond, dict):
        cond = {k: ([c.to(torch.bfloat16) for c in v] if isinstance(v, list) else v) for k, v in cond.items()}
    out = bf16.apply_model(x.to(torch.bfloat16), t, cond)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_standalone_autoencoder_round_trip(tmp_path):
    model = tiny_model("sd2").first_stage_model
    path = save_model(model, tmp_path / "vae.safetensors", dtype=None)
    loaded = load_model(path)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded.encode(x).mode(), model.encode(x).mode())


def test_model_hash_is_sha256_prefix(tmp_path):
    import hashlib
    path = save_model(tiny_model("ldm_uncond"), tmp_path / "m.safetensors")
    assert model_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]


# ---- bad files -----------------------------------------------------------------------------------

def test_numpy_core_is_found_under_numpy_1_and_2(tmp_path):
    """Issue 18 defect 5: numpy 1.26 (requirements' floor) has numpy.core but no numpy._core."""
    real, stub = SimpleNamespace(multiarray="multiarray"), SimpleNamespace()
    numpy_1_25 = SimpleNamespace(core=real)
    numpy_1_26 = SimpleNamespace(_core=stub, core=real)           # 1.26.4: a stub _core for numpy 2 pickles
    numpy_2 = SimpleNamespace(_core=real, core=SimpleNamespace(multiarray="deprecated alias"))
    assert numpy_core(numpy_1_25) is real and numpy_core(numpy_1_26) is real and numpy_core(numpy_2) is real
    assert numpy_core().multiarray.scalar is np.float64(0.5).__reduce__()[0]     # what pickles name
    # A Lightning-style checkpoint holding a numpy scalar (pickled through multiarray.scalar) loads.
    path = tmp_path / "with-numpy.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "best_score": np.float64(0.25)}, path)
    state_dict, _ = read_checkpoint(path)
    assert list(state_dict) == ["w"] and torch.equal(state_dict["w"], torch.ones(2))


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/ldm_studio_pwned",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = Path("/tmp/ldm_studio_pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused.*system"):
        load_model(path, config=FAMILIES["ldm_uncond"])
    assert not marker.exists()
    # A plain (non-torch) pickle with the same payload.
    raw = tmp_path / "evil2.ckpt"
    raw.write_bytes(pickle.dumps({"state_dict": _Evil()}))
    with pytest.raises(CheckpointError):
        load_model(raw, config=FAMILIES["ldm_uncond"])
    assert not marker.exists()


def test_lightning_extras_are_tolerated(tmp_path):
    import argparse
    model = tiny_model("ldm_uncond")
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": original_state_dict(model, "ldm_uncond", ema=True),
                "hyper_parameters": argparse.Namespace(lr=1e-4), "global_step": 3}, path)
    load_model(path, config=FAMILIES["ldm_uncond"])


def test_empty_and_truncated_files(tmp_path):
    model = tiny_model("ldm_uncond")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(empty, config=FAMILIES["ldm_uncond"])
    path = save_model(model, tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(cut)
    ckpt, _ = _write(tmp_path, "ldm_uncond", original_state_dict(model, "ldm_uncond"))
    cut_ckpt = tmp_path / "cut.ckpt"
    cut_ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        load_model(cut_ckpt, config=FAMILIES["ldm_uncond"])
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError):
        load_model(text, config=FAMILIES["ldm_uncond"])
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_model(text.with_suffix(".txt").write_text("x") and text.with_suffix(".txt"))


def test_ckpt_without_config_says_what_to_pass(tmp_path):
    path, _ = _write(tmp_path, "sd2", original_state_dict(tiny_model("sd2"), "sd2"))
    with pytest.raises(CheckpointError, match="pass the YAML"):
        load_model(path)


def test_wrong_config_names_the_mismatch(tmp_path):
    path, _ = _write(tmp_path, "sd2", original_state_dict(tiny_model("sd2"), "sd2"))
    with pytest.raises(CheckpointError, match="missing keys|unexpected keys|differ in shape"):
        load_model(path, config=FAMILIES["sd1"])
    with pytest.raises(CheckpointError, match="differ in shape.*input_blocks.0.0.weight"):
        load_model(path, config=FAMILIES["sd2_inpaint"])


def test_missing_and_unexpected_keys_strict_and_escape_hatch(tmp_path):
    model = tiny_model("sd2")
    sd = original_state_dict(model, "sd2")
    del sd["model.diffusion_model.out.2.bias"]
    sd["model.diffusion_model.extra.weight"] = torch.zeros(2)
    path, yaml_path = _write(tmp_path, "sd2", sd)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(model.diffusion_model.out.2.bias\).*"
                                              r"1 unexpected keys \(model.diffusion_model.extra.weight\)"):
        load_model(path, config=yaml_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model(path, config=yaml_path, strict=False)
    assert any("out.2.bias" in str(w.message) for w in caught)
    torch.testing.assert_close(loaded.model.diffusion_model.input_blocks[0][0].weight,
                               model.model.diffusion_model.input_blocks[0][0].weight)


def test_yaml_errors_are_clear():
    from core.checkpoints import config_from_yaml
    with pytest.raises(ValueError, match="not supported"):
        config_from_yaml(FAMILIES["sd2"].replace("ldm.models.diffusion.ddpm.LatentDiffusion", "os.system"))
    with pytest.raises(ValueError, match="cond stage .* not supported"):
        config_from_yaml(FAMILIES["sd2"].replace("FrozenOpenCLIPEmbedder", "SomethingElse"))
    with pytest.raises(ValueError, match="model:"):
        config_from_yaml("just: text")


def test_each_conditioner_warns_about_parameters_it_does_not_read():
    from core.checkpoints import config_from_yaml
    classes = FAMILIES["ldm_class"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # its own parameters and the reference's
        config_from_yaml(classes.replace("key: class_label}", "key: class_label, ucg_rate: 0.1}"))
    # n_layer is a TransformerEmbedder's parameter, not a ClassEmbedder's: the config is wrong.
    with pytest.warns(UserWarning, match=r"cond_stage_config \(ClassEmbedder\) has parameters LDM Studio "
                                         r"does not use: n_layer"):
        config_from_yaml(classes.replace("key: class_label}", "key: class_label, n_layer: 4}"))
