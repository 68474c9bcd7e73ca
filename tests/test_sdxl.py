"""SDXL (sgm) on tiny models: the released YAMLs, the real checkpoints' key lists, family detection,
and the numerics against outputs recorded with Stability's own sgm code
(tests/data/sgm/record_reference.py -> tests/data/sgm/reference.safetensors)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from core.checkpoints import CheckpointError, bundled_configs, config_from_yaml
from core.checkpoints.bundled_configs import BUNDLED_CONFIGS
from core.checkpoints.detect import detect_family
from core.models.clip_text import tokenize_clip
from core.models.diffusion import LatentDiffusion
from core.samplers import sample
from core.samplers.sgm import sgm_sigmas, sgm_start_index, sgm_timesteps
from tests.tiny_models import FAMILIES, SGM_FAMILIES, example_inputs, original_state_dict, tiny_model

DATA = Path(__file__).parent / "data" / "sgm"


def reference() -> tuple[dict, dict]:
    with safe_open(str(DATA / "reference.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def close(a, b, tol):
    """max |a - b| <= tol * max(1, max |b|): the 1e-4 / 1e-3 tolerances of our SD checks."""
    err = (a.float() - b.float()).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"max abs error {err:.3g}"


# ---------------------------------------------------------------------------------------------
# The released YAMLs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["base", "refiner"])
def test_released_yaml_translates_without_warnings(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = config_from_yaml(DATA / f"sd_xl_{name}.yaml")
    assert cfg.model_class == "DiffusionEngine" and cfg.scale_factor == 0.13025
    assert cfg.parameterization == "eps" and (cfg.linear_start, cfg.linear_end) == (0.00085, 0.012)
    assert cfg.image_size * cfg.first_stage.ddconfig.downsample_factor == 1024
    unet = cfg.unet
    assert unet.num_classes == "sequential" and unet.use_linear_in_transformer and unet.num_head_channels == 64
    if name == "base":
        assert (unet.model_channels, unet.adm_in_channels, unet.context_dim) == (320, 2816, 2048)
        assert unet.transformer_depth_per_level == (1, 2, 10)
        keys = [s.input_key for s in cfg.cond_stage.embedders]
        assert keys == ["txt", "txt", "original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple"]
        clip_l = cfg.cond_stage.embedders[0].embedder
        assert (clip_l.layer, clip_l.layer_idx, clip_l.hidden_size) == ("hidden", 11, 768)
    else:
        assert (unet.model_channels, unet.adm_in_channels, unet.context_dim) == (384, 2560, 1280)
        assert unet.transformer_depth_per_level == (4, 4, 4, 4)
        assert [s.input_key for s in cfg.cond_stage.embedders][-1] == "aesthetic_score"
    bigg = cfg.cond_stage.embedders[1 if name == "base" else 0].embedder
    assert bigg.arch == "ViT-bigG-14" and not bigg.legacy and bigg.layer == "penultimate"


def test_sgm_yaml_errors_are_clear():
    text = (DATA / "sd_xl_base.yaml").read_text()
    with pytest.raises(ValueError, match="embedder .*FrozenT5Embedder.* not supported"):
        config_from_yaml(text.replace("modules.FrozenCLIPEmbedder\n", "modules.FrozenT5Embedder\n"))
    with pytest.raises(ValueError, match="scaling .* not supported"):
        config_from_yaml(text.replace("EpsScaling", "EDMScaling"))
    with pytest.raises(ValueError, match="model target .* not supported"):
        config_from_yaml(text.replace("sgm.models.diffusion.DiffusionEngine", "sgm.models.Evil"))


# ---------------------------------------------------------------------------------------------
# Real checkpoint key lists (hand-written from the published architecture) on the meta device
# ---------------------------------------------------------------------------------------------

def _res(p, cin, cout, emb):
    d = {f"{p}.in_layers.0.weight": (cin,), f"{p}.in_layers.0.bias": (cin,),
         f"{p}.in_layers.2.weight": (cout, cin, 3, 3), f"{p}.in_layers.2.bias": (cout,),
         f"{p}.emb_layers.1.weight": (cout, emb), f"{p}.emb_layers.1.bias": (cout,),
         f"{p}.out_layers.0.weight": (cout,), f"{p}.out_layers.0.bias": (cout,),
         f"{p}.out_layers.3.weight": (cout, cout, 3, 3), f"{p}.out_layers.3.bias": (cout,)}
    if cin != cout:
        d.update({f"{p}.skip_connection.weight": (cout, cin, 1, 1), f"{p}.skip_connection.bias": (cout,)})
    return d


def _st(p, c, depth, ctx):
    d = {f"{p}.norm.weight": (c,), f"{p}.norm.bias": (c,), f"{p}.proj_in.weight": (c, c), f"{p}.proj_in.bias": (c,),
         f"{p}.proj_out.weight": (c, c), f"{p}.proj_out.bias": (c,)}
    for i in range(depth):
        b = f"{p}.transformer_blocks.{i}"
        for a, kv in (("attn1", c), ("attn2", ctx)):
            d.update({f"{b}.{a}.to_q.weight": (c, c), f"{b}.{a}.to_k.weight": (c, kv), f"{b}.{a}.to_v.weight": (c, kv),
                      f"{b}.{a}.to_out.0.weight": (c, c), f"{b}.{a}.to_out.0.bias": (c,)})
        for n in ("norm1", "norm2", "norm3"):
            d.update({f"{b}.{n}.weight": (c,), f"{b}.{n}.bias": (c,)})
        d.update({f"{b}.ff.net.0.proj.weight": (8 * c, c), f"{b}.ff.net.0.proj.bias": (8 * c,),
                  f"{b}.ff.net.2.weight": (c, 4 * c), f"{b}.ff.net.2.bias": (c,)})
    return d


def sdxl_unet_keys(mc, mult, depth, ctx, adm):
    """`model.diffusion_model.*` of sd_xl_base_1.0 / sd_xl_refiner_1.0, block by block: nrb 2, attention at
    ds 2 and 4 (attention_resolutions [4, 2]), Linear proj, conv Downsample/Upsample."""
    emb = 4 * mc
    d = {"time_embed.0.weight": (emb, mc), "time_embed.0.bias": (emb,), "time_embed.2.weight": (emb, emb),
         "time_embed.2.bias": (emb,), "label_emb.0.0.weight": (emb, adm), "label_emb.0.0.bias": (emb,),
         "label_emb.0.2.weight": (emb, emb), "label_emb.0.2.bias": (emb,),
         "input_blocks.0.0.weight": (mc, 4, 3, 3), "input_blocks.0.0.bias": (mc,),
         "out.0.weight": (mc,), "out.0.bias": (mc,), "out.2.weight": (4, mc, 3, 3), "out.2.bias": (4,)}
    k, ch, skips, ds = 1, mc, [mc], 1
    for level, m in enumerate(mult):
        for _ in range(2):
            d.update(_res(f"input_blocks.{k}.0", ch, m * mc, emb))
            ch = m * mc
            if ds in (2, 4):
                d.update(_st(f"input_blocks.{k}.1", ch, depth[level], ctx))
            skips.append(ch)
            k += 1
        if level < len(mult) - 1:
            d.update({f"input_blocks.{k}.0.op.weight": (ch, ch, 3, 3), f"input_blocks.{k}.0.op.bias": (ch,)})
            skips.append(ch)
            k, ds = k + 1, ds * 2
    d.update({**_res("middle_block.0", ch, ch, emb), **_st("middle_block.1", ch, depth[-1], ctx),
              **_res("middle_block.2", ch, ch, emb)})
    k = 0
    for level in reversed(range(len(mult))):
        for i in range(3):
            d.update(_res(f"output_blocks.{k}.0", ch + skips.pop(), mult[level] * mc, emb))
            ch = mult[level] * mc
            j = 1
            if ds in (2, 4):
                d.update(_st(f"output_blocks.{k}.1", ch, depth[level], ctx))
                j = 2
            if level and i == 2:
                d.update({f"output_blocks.{k}.{j}.conv.weight": (ch, ch, 3, 3), f"output_blocks.{k}.{j}.conv.bias": (ch,)})
                ds //= 2
            k += 1
    return {"model.diffusion_model." + k: v for k, v in d.items()}


def openclip_text_keys(prefix, width, layers, embed):
    d = {"token_embedding.weight": (49408, width), "positional_embedding": (77, width), "ln_final.weight": (width,),
         "ln_final.bias": (width,), "text_projection": (width, embed), "logit_scale": ()}
    for n in range(layers):
        b = f"transformer.resblocks.{n}"
        d.update({f"{b}.ln_1.weight": (width,), f"{b}.ln_1.bias": (width,), f"{b}.ln_2.weight": (width,),
                  f"{b}.ln_2.bias": (width,), f"{b}.attn.in_proj_weight": (3 * width, width),
                  f"{b}.attn.in_proj_bias": (3 * width,), f"{b}.attn.out_proj.weight": (width, width),
                  f"{b}.attn.out_proj.bias": (width,), f"{b}.mlp.c_fc.weight": (4 * width, width),
                  f"{b}.mlp.c_fc.bias": (4 * width,), f"{b}.mlp.c_proj.weight": (width, 4 * width),
                  f"{b}.mlp.c_proj.bias": (width,)})
    return {prefix + k: v for k, v in d.items()}


def hf_clip_l_keys(prefix):
    t = prefix + "transformer.text_model."
    d = {t + "embeddings.token_embedding.weight": (49408, 768), t + "embeddings.position_embedding.weight": (77, 768),
         t + "embeddings.position_ids": (1, 77), t + "final_layer_norm.weight": (768,),
         t + "final_layer_norm.bias": (768,)}
    for n in range(12):
        b = f"{t}encoder.layers.{n}."
        for w in ("q_proj", "k_proj", "v_proj", "out_proj"):
            d.update({b + f"self_attn.{w}.weight": (768, 768), b + f"self_attn.{w}.bias": (768,)})
        for ln in ("layer_norm1", "layer_norm2"):
            d.update({b + f"{ln}.weight": (768,), b + f"{ln}.bias": (768,)})
        d.update({b + "mlp.fc1.weight": (3072, 768), b + "mlp.fc1.bias": (3072,), b + "mlp.fc2.weight": (768, 3072),
                  b + "mlp.fc2.bias": (768,)})
    return d


def real_key_list(name: str) -> dict:
    if name == "base":
        keys = {**sdxl_unet_keys(320, (1, 2, 4), (1, 2, 10), 2048, 2816), **hf_clip_l_keys("conditioner.embedders.0."),
                **openclip_text_keys("conditioner.embedders.1.model.", 1280, 32, 1280)}
    else:
        keys = {**sdxl_unet_keys(384, (1, 2, 4, 4), (4, 4, 4, 4), 1280, 2560),
                **openclip_text_keys("conditioner.embedders.0.model.", 1280, 32, 1280)}
    return keys


def meta_model(name: str) -> LatentDiffusion:
    with torch.device("meta"):
        return LatentDiffusion(config_from_yaml(DATA / f"sd_xl_{name}.yaml"))


def test_real_base_key_list_counts_as_published():
    """sd_xl_base_1.0.safetensors as published: 2515 tensors; model 1680, conditioner 587 (CLIP-L 197 in HF
    names with position_ids, bigG 390), first_stage_model 248; ranks 0/1/2/4: 1 / 1442 / 949 / 123."""
    keys = real_key_list("base")
    unet = [k for k in keys if k.startswith("model.")]
    cond = [k for k in keys if k.startswith("conditioner.")]
    assert (len(unet), len(cond)) == (1680, 587)
    vae = {k: tuple(v.shape) for k, v in meta_model("base").state_dict().items() if k.startswith("first_stage_model.")}
    assert len(vae) == 248
    ranks = np.bincount([len(s) for s in {**keys, **vae}.values()], minlength=5)
    assert ranks.tolist() == [1, 1442, 949, 0, 123]
    assert keys["model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"] == (1280, 2048)
    assert keys["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)


@pytest.mark.parametrize("name", ["base", "refiner"])
def test_real_key_lists_load_into_the_model_from_the_released_yaml(name):
    """Every key of the real file present, every shape equal, nothing left over: a real file loads."""
    from core.checkpoints.loader import _check_keys, _to_our_layout
    model = meta_model(name)
    file_keys = real_key_list(name)
    file_keys.update({k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("first_stage_model.")})
    sd = {k: torch.empty(s, device="meta") for k, s in file_keys.items()}
    sd, _ = _to_our_layout(sd, model.config)
    _check_keys(model, sd, strict=True, name=f"sd_xl_{name}_1.0.safetensors")
    assert set(sd) == set(model.state_dict())


# ---------------------------------------------------------------------------------------------
# Numerics against sgm (recorded)
# ---------------------------------------------------------------------------------------------

def _batches(family, n=2):
    sizes = {"original_size_as_tuple": torch.tensor([[1024, 1024], [768, 1024]]),
             "crop_coords_top_left": torch.tensor([[0, 0], [16, 32]]),
             "target_size_as_tuple": torch.tensor([[1024, 1024], [768, 1024]])}
    prompts = json.loads(reference()[1]["prompts"])
    if family == "sdxl":
        return {"txt": prompts, **sizes}, {"txt": prompts, **sizes}, ["txt"]
    keep = {k: sizes[k] for k in ("original_size_as_tuple", "crop_coords_top_left")}
    return ({"txt": prompts, **keep, "aesthetic_score": torch.tensor([[6.0]] * n)},
            {"txt": [""] * n, **keep, "aesthetic_score": torch.tensor([[2.5]] * n)}, None)


@pytest.fixture(scope="module")
def recorded():
    return reference()[0]


def test_clip_l_tokens_equal_hf_tokenizer(recorded):
    prompts = json.loads(reference()[1]["prompts"])
    torch.testing.assert_close(tokenize_clip(prompts + [""], 77, pad_id=49407), recorded["clip_l_tokens"])


@pytest.mark.parametrize("family", SGM_FAMILIES)
def test_conditioner_unet_and_samplers_match_sgm(recorded, family):
    ref = {k[len(family) + 1:]: v for k, v in recorded.items() if k.startswith(family + ".")}
    model = tiny_model(family)
    fingerprint = torch.stack([p.double().sum() for p in model.parameters()]).sum().float()
    assert fingerprint.item() == pytest.approx(ref["weights_fingerprint"].item(), rel=1e-6), \
        "tests/tiny_models.py changed: re-record tests/data/sgm/reference.safetensors"
    torch.testing.assert_close(model.denoiser.sigmas, recorded["sdxl.denoiser_sigmas"], rtol=0, atol=0)
    batch, batch_uc, zero = _batches(family)
    c = model.get_learned_conditioning(batch)
    uc = model.get_learned_conditioning(batch_uc, force_zero_embeddings=zero)
    close(c["c_crossattn"][0], ref["c_crossattn"], 1e-4)
    close(c["y"], ref["c_vector"], 1e-4)
    if family == "sdxl":                 # the base's uncond text context is zeros (not stored)
        assert not uc["c_crossattn"][0].any()
    else:
        close(uc["c_crossattn"][0], ref["uc_crossattn"], 1e-4)
    close(uc["y"], ref["uc_vector"], 1e-4)
    with torch.no_grad():
        close(model.apply_model(ref["x"], ref["t"], c), ref["eps"], 1e-4)
    for sampler in ("euler", "dpmpp_2m"):
        z = sample(model, c, uncond=uc, guidance_scale=5.0, steps=10, sampler=sampler, x_T=ref["x_T"])
        close(z, ref[sampler], 1e-3)


# ---------------------------------------------------------------------------------------------
# Sampling set-up (sgm discretisation) without a network
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 7, 10, 30, 999, 1000])
def test_step_list_equals_numpy_linspace_truncation(steps):
    # generate_roughly_equally_spaced_steps (ascending there; sampled descending); n == T: every step
    expected = (np.linspace(999, 0, steps, endpoint=False).astype(int).tolist() if steps < 1000
                else list(range(999, -1, -1)))
    assert sgm_timesteps(1000, steps) == expected
    grid = torch.arange(1000, dtype=torch.float32) + 1
    sig = sgm_sigmas(grid, steps)
    assert sig[-1] == 0 and len(sig) == steps + 1 and (sig[:-1] == grid[expected]).all()


def test_img2img_strength_counts_the_final_zero_as_the_reference():
    # 10 steps -> 11 sigmas; strength 0.5 keeps int(5.5) = 5 of them: the last 4 steps run.
    assert sgm_start_index(10, 0.5) == 6
    assert sgm_start_index(10, 1.0) == 0
    assert sgm_start_index(10, 0.01) == 10      # at least one sigma (the 0): nothing runs


def test_uncond_zeroes_text_and_keeps_sizes():
    model = tiny_model("sdxl")
    uc = model.get_learned_conditioning(["a cat"], force_zero_embeddings=["txt"])
    assert uc["c_crossattn"][0].abs().sum() == 0
    assert uc["y"][:, :24].abs().sum() == 0 and uc["y"][:, 24:].abs().sum() > 0      # pooled 0, sizes kept
    c = model.get_learned_conditioning(["a cat"], original_size=(768, 1024), crop_coords=(0, 0),
                                       target_size=(768, 1024))
    batch = {"txt": ["a cat"], "original_size_as_tuple": torch.tensor([[768, 1024]]),
             "crop_coords_top_left": torch.tensor([[0, 0]]), "target_size_as_tuple": torch.tensor([[768, 1024]])}
    torch.testing.assert_close(c["y"], model.get_learned_conditioning(batch)["y"])
    with pytest.raises(ValueError, match="lacks"):
        model.get_learned_conditioning({"txt": ["a"]})
    with pytest.raises(ValueError, match="no embedder reads"):
        model.get_learned_conditioning(["a"], force_zero_embeddings=["caption"])


def test_y_reaches_the_unet():
    model = tiny_model("sdxl")
    c = model.get_learned_conditioning(["a cat"])
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    with torch.no_grad():
        a = model.apply_model(x, t, c)
        b = model.apply_model(x, t, {**c, "y": c["y"] + 1})
    assert (a - b).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# Family detection, bundled configs, loading without a config
# ---------------------------------------------------------------------------------------------

DETECTED = {"sd2_v": "sd2"}     # eps and v SD2 files look the same: detection says so and asks


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_detection_on_every_tiny_family(family):
    sd = original_state_dict(tiny_model(family), family)
    found = detect_family(sd)
    assert found.family == DETECTED.get(family, family)
    assert (found.config is None) == (found.family not in ("sd1", "sd2_inpaint", "sdxl", "sdxl_refiner",
                                                           "sdxl_inpaint"))
    if found.config is None:
        assert found.message


def test_detection_on_the_real_key_lists_and_inpainting():
    for name, expected in (("base", "sdxl_base"), ("refiner", "sdxl_refiner")):
        keys = {**real_key_list(name), "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3)}
        assert detect_family(keys).config == expected
    base = real_key_list("base")
    base["model.diffusion_model.input_blocks.0.0.weight"] = (320, 9, 3, 3)
    assert (detect_family(base).family, detect_family(base).config) == ("sdxl_inpaint", "sdxl_inpaint")
    sd1 = original_state_dict(tiny_model("sd1"), "sd1")
    sd1["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    assert detect_family(sd1).config == "sd1_inpaint"
    assert detect_family({"lora_unet_down.weight": (4, 4)}).family == "unknown"
    sd2 = detect_family(original_state_dict(tiny_model("sd2"), "sd2"))
    assert sd2.config is None and "config='sd2_v'" in sd2.message


def test_bundled_configs_equal_the_released_yamls():
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.unet import V2_INFERENCE
    assert bundled_configs.sdxl_base() == config_from_yaml(DATA / "sd_xl_base.yaml")
    assert bundled_configs.sdxl_refiner() == config_from_yaml(DATA / "sd_xl_refiner.yaml")
    assert bundled_configs.sd2() == config_from_yaml(V2_INFERENCE)
    with torch.device("meta"):                     # SD1: CLIP ViT-L context, 8 heads (FACTS.md 10)
        sd1 = LatentDiffusion(bundled_configs.sd1()).state_dict()
    assert sd1["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert sd1["model.diffusion_model.input_blocks.1.1.proj_in.weight"].shape == (320, 320, 1, 1)
    assert sum(k.startswith("model.diffusion_model.") for k in sd1) == 686


def test_load_model_without_config_detects_sdxl(tmp_path, monkeypatch):
    """The bundled SDXL config is real-size; a tiny file goes through the same path with the tiny config
    standing in for it."""
    from safetensors.torch import save_file

    from core import load_model
    from core.checkpoints import loader
    model = tiny_model("sdxl")
    sd = original_state_dict(model, "sdxl")
    sd["denoiser.sigmas"] = model.denoiser.sigmas.clone()          # some files carry it: accepted
    path = tmp_path / "sd_xl_base_1.0.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    monkeypatch.setitem(loader.BUNDLED_CONFIGS, "sdxl_base", lambda: model.config)
    loaded = load_model(path)
    assert loaded.config == model.config
    x, t, cond = example_inputs(model, "sdxl")
    with torch.no_grad():
        torch.testing.assert_close(loaded.apply_model(x, t, cond), model.apply_model(x, t, cond))
    bad = dict(sd, **{"denoiser.sigmas": sd["denoiser.sigmas"] * 2})
    save_file({k: v.contiguous() for k, v in bad.items()}, str(path))
    with pytest.raises(CheckpointError, match="denoiser.sigmas"):
        load_model(path)


def test_sdxl_native_round_trip(tmp_path):
    from core import load_model, save_model
    model = tiny_model("sdxl_refiner")
    loaded = load_model(save_model(model, tmp_path / "refiner.safetensors", dtype=None))
    assert loaded.config == model.config
    assert loaded.denoiser.sigmas.dtype == torch.float32 and loaded.alphas_cumprod.dtype == torch.float32
    x, t, cond = example_inputs(model, "sdxl_refiner")
    with torch.no_grad():
        torch.testing.assert_close(loaded.apply_model(x, t, cond), model.apply_model(x, t, cond))


def test_capabilities_of_sdxl():
    from core.capabilities import capabilities
    for name in ("sdxl_base", "sdxl_refiner"):
        caps = capabilities(BUNDLED_CONFIGS[name]())
        assert caps.tasks == ("txt2img", "img2img", "inpaint") and caps.prompt and caps.guidance
        assert (caps.native_size, caps.factor, caps.parameterization) == (1024, 8, "eps")


def test_img2img_and_first_stage_match_sgm(recorded):
    """sgm's do_img2img (Img2ImgDiscretizationWrapper, strength 0.6 of 10 Euler steps) and its
    AutoencoderKL decode of z / scale_factor."""
    ref = {k[len("sdxl."):]: v for k, v in recorded.items() if k.startswith("sdxl.")}
    model = tiny_model("sdxl")
    batch, batch_uc, zero = _batches("sdxl")
    c = model.get_learned_conditioning(batch)
    uc = model.get_learned_conditioning(batch_uc, force_zero_embeddings=zero)
    strength = float(reference()[1]["img2img_strength"])
    z = sample(model, c, uncond=uc, guidance_scale=5.0, steps=10, sampler="euler", x_T=ref["x_T"], x0=ref["x"],
               strength=strength)
    close(z, ref["img2img_euler"], 1e-3)
    close(model.decode_first_stage(ref["vae_z"]), ref["vae_decoded"], 1e-4)


def test_reference_uncond_rule_base_zeroes_text_refiner_encodes_empty(recorded):
    """The scripts' rule, checked against the recorded reference uncond of both families."""
    for family in SGM_FAMILIES:
        model = tiny_model(family)
        batch, _, _ = _batches(family)
        batch_uc, zero = model.conditioner.reference_uncond(batch)
        uc = model.get_learned_conditioning(batch_uc, force_zero_embeddings=zero)
        close(uc["y"], recorded[f"{family}.uc_vector"], 1e-4)
        if family == "sdxl_refiner":
            close(uc["c_crossattn"][0], recorded[f"{family}.uc_crossattn"], 1e-4)
            assert batch_uc["txt"] == ["", ""] and batch_uc["aesthetic_score"].flatten().tolist() == [2.5, 2.5]
        else:
            assert zero == ("txt",) and not uc["c_crossattn"][0].any()
