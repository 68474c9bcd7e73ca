"""Conditioning encoders tau_theta on tiny models (CPU): key layouts from FACTS.md section 4 and
latent-diffusion's x_transformer.py written out by hand, and the numerics against hand-written
forwards (HF-style CLIP text with separate q/k/v, x-transformers encoder)."""

import math
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F

from core.checkpoints.clip_keys import hf_clip_text_to_ours, is_hf_clip_text_keys, ours_to_hf_clip_text
from core.models.clip_text import (FrozenCLIPEmbedder, FrozenCLIPEmbedderConfig, FrozenOpenCLIPEmbedder,
                                   FrozenOpenCLIPEmbedderConfig)
from core.models.conditioners import (ClassEmbedder, ClassEmbedderConfig, LayoutEmbedder, LayoutEmbedderConfig,
                                      TransformerEmbedder, TransformerEmbedderConfig)

W, HEADS, LAYERS, MAXPOS = 32, 2, 2, 77
BOS, EOS = 49406, 49407


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere (zero-init biases would hide q/k/v order mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            is_norm_gain = name.endswith("weight") and p.ndim == 1
            p.copy_(1 + 0.1 * noise if is_norm_gain else 0.3 * noise)
    return module


def sd1_tiny(**kw) -> FrozenCLIPEmbedder:
    cfg = FrozenCLIPEmbedderConfig(hidden_size=W, intermediate_size=4 * W, num_hidden_layers=LAYERS,
                                   num_attention_heads=HEADS, **kw)
    return FrozenCLIPEmbedder(cfg).eval()


def sd2_tiny(layer: str = "penultimate", embed_dim: int | None = 24) -> FrozenOpenCLIPEmbedder:
    cfg = FrozenOpenCLIPEmbedderConfig(text_cfg=dict(width=W, heads=HEADS, layers=LAYERS),
                                       embed_dim=embed_dim, layer=layer)
    return FrozenOpenCLIPEmbedder(cfg).eval()


# ---------------------------------------------------------------------------------------------
# Hand-written reference text forward (HF CLIPTextModel style: separate q/k/v projections).
# ---------------------------------------------------------------------------------------------

def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def exact_gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def ref_clip_text(tokens, hf: dict, n_blocks: int, act, final_ln: bool, heads: int = HEADS):
    """`hf` holds HF CLIP text keys without any prefix (`embeddings.…`, `encoder.layers.N.…`)."""
    B, L = tokens.shape
    x = hf["embeddings.token_embedding.weight"][tokens] + hf["embeddings.position_embedding.weight"][:L]
    causal = torch.full((L, L), float("-inf")).triu(1)                      # (L, L)
    for n in range(n_blocks):
        p = lambda name: hf[f"encoder.layers.{n}.{name}"]
        h = layer_norm(x, p("layer_norm1.weight"), p("layer_norm1.bias"))
        q, k, v = (h @ p(f"self_attn.{w}_proj.weight").T + p(f"self_attn.{w}_proj.bias") for w in "qkv")
        q, k, v = (t.view(B, L, heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, h, L, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + causal
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, -1)
        x = x + a @ p("self_attn.out_proj.weight").T + p("self_attn.out_proj.bias")
        h = layer_norm(x, p("layer_norm2.weight"), p("layer_norm2.bias"))
        h = act(h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias"))
        x = x + h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
    if final_ln:
        x = layer_norm(x, hf["final_layer_norm.weight"], hf["final_layer_norm.bias"])
    return x


def open_clip_tower_as_hf(tower) -> dict:
    """Read the open_clip tower's weights into the HF names (splitting in_proj here, by hand)."""
    hf = {"embeddings.token_embedding.weight": tower.token_embedding.weight,
          "embeddings.position_embedding.weight": tower.positional_embedding,
          "final_layer_norm.weight": tower.ln_final.weight, "final_layer_norm.bias": tower.ln_final.bias}
    for n, blk in enumerate(tower.transformer.resblocks):
        pre = f"encoder.layers.{n}."
        Wd = blk.attn.in_proj_weight.shape[1]
        for i, w in enumerate("qkv"):
            hf[pre + f"self_attn.{w}_proj.weight"] = blk.attn.in_proj_weight[i * Wd:(i + 1) * Wd]
            hf[pre + f"self_attn.{w}_proj.bias"] = blk.attn.in_proj_bias[i * Wd:(i + 1) * Wd]
        for ours, theirs in [("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]:
            mod = blk.get_submodule(ours)
            hf[pre + theirs + ".weight"], hf[pre + theirs + ".bias"] = mod.weight, mod.bias
    return hf


def hf_tiny_state_dict(seed: int = 1, text_model: bool = True) -> dict:
    """An SD1-style HF CLIP text state dict for the tiny shape, built by hand."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.3 * torch.randn(*s, generator=g)
    pre = "transformer.text_model." if text_model else "transformer."
    sd = {pre + "embeddings.token_embedding.weight": r(49408, W),
          pre + "embeddings.position_embedding.weight": r(MAXPOS, W),
          pre + "embeddings.position_ids": torch.arange(MAXPOS)[None],
          pre + "final_layer_norm.weight": 1 + r(W) / 3, pre + "final_layer_norm.bias": r(W)}
    for n in range(LAYERS):
        lp = f"{pre}encoder.layers.{n}."
        for w in "qkvo":
            name = "out_proj" if w == "o" else f"{w}_proj"
            sd[lp + f"self_attn.{name}.weight"], sd[lp + f"self_attn.{name}.bias"] = r(W, W), r(W)
        for ln in ("layer_norm1", "layer_norm2"):
            sd[lp + ln + ".weight"], sd[lp + ln + ".bias"] = 1 + r(W) / 3, r(W)
        sd[lp + "mlp.fc1.weight"], sd[lp + "mlp.fc1.bias"] = r(4 * W, W), r(4 * W)
        sd[lp + "mlp.fc2.weight"], sd[lp + "mlp.fc2.bias"] = r(W, 4 * W), r(W)
    return sd


def strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------
# Key layouts
# ---------------------------------------------------------------------------------------------

def test_sd2_openclip_key_layout():
    m = sd2_tiny(embed_dim=24)
    expected = {"model.token_embedding.weight": (49408, W), "model.positional_embedding": (MAXPOS, W),
                "model.ln_final.weight": (W,), "model.ln_final.bias": (W,),
                "model.text_projection": (W, 24), "model.logit_scale": ()}
    for n in range(LAYERS):
        p = f"model.transformer.resblocks.{n}."
        expected.update({p + "ln_1.weight": (W,), p + "ln_1.bias": (W,),
                         p + "attn.in_proj_weight": (3 * W, W), p + "attn.in_proj_bias": (3 * W,),
                         p + "attn.out_proj.weight": (W, W), p + "attn.out_proj.bias": (W,),
                         p + "ln_2.weight": (W,), p + "ln_2.bias": (W,),
                         p + "mlp.c_fc.weight": (4 * W, W), p + "mlp.c_fc.bias": (4 * W,),
                         p + "mlp.c_proj.weight": (W, 4 * W), p + "mlp.c_proj.bias": (W,)})
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected
    assert "model.attn_mask" in dict(m.named_buffers())              # present, but non-persistent
    assert not any(p.requires_grad for p in m.parameters())
    # embed_dim defaults to the width when text_cfg is given
    assert sd2_tiny(embed_dim=None).model.text_projection.shape == (W, W)


def test_sd2_arch_shape_read_offline_from_open_clip_json():
    cfg = FrozenOpenCLIPEmbedderConfig(arch="ViT-H-14", layer="penultimate")
    tc = cfg.clip_text_cfg()
    assert (tc.width, tc.heads, tc.layers, tc.context_length) == (1024, 16, 24, 77)
    assert cfg.resolved_embed_dim() == 1024 and cfg.resolved_quick_gelu() is False
    # an explicit text_cfg wins over the arch
    cfg2 = FrozenOpenCLIPEmbedderConfig(arch="ViT-H-14", text_cfg=dict(width=W, heads=HEADS, layers=1))
    assert cfg2.clip_text_cfg().width == W and cfg2.resolved_embed_dim() == W
    with pytest.raises(ValueError, match="unknown open_clip arch"):
        FrozenOpenCLIPEmbedderConfig(arch="ViT-Nope")
    with pytest.raises(ValueError, match="CLIPTextCfg does not know"):
        FrozenOpenCLIPEmbedderConfig(text_cfg=dict(width=W, hieght=3))
    with pytest.raises(ValueError, match="layer must be one of"):
        FrozenOpenCLIPEmbedderConfig(layer="pooled")


def test_released_shapes_on_meta_device():
    """The real ViT-H/14 (SD2) and ViT-L/14 (SD1) towers, built without memory: shapes of FACTS.md section 4."""
    with torch.device("meta"):
        sd2 = FrozenOpenCLIPEmbedder(FrozenOpenCLIPEmbedderConfig(arch="ViT-H-14", layer="penultimate"))
        sd1 = FrozenCLIPEmbedder()
    s2 = sd2.state_dict()
    assert len(s2) == 6 + 24 * 12
    assert s2["model.positional_embedding"].shape == (77, 1024)
    assert s2["model.transformer.resblocks.23.attn.in_proj_weight"].shape == (3072, 1024)
    assert isinstance(sd2.model.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)        # exact GELU
    hf = ours_to_hf_clip_text(sd1.state_dict())
    assert len(hf) == 197                                 # SD1's cond_stage_model.* key count
    assert hf["transformer.text_model.encoder.layers.11.self_attn.q_proj.weight"].shape == (768, 768)
    assert hf["transformer.text_model.encoder.layers.11.mlp.fc1.weight"].shape == (3072, 768)


def test_transformer_embedder_key_layout():
    n_embed, depth, vocab, seq = 24, 2, 100, 16
    m = TransformerEmbedder(TransformerEmbedderConfig(n_embed=n_embed, n_layer=depth, vocab_size=vocab,
                                                      max_seq_len=seq, heads=2, dim_head=8))
    inner = 2 * 8
    expected = {"transformer.token_emb.weight": (vocab, n_embed),
                "transformer.pos_emb.emb.weight": (seq, n_embed),
                "transformer.norm.weight": (n_embed,), "transformer.norm.bias": (n_embed,),
                "transformer.to_logits.weight": (vocab, n_embed), "transformer.to_logits.bias": (vocab,)}
    for i in range(depth):
        a, f = f"transformer.attn_layers.layers.{2 * i}.", f"transformer.attn_layers.layers.{2 * i + 1}."
        expected.update({a + "0.weight": (n_embed,), a + "0.bias": (n_embed,),
                         a + "1.to_q.weight": (inner, n_embed), a + "1.to_k.weight": (inner, n_embed),
                         a + "1.to_v.weight": (inner, n_embed),
                         a + "1.to_out.weight": (n_embed, inner), a + "1.to_out.bias": (n_embed,),
                         f + "0.weight": (n_embed,), f + "0.bias": (n_embed,),
                         f + "1.net.0.0.weight": (4 * n_embed, n_embed), f + "1.net.0.0.bias": (4 * n_embed,),
                         f + "1.net.2.weight": (n_embed, 4 * n_embed), f + "1.net.2.bias": (n_embed,)})
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    # the reference's attention is 8 heads of 64 whatever the width (x-transformers defaults)
    big = TransformerEmbedder(TransformerEmbedderConfig(n_embed=40, n_layer=1, vocab_size=10, max_seq_len=4))
    assert big.state_dict()["transformer.attn_layers.layers.0.1.to_q.weight"].shape == (512, 40)


def test_class_embedder_keys_and_values():
    m = ClassEmbedder(ClassEmbedderConfig(embed_dim=8, n_classes=1001, key="class_label"))
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {"embedding.weight": (1001, 8)}
    assert m.null_class == 1000
    out = m(torch.tensor([3, 1000]))
    assert out.shape == (2, 1, 8)
    torch.testing.assert_close(out[:, 0], m.embedding.weight[[3, 1000]])
    torch.testing.assert_close(m({"class_label": [3, 1000]}), out)
    torch.testing.assert_close(m.unconditional(2), m.embedding.weight[[1000, 1000]][:, None])
    plain = ClassEmbedder(ClassEmbedderConfig(embed_dim=8, n_classes=1000))
    assert plain.null_class is None
    with pytest.raises(ValueError, match="null class"):
        plain.unconditional(1)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        plain([1000])
    with pytest.raises(ValueError, match="integers"):
        plain(torch.tensor([1.0]))


# ---------------------------------------------------------------------------------------------
# Text encoders: numerics
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_sd2_penultimate_and_last_both_apply_ln_final():
    texts = ["a red circle", ""]
    for layer, n_blocks in [("penultimate", LAYERS - 1), ("last", LAYERS)]:
        m = randomize_(sd2_tiny(layer=layer))
        tokens = m.tokenize(texts)
        hf = open_clip_tower_as_hf(m.model)
        want = ref_clip_text(tokens, hf, n_blocks, exact_gelu, final_ln=True)
        got = m(texts)
        assert got.shape == (2, MAXPOS, W) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        # without ln_final (trap 2) the answer is far off
        no_ln = ref_clip_text(tokens, hf, n_blocks, exact_gelu, final_ln=False)
        assert (got - no_ln).abs().max() > 0.1
        # QuickGELU instead of exact GELU is detectably different too
        assert (got - ref_clip_text(tokens, hf, n_blocks, quick_gelu, final_ln=True)).abs().max() > 1e-3
    # penultimate != last on the same weights
    a = randomize_(sd2_tiny(layer="penultimate"))
    b = sd2_tiny(layer="last")
    b.load_state_dict(a.state_dict(), strict=True)
    assert (a(texts) - b(texts)).abs().max() > 0.1


@torch.no_grad()
def test_sd1_embedder_matches_hand_written_hf_clip_forward():
    for text_model in (True, False):                     # transformers < 5 and >= 5 layouts
        hf_sd = hf_tiny_state_dict(text_model=text_model)
        m = sd1_tiny()
        m.load_state_dict(hf_clip_text_to_ours(hf_sd), strict=True)
        texts = ["a photo of a cat", ""]
        tokens = m.tokenize(texts)
        hf = strip(hf_sd, "transformer.text_model." if text_model else "transformer.")
        want = ref_clip_text(tokens, hf, LAYERS, quick_gelu, final_ln=True)
        torch.testing.assert_close(m(texts), want, rtol=1e-4, atol=1e-4)
    # layer "hidden" = HF hidden_states[idx]: idx blocks run, no final_layer_norm (as the reference)
    h = sd1_tiny(layer="hidden", layer_idx=1)
    h.load_state_dict(hf_clip_text_to_ours(hf_sd), strict=True)
    torch.testing.assert_close(h.encode_tokens(tokens), ref_clip_text(tokens, hf, 1, quick_gelu, False),
                               rtol=1e-4, atol=1e-4)
    # output dtype follows the weights
    assert m.double()(texts).dtype == torch.float64


def test_sd1_config_checks():
    assert FrozenCLIPEmbedderConfig().hidden_size == 768
    assert FrozenCLIPEmbedderConfig.from_version("openai/clip-vit-base-patch32").hidden_size == 512
    with pytest.raises(ValueError, match="unknown CLIP version"):
        FrozenCLIPEmbedderConfig.from_version("openai/clip-vit-huge")
    with pytest.raises(ValueError, match="layer_idx"):
        FrozenCLIPEmbedderConfig(layer="hidden")
    with pytest.raises(ValueError, match="hidden_act"):
        FrozenCLIPEmbedderConfig(hidden_act="relu")


# ---------------------------------------------------------------------------------------------
# Tokenisation (trap 1)
# ---------------------------------------------------------------------------------------------

def test_tokenizers_pad_differently_sd1_eos_sd2_zero():
    sd1, sd2 = sd1_tiny(), sd2_tiny()
    words = [320, 1125, 539, 320, 2368]                   # "a photo of a cat" in the OpenAI BPE
    t1, t2 = sd1.tokenize(["a photo of a cat"]), sd2.tokenize(["a photo of a cat"])
    assert t1.shape == t2.shape == (1, 77) and t1.dtype == torch.long
    assert t1[0].tolist() == [BOS] + words + [EOS] * 71
    assert t2[0].tolist() == [BOS] + words + [EOS] + [0] * 70
    assert sd1.tokenize([""])[0].tolist() == [BOS] + [EOS] * 76
    assert sd2.tokenize([""])[0].tolist() == [BOS, EOS] + [0] * 75
    # SD2's tokens are exactly what the reference calls (open_clip.tokenize)
    texts = ["A  Photo\nof a CAT!", "", "word " * 100]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(sd2.tokenize(texts), open_clip.tokenize(texts))


def test_truncation_warns_and_forces_eos_at_position_76():
    sd1, sd2 = sd1_tiny(), sd2_tiny()
    long_prompt = "a " * 100                              # 100 tokens + BOS + EOS = 102 > 77
    for m in (sd1, sd2):
        with pytest.warns(UserWarning, match="last 25 tokens were dropped"):
            t = m.tokenize([long_prompt])
        assert t[0, 0] == BOS and t[0, 76] == EOS and (t[0, 1:76] == 320).all()
    fits = "a " * 75                                      # exactly 77 with BOS and EOS: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = sd1.tokenize([fits])
    assert t[0, 76] == EOS and t[0, 75] == 320
    with pytest.raises(TypeError):
        sd1.tokenize([3])


# ---------------------------------------------------------------------------------------------
# HF CLIP key mapping
# ---------------------------------------------------------------------------------------------

def test_hf_mapping_round_trip_and_qkv_concat():
    ours = randomize_(sd1_tiny()).state_dict()
    hf = ours_to_hf_clip_text(ours)
    pid = hf["transformer.text_model.embeddings.position_ids"]
    assert pid.dtype == torch.int64 and pid.tolist() == [list(range(MAXPOS))]
    back = hf_clip_text_to_ours(hf)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    assert hf.keys() == hf_tiny_state_dict().keys()       # ours -> HF gives the original layout

    hand = hf_tiny_state_dict()
    mapped = hf_clip_text_to_ours(hand)
    p = "transformer.text_model.encoder.layers.1.self_attn."
    torch.testing.assert_close(mapped["transformer.transformer.resblocks.1.attn.in_proj_weight"],
                               torch.cat([hand[p + "q_proj.weight"], hand[p + "k_proj.weight"],
                                          hand[p + "v_proj.weight"]]))
    torch.testing.assert_close(mapped["transformer.transformer.resblocks.1.attn.in_proj_bias"],
                               torch.cat([hand[p + "q_proj.bias"], hand[p + "k_proj.bias"],
                                          hand[p + "v_proj.bias"]]))
    assert torch.equal(mapped["transformer.positional_embedding"],
                       hand["transformer.text_model.embeddings.position_embedding.weight"])
    v5 = hf_clip_text_to_ours(hf_tiny_state_dict(text_model=False))
    assert v5.keys() == mapped.keys() and all(torch.equal(v5[k], mapped[k]) for k in v5)


def test_hf_mapping_rejects_unknown_and_incomplete_keys():
    hand = hf_tiny_state_dict()
    with pytest.raises(ValueError, match="transformer.text_model.pooler.weight"):
        hf_clip_text_to_ours({**hand, "transformer.text_model.pooler.weight": torch.zeros(1)})
    del hand["transformer.text_model.encoder.layers.0.self_attn.v_proj.weight"]
    with pytest.raises(ValueError, match="v_proj.weight"):
        hf_clip_text_to_ours(hand)
    with pytest.raises(ValueError, match="model.logit_scale"):
        ours_to_hf_clip_text({"model.logit_scale": torch.zeros(())})


def test_is_hf_clip_text_keys():
    assert is_hf_clip_text_keys(hf_tiny_state_dict().keys())
    assert is_hf_clip_text_keys(hf_tiny_state_dict(text_model=False).keys())
    assert is_hf_clip_text_keys(["cond_stage_model.transformer.text_model.final_layer_norm.weight"])
    assert not is_hf_clip_text_keys(sd1_tiny().state_dict().keys())
    assert not is_hf_clip_text_keys(["cond_stage_model." + k for k in sd2_tiny().state_dict()])
    assert not is_hf_clip_text_keys(["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"])


# ---------------------------------------------------------------------------------------------
# TransformerEmbedder numerics and tokenizer
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_transformer_embedder_matches_hand_written_x_transformers_encoder():
    D, depth, heads, dh = 24, 2, 2, 8
    m = randomize_(TransformerEmbedder(TransformerEmbedderConfig(n_embed=D, n_layer=depth, vocab_size=50,
                                                                 max_seq_len=12, heads=heads, dim_head=dh)))
    sd = strip(m.state_dict(), "transformer.")
    tokens = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    x = sd["token_emb.weight"][tokens] + sd["pos_emb.emb.weight"][:12]
    for i in range(depth):
        a, f = f"attn_layers.layers.{2 * i}.", f"attn_layers.layers.{2 * i + 1}."
        h = F.layer_norm(x, (D,), sd[a + "0.weight"], sd[a + "0.bias"])
        q, k, v = ((h @ sd[a + f"1.to_{w}.weight"].T).view(3, 12, heads, dh).transpose(1, 2) for w in "qkv")
        att = (torch.einsum("bhid,bhjd->bhij", q, k) * dh ** -0.5).softmax(-1)   # no mask, not causal
        o = torch.einsum("bhij,bhjd->bhid", att, v).transpose(1, 2).reshape(3, 12, heads * dh)
        x = x + o @ sd[a + "1.to_out.weight"].T + sd[a + "1.to_out.bias"]
        h = F.layer_norm(x, (D,), sd[f + "0.weight"], sd[f + "0.bias"])
        h = exact_gelu(h @ sd[f + "1.net.0.0.weight"].T + sd[f + "1.net.0.0.bias"])
        x = x + h @ sd[f + "1.net.2.weight"].T + sd[f + "1.net.2.bias"]
    want = F.layer_norm(x, (D,), sd["norm.weight"], sd["norm.bias"])
    torch.testing.assert_close(m.encode_tokens(tokens), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m(tokens), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="BERT"):
        m.tokenize(["a cat"])
    with pytest.raises(ValueError, match="exceed max_seq_len"):
        m.encode_tokens(torch.zeros(1, 13, dtype=torch.long))


def test_transformer_embedder_clip_tokenizer_pads_zero():
    m = TransformerEmbedder(TransformerEmbedderConfig(n_embed=16, n_layer=1, vocab_size=49408, max_seq_len=10,
                                                      heads=2, dim_head=8, tokenizer="clip", with_logits=False))
    assert not any(k.startswith("transformer.to_logits") for k in m.state_dict())
    t = m.tokenize(["a cat", ""])
    assert t.tolist() == [[BOS, 320, 2368, EOS] + [0] * 6, [BOS, EOS] + [0] * 8]
    assert m(["a cat", ""]).shape == (2, 10, 16)
    with pytest.raises(ValueError, match="vocab_size"):
        TransformerEmbedderConfig(n_embed=16, n_layer=1, vocab_size=100, tokenizer="clip")


# ---------------------------------------------------------------------------------------------
# LayoutEmbedder
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_layout_embedder_tokens_and_empty_layout():
    D, nf = 16, 4
    m = randomize_(LayoutEmbedder(LayoutEmbedderConfig(embed_dim=D, n_classes=5, max_objects=3, n_freqs=nf)))
    out = m([[(2, 0.1, 0.2, 0.5, 0.9)], []])
    assert out.shape == (2, 3, D)
    assert torch.equal(out[1], m.null_token.expand(3, D))                # empty layout: all null tokens
    assert torch.equal(out[0, 1:], m.null_token.expand(2, D))
    box = torch.tensor([0.1, 0.2, 0.5, 0.9])
    ang = torch.stack([box[c] * math.pi * 2 ** k for c in range(4) for k in range(nf)])
    feats = torch.cat([ang.sin(), ang.cos()])
    want = m.class_embedding.weight[2] + m.box_proj.weight @ feats + m.box_proj.bias
    torch.testing.assert_close(out[0, 0], want, rtol=1e-5, atol=1e-5)
    assert m([[]]).shape == (1, 3, D)


def test_layout_embedder_errors():
    m = LayoutEmbedder(LayoutEmbedderConfig(embed_dim=8, n_classes=5, max_objects=2))
    with pytest.raises(ValueError, match=r"class id must be an int in \[0, 4\]"):
        m([[(5, 0.1, 0.1, 0.2, 0.2)]])
    with pytest.raises(ValueError, match="class id"):
        m([[(1.5, 0.1, 0.1, 0.2, 0.2)]])
    with pytest.raises(ValueError, match="0 <= x0 <= x1 <= 1"):
        m([[(1, 0.1, 0.1, 1.2, 0.2)]])
    with pytest.raises(ValueError, match="0 <= x0 <= x1 <= 1"):
        m([[(1, 0.5, 0.1, 0.2, 0.2)]])
    with pytest.raises(ValueError, match="at most 2"):
        m([[(1, 0, 0, 1, 1)] * 3])
    with pytest.raises(ValueError, match="class_id, x0, y0, x1, y1"):
        m([[(1, 0, 0, 1)]])


def test_compact_vocab_config_is_checked():
    from core.models.conditioners import TransformerEmbedderConfig
    ok = TransformerEmbedderConfig(n_embed=8, n_layer=1, vocab_size=3, tokenizer="clip", vocab=[0, 320, 49407])
    assert ok.vocab == (0, 320, 49407)
    for bad in (dict(vocab_size=3, tokenizer="clip", vocab=(5, 320, 49407)),      # pad id 0 not first
                dict(vocab_size=4, tokenizer="clip", vocab=(0, 320, 49407)),      # size != len(vocab)
                dict(vocab_size=3, tokenizer="bert", vocab=(0, 320, 49407))):     # clip only
        with pytest.raises(ValueError, match="compact vocab"):
            TransformerEmbedderConfig(n_embed=8, n_layer=1, **bad)


def test_sdxl_openclip2_penultimate_without_ln_final_and_pooled_at_eos():
    """sgm FrozenOpenCLIPEmbedder2 (legacy False): the hidden state is the penultimate block's output
    WITHOUT ln_final (unlike SD2's); pooled = ln_final(last)[EOS] @ text_projection; pad 0."""
    from core.models.sdxl_conditioner import FrozenOpenCLIPEmbedder2, FrozenOpenCLIPEmbedder2Config
    cfg = FrozenOpenCLIPEmbedder2Config(text_cfg=dict(width=W, heads=HEADS, layers=LAYERS), embed_dim=24)
    emb = randomize_(FrozenOpenCLIPEmbedder2(cfg).eval())
    tokens = emb.tokenize(["a large red circle", ""])
    assert tokens[1, :3].tolist() == [BOS, EOS, 0]
    hidden, pooled = emb.encode_tokens(tokens)
    hf = open_clip_tower_as_hf(emb.model)
    with torch.no_grad():
        torch.testing.assert_close(hidden, ref_clip_text(tokens, hf, LAYERS - 1, exact_gelu, final_ln=False))
        last = ref_clip_text(tokens, hf, LAYERS, exact_gelu, final_ln=True)
        eos = [row.tolist().index(EOS) for row in tokens]
        torch.testing.assert_close(pooled, last[torch.arange(2), eos] @ emb.model.text_projection)
    legacy = FrozenOpenCLIPEmbedder2(FrozenOpenCLIPEmbedder2Config(
        text_cfg=dict(width=W, heads=HEADS, layers=LAYERS), embed_dim=24, legacy=True, always_return_pooled=False))
    legacy.load_state_dict(emb.state_dict())
    with torch.no_grad():                                  # legacy: SD2's penultimate, ln_final applied
        torch.testing.assert_close(legacy.encode_tokens(tokens),
                                   ref_clip_text(tokens, hf, LAYERS - 1, exact_gelu, final_ln=True))
    with pytest.raises(ValueError, match="legacy=False"):
        FrozenOpenCLIPEmbedder2Config(text_cfg=dict(width=W, heads=HEADS, layers=LAYERS), legacy=True)
