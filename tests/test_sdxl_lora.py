"""LoRA and textual-inversion embeddings on a tiny SDXL base (issue 15 / 17): diffusers / kohya layer
names for SDXL (the UNet's per-level blocks with no attention at level 0, lora_te1_ = CLIP ViT-L,
lora_te2_ = OpenCLIP bigG, PEFT's text_encoder / text_encoder_2), merged as a by-hand float32 patch
and removed bit-exactly; SDXL embedding pairs (clip_l / clip_g), each to its own tower."""
import warnings

import pytest
import torch
from safetensors.torch import save_file

from core.checkpoints.lora_keys import lora_targets
from core.lora import apply_lora, remove_lora
from core.pipelines.conditioning import sdxl_conditioning, with_steps
from tests.tiny_models import tiny_model

RANK, ALPHA = 2, 1.0
UNET, TE1, TE2 = "model.diffusion_model.", "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."


@pytest.fixture
def xl():
    return tiny_model("sdxl")


def test_sdxl_diffusers_block_names_follow_its_config(xl):
    """Tiny base: channel_mult (1, 2, 2), one res block per level, attention at levels 1 and 2 only,
    depth 2 at level 2 (diffusers' convert_ldm_unet_checkpoint walked with these numbers)."""
    table = lora_targets(xl)
    expected = {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": "input_blocks.3.1.transformer_blocks.0.attn2.to_k",
        "unet.down_blocks.2.attentions.0.transformer_blocks.1.ff.net.0.proj": "input_blocks.5.1.transformer_blocks.1.ff.net.0.proj",
        "lora_unet_down_blocks_1_downsamplers_0_conv": "input_blocks.4.0.op",
        "unet.up_blocks.0.attentions.1.proj_out": "output_blocks.1.1.proj_out",
        "lora_unet_up_blocks_0_upsamplers_0_conv": "output_blocks.1.2.conv",
        "lora_unet_up_blocks_2_resnets_1_conv_shortcut": "output_blocks.5.0.skip_connection",
        "unet.add_embedding.linear_1": "label_emb.0.0",
        "lora_unet_mid_block_attentions_0_transformer_blocks_1_attn1_to_out_0": "middle_block.1.transformer_blocks.1.attn1.to_out.0",
    }
    assert {k: table[k].module for k in expected} == {k: "model.diffusion_model." + v for k, v in expected.items()}
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" not in table        # no attention at level 0
    q = table["text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj"]
    assert (q.module, q.param, q.rows) == (TE2 + "transformer.resblocks.1.attn", "in_proj_weight", (64, 96))
    assert table["lora_te1_text_model_encoder_layers_2_self_attn_out_proj"].module == \
        TE1 + "transformer.resblocks.2.attn.out_proj"


def _lora(xl, names, up_key=".lora_up.weight", down_key=".lora_down.weight", alpha=True, seed=0):
    table, g, sd = lora_targets(xl), torch.Generator().manual_seed(seed), {}
    for name in names:
        t = table[name]
        w = getattr(xl.get_submodule(t.module), t.param)
        w = w[slice(*t.rows)] if t.rows else w
        kernel = tuple(w.shape[2:])
        sd[name + down_key] = torch.randn((RANK, w.shape[1], *kernel), generator=g) * 0.1
        sd[name + up_key] = torch.randn((w.shape[0], RANK, *((1, 1) if kernel else ())), generator=g) * 0.1
        if alpha:
            sd[name + ".alpha"] = torch.tensor(ALPHA)
    return sd


def _by_hand(xl, sd, names, weight, up_key, down_key, scale):
    """W + weight * scale * up @ down for every layer, in float32, into a copy of the state dict."""
    table, state = lora_targets(xl), {k: v.clone() for k, v in xl.state_dict().items()}
    for name in names:
        t = table[name]
        up, down = sd[name + up_key].flatten(1), sd[name + down_key]
        delta = (up @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
        key = f"{t.module}.{t.param}"
        rows = slice(*t.rows) if t.rows else slice(None)
        state[key][rows] = state[key][rows] + weight * scale * delta.reshape(state[key][rows].shape)
    return state


def _outputs(m):
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([400])
    with torch.no_grad():
        c = m.get_learned_conditioning(["a red circle"], original_size=(64, 64), target_size=(64, 64))
        return m.apply_model(x, t, c), c["c_crossattn"][0], c["y"]


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_sdxl_lora_in_diffusers_naming_applies_and_removes_bit_exactly(xl, fmt):
    table = lora_targets(xl)
    if fmt == "kohya":                 # kohya on a diffusers UNet + lora_te1_ / lora_te2_
        names = [n for n in table if n.startswith(("lora_unet_down_blocks", "lora_unet_mid_block", "lora_unet_up_blocks",
                                                   "lora_te1_", "lora_te2_"))]
        up_key, down_key, scale = ".lora_up.weight", ".lora_down.weight", ALPHA / RANK
    else:                              # PEFT / diffusers: unet., text_encoder., text_encoder_2.
        names = [n for n in table if n.startswith(("unet.", "text_encoder.", "text_encoder_2."))]
        up_key, down_key, scale = ".lora_B.weight", ".lora_A.weight", 1.0
    assert any("text_encoder_2" in n or "lora_te2_" in n for n in names)
    sd = _lora(xl, names, up_key, down_key, alpha=fmt == "kohya")
    before = {k: v.clone() for k, v in xl.state_dict().items()}
    base_out = _outputs(xl)
    reference = tiny_model("sdxl")
    reference.load_state_dict(_by_hand(xl, sd, names, 0.7, up_key, down_key, scale))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                   # every key is known
        assert apply_lora(xl, sd, 0.7) == len(names)
    patched = xl.state_dict()
    for k, v in reference.state_dict().items():
        assert torch.allclose(patched[k], v, rtol=0, atol=1e-6), k
    for ours, ref, base in zip(_outputs(xl), _outputs(reference), base_out):
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5) and not torch.allclose(ours, base, atol=1e-4)
    remove_lora(xl)
    restored = xl.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in before.items())


def test_sdxl_unknown_lora_keys_are_warned_and_the_rest_applies(xl):
    good = "lora_te2_text_model_encoder_layers_0_mlp_fc1"
    sd = _lora(xl, [good])
    sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] = torch.zeros(2, 32)
    sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"] = torch.zeros(32, 2)
    sd["lora_te3_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(2, 32)
    with pytest.warns(UserWarning, match="down_blocks_0_attentions_0.*lora_te3_|lora_te3_.*down_blocks_0_attentions_0"):
        assert apply_lora(xl, sd) == 1
    remove_lora(xl)


def sdxl_lora(xl, fmt: str, seed: int = 0) -> dict:
    """What trainers write for SDXL: kohya (sgm-named UNet attention layers, lora_te1_ / lora_te2_, alpha)
    or PEFT (unet.*attentions*, text_encoder., text_encoder_2.; no alpha)."""
    table = lora_targets(xl)
    if fmt == "kohya":
        names = [n for n in table if n.startswith(("lora_te1_", "lora_te2_")) or n.startswith(
            ("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks"))
            and ("transformer_blocks" in n or n.endswith(("proj_in", "proj_out")))]
        return _lora(xl, names, seed=seed)
    names = [n for n in table if n.startswith(("text_encoder.", "text_encoder_2.")) or
             n.startswith("unet.") and ".attentions." in n]
    return _lora(xl, names, ".lora_B.weight", ".lora_A.weight", alpha=False, seed=seed)


def sdxl_inputs(xl):
    """(CLIP-L tokens, OpenCLIP tokens, x, t, context, y) for comparing against diffusers."""
    g = torch.Generator().manual_seed(3)
    prompt = ["a red circle on a blue square"]
    return (xl.conditioner.embedders[0].tokenize(prompt), xl.conditioner.embedders[1].tokenize(prompt),
            torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]), torch.randn(1, 77, 64, generator=g),
            torch.randn(1, 72, generator=g))


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_sdxl_lora_matches_diffusers_own_loader(xl, fmt):
    """Recorded by tests/data/lora/record_diffusers_sdxl_reference.py: diffusers' UNet and transformers'
    two text encoders on the same weights, the same LoRA loaded by StableDiffusionXLLoraLoaderMixin."""
    from pathlib import Path

    from safetensors.torch import load_file
    ref = load_file(Path(__file__).parent / "data" / "lora" / f"diffusers_sdxl_{fmt}.safetensors")
    tokens_l, tokens_g, x, t, ctx, y = sdxl_inputs(xl)

    def run():
        with torch.no_grad():
            return (xl.model.diffusion_model(x, t, context=ctx, y=y), xl.conditioner.embedders[0].encode_tokens(tokens_l),
                    xl.conditioner.embedders[1].encode_tokens(tokens_g)[0])

    def rel(a, b):
        return float((a - b).norm() / b.norm())
    for name, ours in zip(("eps", "text_l", "text_g"), run()):
        assert rel(ours, ref[name + "_base"]) < 1e-5, name                     # the same base model
    apply_lora(xl, sdxl_lora(xl, fmt), 1.0)
    for name, ours in zip(("eps", "text_l", "text_g"), run()):
        assert rel(ours, ref[name]) < 1e-4, (name, rel(ours, ref[name]))
        assert rel(ref[name], ref[name + "_base"]) > 1e-3                      # the LoRA changed it


def _a1111_style(embedder_tower, tokens_with_zeros, positions, vectors, encode):
    """A1111's way (EmbeddingsWithFixes): token 0 at the embedding's positions, then the token
    embedding's output overwritten there by the vectors."""
    def fix(module, args, out):
        out = out.clone()
        out[:, positions] = vectors.to(out)
        return out
    handle = embedder_tower.token_embedding.register_forward_hook(fix)
    try:
        return encode(tokens_with_zeros)
    finally:
        handle.remove()


def test_sdxl_embedding_pair_goes_to_both_towers(xl, tmp_path):
    from core.embeddings import load_embeddings
    from core.models.clip_text import BOS_ID, EOS_ID, clip_bpe
    g = torch.Generator().manual_seed(1)
    pair = {"clip_l": torch.randn(2, 32, generator=g), "clip_g": torch.randn(2, 32, generator=g)}
    save_file(pair, tmp_path / "shinystyle.safetensors")
    embeddings = load_embeddings(tmp_path)
    c, _ = sdxl_conditioning(xl, "a cat shinystyle", "", size=(64, 64), embeddings=embeddings)
    c = with_steps(c, 10)                                   # an embedding is prompt syntax's path (chunks)
    plain, _ = sdxl_conditioning(xl, "a cat shinystyle", "", size=(64, 64))
    assert not torch.allclose(c["y"], plain["y"])

    ids = clip_bpe().encode("a cat")
    zeros = ids + [0, 0]
    clip_l, big_g = xl.conditioner.embedders[0], xl.conditioner.embedders[1]
    rows = {0: [BOS_ID] + zeros + [EOS_ID] + [clip_l.pad_id] * (77 - len(zeros) - 2),
            1: [BOS_ID] + zeros + [EOS_ID] + [big_g.pad_id] * (77 - len(zeros) - 2)}
    positions = [1 + len(ids), 2 + len(ids)]
    with torch.no_grad():
        hidden_l = _a1111_style(clip_l.transformer, torch.tensor([rows[0]]), positions, pair["clip_l"],
                                clip_l.encode_tokens)
        hidden_g, pooled = _a1111_style(big_g.model, torch.tensor([rows[1]]), positions, pair["clip_g"],
                                        big_g.encode_tokens)
    ctx = c["c_crossattn"][0]
    assert torch.allclose(ctx[..., :32], hidden_l, atol=1e-5) and torch.allclose(ctx[..., 32:], hidden_g, atol=1e-5)
    assert torch.allclose(c["y"][:, :24], pooled, atol=1e-5)         # pooled read at the EOS, as A1111


def test_sdxl_txt2img_takes_lora_tags_and_embeddings(xl, tmp_path):
    from core.pipelines import parse_infotext, txt2img
    (tmp_path / "lora").mkdir()
    (tmp_path / "emb").mkdir()
    save_file(_lora(xl, ["lora_te1_text_model_encoder_layers_0_mlp_fc1", "unet.mid_block.attentions.0.proj_in"]),
              tmp_path / "lora" / "ink.safetensors")
    g = torch.Generator().manual_seed(1)
    save_file({"clip_l": torch.randn(1, 32, generator=g), "clip_g": torch.randn(1, 32, generator=g)},
              tmp_path / "emb" / "shinystyle.safetensors")
    run = dict(steps=2, sampler="euler", seed=1, width=64, height=64, guidance_scale=5.0)
    plain = txt2img(xl, "a cat", **run)[0]
    image = txt2img(xl, "a cat <lora:ink:0.8> shinystyle", lora_dir=tmp_path / "lora",
                    embeddings_dir=tmp_path / "emb", **run)[0]
    params = parse_infotext(image.info["parameters"])
    assert params["lora_hashes"].startswith("ink: ") and params["ti_hashes"].startswith("shinystyle: ")
    assert image.tobytes() != plain.tobytes()
