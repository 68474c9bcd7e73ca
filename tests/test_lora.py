"""LoRA on tiny SD1 / SD2 models: the diffusers <-> CompVis layer mapping, kohya / LoCon / PEFT files
merged into every mappable layer against a by-hand float32 patch (the text encoder's q/k/v through
the HF layout, so the fused in_proj_weight slices are checked independently), bit-exact removal,
unknown keys, a LoRA of another base, float16, and `<lora:name:w>` prompt tags (cached, hashed)."""
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.checkpoints.clip_keys import hf_clip_text_to_ours, ours_to_hf_clip_text
from core.checkpoints.lora_keys import lora_targets, unet_blocks, unet_layers
from core.lora import (
    LoraTag,
    addnet_hash,
    apply_lora,
    extract_lora_tags,
    remove_lora,
    use_loras,
)
from core.models.unet import UNetConfig, UNetModel
from tests.tiny_models import example_inputs, tiny_model

RANK, ALPHA = 4, 2.0


def test_unet_blocks_follow_diffusers_conversion_for_sd1_layout():
    """SD1's layout (mult [1,2,4,4], nrb 2, attention at ds 1,2,4), narrowed: the indices of
    diffusers' convert_ldm_unet_checkpoint."""
    cfg = UNetConfig(image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=2,
                     attention_resolutions=(4, 2, 1), channel_mult=(1, 2, 4, 4), num_heads=2,
                     use_spatial_transformer=True, context_dim=32)
    blocks = unet_blocks(UNetModel(cfg))
    expected = {
        "down_blocks.0.resnets.1": "input_blocks.2.0", "down_blocks.0.attentions.1": "input_blocks.2.1",
        "down_blocks.0.downsamplers.0": "input_blocks.3.0", "down_blocks.2.attentions.0": "input_blocks.7.1",
        "down_blocks.3.resnets.1": "input_blocks.11.0", "mid_block.attentions.0": "middle_block.1",
        "up_blocks.0.resnets.2": "output_blocks.2.0", "up_blocks.0.upsamplers.0": "output_blocks.2.1",
        "up_blocks.1.attentions.0": "output_blocks.3.1", "up_blocks.1.upsamplers.0": "output_blocks.5.2",
        "up_blocks.3.attentions.2": "output_blocks.11.1",
    }
    assert {k: blocks[k] for k in expected} == expected
    assert "down_blocks.3.attentions.0" not in blocks and "up_blocks.0.attentions.0" not in blocks
    assert "down_blocks.3.downsamplers.0" not in blocks and "up_blocks.3.upsamplers.0" not in blocks


def test_unet_blocks_per_level_counts_and_levels_without_attention():
    """SDXL-like: nrb per level (1, 2), no attention at level 0, depth 2 at level 1."""
    cfg = UNetConfig(image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=(1, 2),
                     attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16,
                     use_spatial_transformer=True, context_dim=32, transformer_depth=(1, 2))
    unet = UNetModel(cfg)
    blocks = unet_blocks(unet)
    assert blocks["down_blocks.0.downsamplers.0"] == "input_blocks.2.0"
    assert blocks["down_blocks.1.resnets.1"] == "input_blocks.4.0"
    assert blocks["down_blocks.1.attentions.1"] == "input_blocks.4.1"
    assert blocks["up_blocks.0.upsamplers.0"] == "output_blocks.2.2"
    assert blocks["up_blocks.1.resnets.1"] == "output_blocks.4.0"
    assert "down_blocks.0.attentions.0" not in blocks and "up_blocks.1.attentions.0" not in blocks
    layers = unet_layers(unet)
    assert layers["down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k"] == \
        "input_blocks.4.1.transformer_blocks.1.attn2.to_k"
    assert layers["up_blocks.0.resnets.0.conv_shortcut"] == "output_blocks.0.0.skip_connection"
    for ours in layers.values():                           # every name resolves to a real layer
        unet.get_submodule(ours)


# ---------------------------------------------------------------------------------------------
# Random LoRA files for every mappable layer
# ---------------------------------------------------------------------------------------------

def _layer_shapes(m, names):
    """{LoRA name: (out, in, kh, kw) of the weight (block) it patches}."""
    table = lora_targets(m)
    shapes = {}
    for name in names:
        t = table[name]
        w = getattr(m.get_submodule(t.module), t.param)
        w = w[slice(*t.rows)] if t.rows else w
        shapes[name] = (w.shape[0], w.shape[1], *(w.shape[2:] or (None, None)))
    return shapes


def random_lora(m, fmt="kohya", seed=0, convs=True):
    """{LoRA key: tensor} with random down/up (and alpha) for every layer of m that `fmt` names.
    kohya: `lora_unet_<diffusers>` + `lora_te_`, LoCon for convs (3x3 down, 1x1 up); peft: lora_A/B."""
    g = torch.Generator().manual_seed(seed)
    table = lora_targets(m)
    if fmt == "kohya":
        names = [n for n in table if n.startswith("lora_te") or
                 (n.startswith("lora_unet_") and not n.startswith(("lora_unet_input_blocks", "lora_unet_middle_block",
                                                                   "lora_unet_output_blocks", "lora_unet_out_",
                                                                   "lora_unet_time_embed_")))]
        down_key, up_key = ".lora_down.weight", ".lora_up.weight"
    else:
        names = [n for n in table if n.startswith(("unet.", "text_encoder."))]
        down_key, up_key = ".lora_A.weight", ".lora_B.weight"
    sd = {}
    for name, (out, inp, kh, kw) in _layer_shapes(m, names).items():
        if kh is not None and (kh, kw) != (1, 1) and not convs:
            continue
        down_shape = (RANK, inp) if kh is None else (RANK, inp, kh, kw)
        up_shape = (out, RANK) if kh is None else (out, RANK, 1, 1)
        sd[name + down_key] = torch.randn(down_shape, generator=g) * 0.1
        sd[name + up_key] = torch.randn(up_shape, generator=g) * 0.1
        if fmt == "kohya":
            sd[name + ".alpha"] = torch.tensor(ALPHA)
    return sd


def by_hand(m, sd, fmt, weight):
    """Reference: a state dict of m with every layer patched W + weight * scale * up @ down in
    float32; text q/k/v patched as separate HF q_proj/k_proj/v_proj weights and fused back."""
    table = lora_targets(m)
    down_key, up_key = (".lora_down.weight", ".lora_up.weight") if fmt == "kohya" else (".lora_A.weight",
                                                                                         ".lora_B.weight")
    state = {k: v.clone().float() for k, v in m.state_dict().items()}
    prefix = "cond_stage_model."
    text = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if "transformer.transformer.resblocks.0.attn.in_proj_weight" in text:
        hf = ours_to_hf_clip_text(text)
        tower = "transformer."
    else:                                                          # OpenCLIP `model.*`: the same tower
        hf = ours_to_hf_clip_text({"transformer." + k[len("model."):]: v for k, v in text.items()
                                   if k.startswith("model.") and k != "model.logit_scale"
                                   and k != "model.text_projection"})
        tower = "model."
    for key in [k for k in sd if k.endswith(down_key)]:
        name = key[:-len(down_key)]
        down, up = sd[key].float(), sd[name + up_key].float()
        scale = float(sd[name + ".alpha"]) / down.shape[0] if name + ".alpha" in sd else 1.0
        delta = torch.einsum("or,ri...->oi...", up.flatten(1), down)
        if name.startswith(("lora_te_", "text_encoder.")):
            hf_name = "transformer." + name[len("text_encoder."):]
            if fmt == "kohya":                                     # kohya flattened the dots
                layer = name[len("lora_te_text_model_encoder_layers_"):].split("_", 1)
                hf_name = f"transformer.text_model.encoder.layers.{layer[0]}." + {
                    "self_attn_q_proj": "self_attn.q_proj", "self_attn_k_proj": "self_attn.k_proj",
                    "self_attn_v_proj": "self_attn.v_proj", "self_attn_out_proj": "self_attn.out_proj",
                    "mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2"}[layer[1]]
            hf[hf_name + ".weight"] = hf[hf_name + ".weight"] + weight * scale * delta.reshape(
                hf[hf_name + ".weight"].shape)
        else:
            k = table[name].module + ".weight"
            state[k] = state[k] + weight * scale * delta.reshape(state[k].shape)
    for k, v in hf_clip_text_to_ours(hf).items():
        state[prefix + tower + k[len("transformer."):]] = v
    return state


def reference_inputs(m):
    """(tokens, x, t, ctx) for comparing against diffusers: CLIP tokens of a prompt, a latent, a
    timestep and a context of the UNet's width."""
    g = torch.Generator().manual_seed(3)
    tokens = m.cond_stage_model.tokenize(["a red circle on a blue square"])
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, m.config.unet.context_dim, generator=g)
    return tokens, x, torch.tensor([500]), ctx


def outputs(m, family):
    x, t, cond = example_inputs(m, family, batch=1)
    with torch.no_grad():
        return m.apply_model(x, t, cond), m.get_learned_conditioning(["a red circle"])


def unchanged(m, before: dict) -> bool:
    """m's weights equal `before` bit for bit."""
    weights = m.state_dict()
    return all(torch.equal(weights[k], v) for k, v in before.items())


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_lora_matches_a_by_hand_patch_and_removes_bit_exactly(family, fmt):
    m = tiny_model(family)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sd = random_lora(m, fmt)
    reference = tiny_model(family)
    reference.load_state_dict(by_hand(m, sd, fmt, 0.7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # every key is known
        patched = apply_lora(m, sd, 0.7)
    assert patched == len([k for k in sd if k.endswith((".lora_down.weight", ".lora_A.weight"))])
    weights = m.state_dict()
    for k, v in reference.state_dict().items():
        assert torch.allclose(weights[k], v, rtol=0, atol=1e-6), k
    (eps, ctx), (eps_ref, ctx_ref) = outputs(m, family), outputs(reference, family)
    assert rel(eps, eps_ref) < 1e-5 and rel(ctx, ctx_ref) < 1e-5
    assert rel(eps, outputs(tiny_model(family), family)[0]) > 1e-3       # the LoRA did change something
    remove_lora(m)
    assert unchanged(m, before)


def test_locon_conv_3x3_and_two_loras_combine():
    m = tiny_model("sd1")
    a, b = random_lora(m, "kohya", seed=1), random_lora(m, "kohya", seed=2)
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert a[name + ".lora_down.weight"].shape == (RANK, 32, 3, 3)
    w0 = m.model.diffusion_model.input_blocks[1][0].in_layers[2].weight.clone()
    apply_lora(m, a, 1.0)
    apply_lora(m, b, -0.5)
    expected = w0.clone()
    for sd, weight in ((a, 1.0), (b, -0.5)):
        up, down = sd[name + ".lora_up.weight"].flatten(1), sd[name + ".lora_down.weight"]
        expected = expected + weight * ALPHA / RANK * torch.einsum("or,rihw->oihw", up, down)
    assert torch.allclose(m.model.diffusion_model.input_blocks[1][0].in_layers[2].weight, expected, atol=1e-6)
    remove_lora(m)
    assert torch.equal(m.model.diffusion_model.input_blocks[1][0].in_layers[2].weight, w0)


def test_float16_model_gets_the_float32_product_rounded_once():
    m = tiny_model("sd2").half()
    sd = random_lora(m, "kohya")
    name = "lora_te_text_model_encoder_layers_1_self_attn_v_proj"
    attn = m.cond_stage_model.model.transformer.resblocks[1].attn
    w0 = attn.in_proj_weight.clone()
    apply_lora(m, sd, 0.8)
    delta = sd[name + ".lora_up.weight"].float() @ sd[name + ".lora_down.weight"].float()
    v = slice(64, 96)
    assert torch.equal(attn.in_proj_weight[v], (w0[v].float() + 0.8 * ALPHA / RANK * delta).half())
    remove_lora(m)
    assert torch.equal(attn.in_proj_weight, w0)


def test_unknown_keys_warn_with_their_names_and_the_rest_applies():
    m = tiny_model("sd1")
    sd = random_lora(m, "kohya", convs=False)
    sd["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight"] = torch.zeros(RANK, 32)
    sd["lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight"] = torch.zeros(32, RANK)
    sd["something_else.weight"] = torch.zeros(1)
    with pytest.warns(UserWarning, match="lora_unet_down_blocks_9_attentions_0_proj_in.down.*something_else"):
        n = apply_lora(m, sd)
    assert n == len([k for k in sd if k.endswith(".lora_down.weight")]) - 1


def test_lora_for_another_base_is_refused_naming_the_layer_and_nothing_changes():
    m = tiny_model("sd1")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sd = random_lora(m, "kohya", convs=False)
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    sd[name + ".lora_down.weight"] = torch.zeros(RANK, 768)           # SD1's real context width
    with pytest.raises(ValueError, match=f"{name}.*middle_block.1.transformer_blocks.0.attn2.to_k.*another base"):
        apply_lora(m, sd)
    assert unchanged(m, before)


# ---------------------------------------------------------------------------------------------
# <lora:name:weight> tags
# ---------------------------------------------------------------------------------------------

def test_extract_lora_tags():
    text, tags = extract_lora_tags("a cat <lora:ink_style:0.8>, <lora:b:0.5:1.2> sitting <lora:c>")
    assert text == "a cat ,  sitting "       # A1111 removes the tag text only
    assert tags == [LoraTag("ink_style", 0.8), LoraTag("b", 0.5, 1.2), LoraTag("c", 1.0)]
    with pytest.warns(UserWarning, match="hypernet"):
        assert extract_lora_tags("x <hypernet:h:1>") == ("x ", [])
    assert extract_lora_tags("(a:1.2) <not a tag>") == ("(a:1.2) <not a tag>", [])


def test_use_loras_caches_swaps_hashes_and_warns(tmp_path, monkeypatch):
    m = tiny_model("sd1")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    save_file(random_lora(m, "kohya", seed=1, convs=False), tmp_path / "one.safetensors")
    save_file(random_lora(m, "kohya", seed=2, convs=False), tmp_path / "two.safetensors")
    calls = []
    import core.lora
    real = core.lora.apply_lora
    monkeypatch.setattr(core.lora, "apply_lora", lambda *a, **k: calls.append(a[1].name) or real(*a, **k))

    hashes = use_loras(m, [LoraTag("one", 0.8), LoraTag("two", 0.5)], tmp_path)
    assert hashes == f"one: {addnet_hash(tmp_path / 'one.safetensors')[:12]}, " \
                     f"two: {addnet_hash(tmp_path / 'two.safetensors')[:12]}"
    assert calls == ["one.safetensors", "two.safetensors"]
    after_both = {k: v.clone() for k, v in m.state_dict().items()}
    use_loras(m, [LoraTag("one", 0.8), LoraTag("two", 0.5)], tmp_path)
    assert len(calls) == 2                                          # cached: nothing re-applied
    use_loras(m, [LoraTag("two", 0.5)], tmp_path)
    assert calls[2:] == ["two.safetensors"]
    use_loras(m, [LoraTag("one", 0.8), LoraTag("two", 0.5)], tmp_path)
    weights = m.state_dict()
    assert all(torch.allclose(weights[k], v, atol=1e-6) for k, v in after_both.items())
    with pytest.warns(UserWarning, match=f"'nope' not found in {tmp_path}"):
        assert use_loras(m, [LoraTag("nope")], tmp_path) is None
    assert unchanged(m, before)   # the empty set = no LoRA


def test_addnet_hash_skips_the_safetensors_header(tmp_path):
    import hashlib
    save_file({"a": torch.ones(3)}, tmp_path / "x.safetensors", metadata={"anything": "1"})
    save_file({"a": torch.ones(3)}, tmp_path / "y.safetensors", metadata={"other": "2"})
    assert addnet_hash(tmp_path / "x.safetensors") == addnet_hash(tmp_path / "y.safetensors")
    raw = (tmp_path / "x.safetensors").read_bytes()
    body = raw[8 + int.from_bytes(raw[:8], "little"):]
    assert addnet_hash(tmp_path / "x.safetensors") == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_lora_matches_diffusers_own_loader(family, fmt):
    """Recorded by tests/data/lora/record_diffusers_reference.py: diffusers' UNet2DConditionModel and
    transformers' CLIPTextModel built from the same weights, the same random LoRA loaded by
    diffusers' StableDiffusionLoraLoaderMixin (kohya conversion, PEFT layers, alpha / rank)."""
    from pathlib import Path

    from safetensors.torch import load_file
    ref = load_file(Path(__file__).parent / "data" / "lora" / f"diffusers_{family}_{fmt}.safetensors")
    m = tiny_model(family)
    tokens, x, t, ctx = reference_inputs(m)

    def run():
        with torch.no_grad():
            return m.model.diffusion_model(x, t, ctx), m.cond_stage_model.encode_tokens(tokens)

    eps, text = run()
    assert rel(eps, ref["eps_base"]) < 1e-5 and rel(text, ref["text_base"]) < 1e-5     # same base model
    apply_lora(m, random_lora(m, fmt), 1.0)
    eps, text = run()
    assert rel(eps, ref["eps"]) < 1e-4, rel(eps, ref["eps"])
    assert rel(text, ref["text"]) < 1e-4, rel(text, ref["text"])


def test_txt2img_applies_tagged_loras_and_records_their_hashes(tmp_path):
    from core.pipelines import txt2img
    from core.pipelines.infotext import read_infotext
    m = tiny_model("sd1")
    lora = random_lora(m, "kohya", seed=5, convs=False)
    save_file(lora, tmp_path / "ink.safetensors")
    args = {"steps": 2, "seed": 7, "width": 32, "height": 32, "sampler": "euler"}
    tagged = txt2img(m, "a red circle <lora:ink:0.8>", lora_dir=tmp_path, **args)[0]
    short = addnet_hash(tmp_path / "ink.safetensors")[:12]
    assert f'Lora hashes: "ink: {short}"' in tagged.info["parameters"]
    assert tagged.info["parameters"].startswith("a red circle <lora:ink:0.8>")       # the prompt as written
    assert read_infotext(tagged)["lora_hashes"] == f"ink: {short}"

    by_hand = tiny_model("sd1")
    apply_lora(by_hand, lora, 0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = txt2img(by_hand, "a red circle ", **args)[0]
    assert np.array_equal(np.asarray(tagged), np.asarray(expected))

    plain = txt2img(m, "a red circle ", lora_dir=tmp_path, **args)[0]        # no tag: the LoRA is removed
    assert "Lora hashes" not in plain.info["parameters"]
    assert np.array_equal(np.asarray(plain), np.asarray(txt2img(tiny_model("sd1"), "a red circle ", **args)[0]))
    assert not np.array_equal(np.asarray(plain), np.asarray(tagged))
    with pytest.warns(UserWarning, match="no LoRA folder"):
        txt2img(m, "a red circle <lora:ink:0.8>", **args)


def test_sdxl_kohya_names_are_sgm_module_paths_and_te1_te2():
    """kohya's SDXL LoRAs name the UNet by sgm's (= CompVis) module paths and the two text encoders
    lora_te1_ (CLIP-L, conditioner.embedders.0) and lora_te2_ (OpenCLIP bigG, embedders.1)."""
    m = tiny_model("sdxl")
    table = lora_targets(m)
    assert table["lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q"].module == \
        "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn1.to_q"
    assert table["lora_unet_down_blocks_2_attentions_0_transformer_blocks_1_ff_net_2"].module == \
        "model.diffusion_model.input_blocks.5.1.transformer_blocks.1.ff.net.2"
    assert table["lora_te2_text_model_encoder_layers_2_self_attn_k_proj"].module == \
        "conditioner.embedders.1.model.transformer.resblocks.2.attn"
    assert table["lora_te1_text_model_encoder_layers_0_mlp_fc1"].module == \
        "conditioner.embedders.0.transformer.transformer.resblocks.0.mlp.c_fc"
    before = {k: v.clone() for k, v in m.state_dict().items()}
    names = [n for n in table if n.startswith(("lora_unet_input_blocks", "lora_unet_middle_block",
                                               "lora_unet_output_blocks", "lora_te1_", "lora_te2_"))]
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, (out, inp, kh, kw) in _layer_shapes(m, names).items():
        sd[name + ".lora_down.weight"] = torch.randn((RANK, inp) if kh is None else (RANK, inp, kh, kw), generator=g)
        sd[name + ".lora_up.weight"] = torch.randn((out, RANK) if kh is None else (out, RANK, 1, 1), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_lora(m, sd, 0.1) == len(names)
    assert not torch.equal(m.state_dict()["model.diffusion_model.input_blocks.3.1.proj_in.weight"],
                           before["model.diffusion_model.input_blocks.3.1.proj_in.weight"])
    remove_lora(m)
    assert unchanged(m, before)


def test_lycoris_loha_and_lokr_merge_as_lycoris_defines_them():
    """LoHa: (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank; LoKr: kron(w1, w2_a @ w2_b) * alpha / rank of
    the factorised side (LyCORIS lycoris/modules, A1111's network_loha / network_lokr)."""
    m = tiny_model("sd1")
    g = torch.Generator().manual_seed(0)
    unet = m.model.diffusion_model
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    ff = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
    sd = {f"{q}.hada_w1_a": torch.randn(32, 2, generator=g), f"{q}.hada_w1_b": torch.randn(2, 32, generator=g),
          f"{q}.hada_w2_a": torch.randn(32, 2, generator=g), f"{q}.hada_w2_b": torch.randn(2, 32, generator=g),
          f"{q}.alpha": torch.tensor(1.0),
          f"{conv}.hada_w1_a": torch.randn(32, 2, generator=g), f"{conv}.hada_w1_b": torch.randn(2, 288, generator=g),
          f"{conv}.hada_w2_a": torch.randn(32, 2, generator=g), f"{conv}.hada_w2_b": torch.randn(2, 288, generator=g),
          f"{ff}.lokr_w1": torch.randn(4, 8, generator=g), f"{ff}.lokr_w2_a": torch.randn(8, 3, generator=g),
          f"{ff}.lokr_w2_b": torch.randn(3, 16, generator=g), f"{ff}.alpha": torch.tensor(6.0)}
    w_q = unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q.weight.clone()
    w_conv = unet.input_blocks[1][0].in_layers[2].weight.clone()
    w_ff = unet.input_blocks[1][1].transformer_blocks[0].ff.net[2].weight.clone()
    assert apply_lora(m, sd, 0.5) == 3
    hada = (sd[f"{q}.hada_w1_a"] @ sd[f"{q}.hada_w1_b"]) * (sd[f"{q}.hada_w2_a"] @ sd[f"{q}.hada_w2_b"])
    assert torch.allclose(unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q.weight, w_q + 0.5 * 0.5 * hada,
                          atol=1e-5)
    hada = ((sd[f"{conv}.hada_w1_a"] @ sd[f"{conv}.hada_w1_b"]) *
            (sd[f"{conv}.hada_w2_a"] @ sd[f"{conv}.hada_w2_b"])).reshape(32, 32, 3, 3)
    assert torch.allclose(unet.input_blocks[1][0].in_layers[2].weight, w_conv + 0.5 * hada, atol=1e-5)   # no alpha
    kron = torch.kron(sd[f"{ff}.lokr_w1"], sd[f"{ff}.lokr_w2_a"] @ sd[f"{ff}.lokr_w2_b"])               # (32, 128)
    assert torch.allclose(unet.input_blocks[1][1].transformer_blocks[0].ff.net[2].weight, w_ff + 0.5 * 2.0 * kron,
                          atol=1e-5)
    remove_lora(m)
    assert torch.equal(unet.input_blocks[1][1].transformer_blocks[0].ff.net[2].weight, w_ff)


def test_use_loras_looks_only_inside_the_folder_and_applies_all_or_nothing(tmp_path):
    m = tiny_model("sd1")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    (tmp_path / "lora" / "styles").mkdir(parents=True)
    save_file(random_lora(m, "kohya", seed=1, convs=False), tmp_path / "lora" / "styles" / "deep.safetensors")
    save_file(random_lora(m, "kohya", seed=2, convs=False), tmp_path / "outside.safetensors")
    bad = random_lora(m, "kohya", seed=3, convs=False)
    bad["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"] = torch.zeros(RANK, 7, 1, 1)
    save_file(bad, tmp_path / "lora" / "other_base.safetensors")
    folder = tmp_path / "lora"
    assert use_loras(m, [LoraTag("deep")], folder).startswith("deep: ")          # found in a subfolder
    for name in ("../outside", "*", "styles/deep"):
        with pytest.warns(UserWarning, match="not found"):
            use_loras(m, [LoraTag(name)], folder)
    with pytest.raises(ValueError, match="mid_block_attentions_0_proj_in"):
        use_loras(m, [LoraTag("deep"), LoraTag("other_base")], folder)
    assert unchanged(m, before)   # nothing of a refused set
    use_loras(m, [], folder)
    assert unchanged(m, before)


def test_hires_fix_and_the_model_pickers_know_the_network_folders(tmp_path):
    """txt2img_hires passes lora_dir / embeddings_dir to both passes and records the hashes; the
    app's pickers do not list weights/lora or weights/embeddings files as models."""
    from core.checkpoints import save_model
    from core.lora import network_folders
    from core.pipelines import HiresSettings, txt2img_hires
    from ui.models import ModelCache
    m = tiny_model("sd1")
    folders = network_folders(tmp_path)
    folders["lora_dir"].mkdir()
    folders["embeddings_dir"].mkdir()
    save_file(random_lora(m, "kohya", seed=5, convs=False), folders["lora_dir"] / "ink.safetensors")
    save_file({"emb_params": torch.randn(2, 32)}, folders["embeddings_dir"] / "mystyle.safetensors")
    hires = HiresSettings(scale=2, upscaler="Latent", steps=1, strength=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # no "no LoRA folder" from the second pass
        image = txt2img_hires(m, "a mystyle circle <lora:ink:0.5>", hires, steps=1, seed=0, width=32, height=32,
                              **folders)[0]
    assert 'Lora hashes: "ink: ' in image.info["parameters"] and 'TI hashes: "mystyle: ' in image.info["parameters"]
    save_model(tiny_model("sd2"), tmp_path / "sd2.safetensors")
    cache = ModelCache(tmp_path, "cpu", "float32")
    assert [e.name for e in cache.for_tab("txt2img")] == ["sd2.safetensors"]
    assert cache.scan()[1] == {}                             # no LoRA / embedding reported as a broken model


def test_cli_takes_the_lora_folder(tmp_path, capsys):
    from core.checkpoints import save_model
    from core.generate import main
    from core.pipelines import read_infotext
    m = tiny_model("sd1")
    save_model(m, tmp_path / "sd1.safetensors")
    (tmp_path / "lora").mkdir()
    save_file(random_lora(m, "kohya", seed=5, convs=False), tmp_path / "lora" / "ink.safetensors")
    assert main(["txt2img", "--model", str(tmp_path / "sd1.safetensors"), "--prompt", "a circle <lora:ink:0.5>",
                 "--lora-dir", str(tmp_path / "lora"), "--steps", "1", "--width", "32", "--height", "32",
                 "--outdir", str(tmp_path / "out"), "--quiet"]) == 0
    path = capsys.readouterr().out.split()[0]
    assert read_infotext(path)["lora_hashes"] == f"ink: {addnet_hash(tmp_path / 'lora' / 'ink.safetensors')[:12]}"


def test_older_diffusers_attention_processor_layout_reads_as_peft():
    """diffusers <= 0.20 wrote `attn1.processor.to_q_lora.down.weight` and, for text encoders,
    `q_proj.lora_linear_layer.down.weight`: the same layers as PEFT's lora_A / lora_B."""
    m, reference = tiny_model("sd1"), tiny_model("sd1")
    peft = {k: v for k, v in random_lora(m, "peft").items()
            if ".attn1.to_" in k or ".attn2.to_" in k or k.startswith("text_encoder.")}
    old = {}
    for key, value in peft.items():
        name, kind = key.rsplit(".lora_", 1)
        role = {"A.weight": "down", "B.weight": "up"}[kind]
        if name.startswith("text_encoder."):
            old[f"{name}.lora_linear_layer.{role}.weight"] = value
        else:
            block, layer = name.rsplit(".attn", 1)[0], name.rsplit(".attn", 1)[1]     # "1.to_q" / "2.to_out.0"
            number, proj = layer.split(".", 1)
            old[f"{block}.attn{number}.processor.{proj.removesuffix('.0')}_lora.{role}.weight"] = value
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_lora(m, old) == apply_lora(reference, peft) == len(peft) // 2
    assert unchanged(m, reference.state_dict())
