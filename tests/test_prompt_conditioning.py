"""A1111's prompt syntax in conditioning and sampling: chunks, emphasis, clip skip, BREAK, prompt
editing, alternation and AND, on tiny text encoders (no UNet) and a fake network; then end to end
through txt2img on a tiny SD model (recorded "Clip skip", scheduled prompts for every sampler)."""
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.models.clip_text import (BOS_ID, EOS_ID, FrozenCLIPEmbedder, FrozenCLIPEmbedderConfig,
                                   FrozenOpenCLIPEmbedder, FrozenOpenCLIPEmbedderConfig, clip_bpe, run_text_tower)
from core.models.conditioners import TransformerEmbedder, TransformerEmbedderConfig
from core.pipelines.conditioning import PromptConditioning, text_conditioning, with_steps
from core.samplers import SAMPLERS, SamplingSettings, sample_denoiser
from core.samplers.denoisers import CFGDenoiser
from core.samplers.scheduled import Composition, CondSchedule, ScheduledConditioning, conditioning_at
from tests.test_samplers import FakeModel_ac

TEXT = dict(width=32, heads=2, layers=3, context_length=77, vocab_size=49408)


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def fake_model(encoder):
    """What conditioning reads of a LatentDiffusion: the encoder and get_learned_conditioning."""
    return SimpleNamespace(cond_stage_model=encoder, get_learned_conditioning=lambda batch: encoder(batch),
                           config=SimpleNamespace(model_class="LatentDiffusion"))   # not SDXL's DiffusionEngine


@pytest.fixture(scope="module")
def sd1():
    cfg = FrozenCLIPEmbedderConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2)
    return fake_model(randomize(FrozenCLIPEmbedder(cfg)))


@pytest.fixture(scope="module")
def sd2():
    cfg = FrozenOpenCLIPEmbedderConfig(text_cfg=TEXT, layer="penultimate")
    return fake_model(randomize(FrozenOpenCLIPEmbedder(cfg), 1))


@pytest.fixture(scope="module")
def shapes():
    """Ours: the CLIP tokenizer, a compact vocabulary and a 16-token context."""
    bpe = clip_bpe()
    words = ["a", "red", "blue", "circle", "square", "on", "the", "left", ","]
    vocab = (0, BOS_ID, EOS_ID, *sorted({i for w in words for i in bpe.encode(w)}))
    cfg = TransformerEmbedderConfig(n_embed=16, n_layer=1, vocab_size=len(vocab), max_seq_len=16, heads=2,
                                    dim_head=8, tokenizer="clip", vocab=vocab, with_logits=False)
    return fake_model(randomize(TransformerEmbedder(cfg), 2))


def emphasised(z, weights):
    original = z.mean()
    z = z * torch.tensor(weights, dtype=z.dtype)[:, None]
    return z * (original / z.mean())


# ---------------------------------------------------------------------------------------------
# Encoding: plain prompts unchanged; chunks, emphasis, BREAK, clip skip
# ---------------------------------------------------------------------------------------------

def test_plain_prompts_take_the_old_path_and_syntax_with_unit_weights_equals_it(sd1, sd2):
    for m in (sd1, sd2):
        c, u = text_conditioning(m, "a red circle, on the left", "")
        assert torch.equal(c, m.get_learned_conditioning(["a red circle, on the left"]))
        assert torch.equal(u, m.get_learned_conditioning([""]))
        escaped, _ = text_conditioning(m, "a \\(red\\) circle")         # syntax, all weights 1: same numbers
        assert isinstance(escaped, PromptConditioning)
        assert torch.equal(with_steps(escaped, 10), m.get_learned_conditioning(["a (red) circle"]))


def test_emphasis_multiplies_token_embeddings_and_restores_the_mean(sd1):
    c, _ = text_conditioning(sd1, "a (red:1.5) [circle]")
    z = sd1.get_learned_conditioning(["a red circle"])[0]                  # the same tokens
    n_a, n_red = len(clip_bpe().encode("a ")), len(clip_bpe().encode("red"))
    weights = [1.0] * 77
    weights[1 + n_a:1 + n_a + n_red] = [1.5] * n_red
    weights[1 + n_a + n_red] = 1 / 1.1
    expected = emphasised(z, weights)
    assert torch.allclose(with_steps(c, 10)[0], expected, atol=1e-6)
    assert with_steps(c, 10)[0].mean().item() == pytest.approx(z.mean().item(), abs=1e-6)


def test_long_prompts_are_chunked_by_75_with_comma_backtracking(sd1, sd2):
    bpe = clip_bpe()
    words = " ".join(["red"] * 70) + ", " + " ".join(["blue"] * 10)          # comma at token 70
    ids = bpe.encode(words)
    assert len(ids) == 81 and ids[70] == bpe.encoder[",</w>"]
    for m in (sd1, sd2):
        c, _ = text_conditioning(m, words)
        z = with_steps(c, 10)
        assert z.shape == (1, 154, 32)
        first = m.get_learned_conditioning([bpe.decode(ids[:71])])          # up to and with the comma
        second = m.get_learned_conditioning([bpe.decode(ids[71:])])
        assert torch.allclose(z[0, :77], first[0], atol=1e-6)
        assert torch.allclose(z[0, 77:], second[0], atol=1e-6)
        _, u = text_conditioning(m, words, "ugly")                          # not padded to the prompt
        assert u.shape == (1, 77, 32)


def test_break_starts_a_new_chunk_padded_as_the_encoder_pads(sd1, sd2):
    for m in (sd1, sd2):
        c, _ = text_conditioning(m, "a red circle BREAK blue square")
        z = with_steps(c, 10)
        assert z.shape == (1, 154, 32)
        assert torch.allclose(z[0, :77], m.get_learned_conditioning(["a red circle"])[0], atol=1e-6)
        assert torch.allclose(z[0, 77:], m.get_learned_conditioning(["blue square"])[0], atol=1e-6)


def test_clip_skip_sd1_from_the_last_layer_sd2_from_the_penultimate(sd1, sd2):
    tokens = sd1.cond_stage_model.tokenize(["a red circle"])
    tower = sd1.cond_stage_model.transformer
    c, _ = text_conditioning(sd1, "a red circle", clip_skip=2)
    assert torch.allclose(with_steps(c, 5), tower.ln_final(run_text_tower(tower, tokens, 2)), atol=1e-6)
    tokens = sd2.cond_stage_model.tokenize(["a red circle"])
    tower = sd2.cond_stage_model.model
    c, _ = text_conditioning(sd2, "a red circle", clip_skip=2)               # penultimate (2 of 3), then 1
    assert torch.allclose(with_steps(c, 5), tower.ln_final(run_text_tower(tower, tokens, 1)), atol=1e-6)
    same, _ = text_conditioning(sd1, "a red circle", clip_skip=1)
    assert torch.equal(same, sd1.get_learned_conditioning(["a red circle"]))
    with pytest.raises(ValueError, match="clip_skip"):
        text_conditioning(sd1, "a", clip_skip=0)
    with pytest.raises(ValueError, match="at most 3"):
        text_conditioning(sd1, "a", clip_skip=9)


def test_shapes_models_parse_weights_out_and_truncate_in_one_chunk(shapes):
    c, _ = text_conditioning(shapes, "a (red:1.4) circle BREAK on the left")
    z = with_steps(c, 10)
    plain = shapes.get_learned_conditioning(["a red circle on the left"])    # no bracket or BREAK tokens
    assert z.shape == plain.shape == (1, 16, 16)
    n = len(clip_bpe().encode("a "))
    weights = [1.0] * 16
    weights[1 + n] = 1.4
    assert torch.allclose(z[0], emphasised(plain[0], weights), atol=1e-6)
    with pytest.warns(UserWarning, match="dropped"):
        long, _ = text_conditioning(shapes, "(a red circle) " * 6)
        assert with_steps(long, 10).shape == (1, 16, 16)
    with pytest.warns(UserWarning, match="ignores it"):
        text_conditioning(shapes, "a circle", clip_skip=2)


def test_editing_alternation_and_and_build_schedules_and_compositions(sd1):
    c, _ = text_conditioning(sd1, "a [red:blue:0.5] circle")
    sched = with_steps(c, 10)
    assert isinstance(sched, CondSchedule) and [end for end, _ in sched.entries] == [5, 10]
    assert torch.equal(sched.entries[0][1], sd1.get_learned_conditioning(["a red circle"]))
    assert torch.equal(sched.entries[1][1], sd1.get_learned_conditioning(["a blue circle"]))
    hires = with_steps(text_conditioning(sd1, "a [red:blue:1.5] circle")[0], 10, 10)   # hires fix's 2nd pass
    assert [end for end, _ in hires.entries] == [5, 10]
    assert torch.equal(hires.entries[1][1], sd1.get_learned_conditioning(["a blue circle"]))
    c, _ = text_conditioning(sd1, "a red circle :1.3 AND a [blue|red] square :-0.5")
    comp = with_steps(c, 4)
    assert isinstance(comp, Composition) and [w for w, _ in comp.parts] == [1.3, -0.5]
    assert torch.equal(comp.parts[0][1], sd1.get_learned_conditioning(["a red circle"]))
    assert [end for end, _ in comp.parts[1][1].entries] == [1, 2, 3, 4]
    lone, _ = text_conditioning(sd1, "a red circle :2")                      # one weighted sub-prompt
    assert isinstance(with_steps(lone, 4), Composition)
    _, neg = text_conditioning(sd1, "x", "ugly AND blurry")                  # negatives: AND is text
    assert torch.equal(neg, sd1.get_learned_conditioning(["ugly AND blurry"]))
    long = " ".join(["red"] * 80)
    c, _ = text_conditioning(sd1, f"a circle AND {long}")                     # 77 vs 154 tokens
    comp = with_steps(c, 4)
    short = comp.parts[0][1]
    assert short.shape == (1, 154, 32) and torch.equal(short[0, 77:], short[0, 76:77].expand(77, 32))
    c, _ = text_conditioning(sd1, f"[a circle:{long}:2]")                    # editing: empty chunks
    first, second = (e for _, e in with_steps(c, 4).entries)
    assert first.shape == second.shape == (1, 154, 32)
    assert torch.allclose(first[0, 77:], sd1.get_learned_conditioning([""])[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Sampling: the schedule follows the sampler's steps; AND is composable diffusion
# ---------------------------------------------------------------------------------------------

def recording_net(seen):
    def fn(x, t, cond):
        seen.append(cond[:, 0, 0].tolist())
        return 0.1 * x + cond.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
    return fn


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_switches_the_conditioning_at_the_scheduled_steps(sampler):
    """CondSchedule ((1, A), (3, B)) over 4 steps: A while steps 0 and 1 run, then B, for every
    network call of a step (second-order samplers call twice; UniPC makes step i + 1's first call
    at the end of step i, under step i's conditioning), with CFG and ancestral noise."""
    A, B, U = (torch.full((1, 2, 3), v, dtype=torch.float64) for v in (1.0, 2.0, -1.0))
    seen, done = [], []
    guided = ScheduledConditioning(CFGDenoiser(recording_net(seen)))
    callback = guided.following(lambda i, total, x, pred_x0: done.append((i, len(seen))))
    settings = SamplingSettings(sampler, steps=4, guidance_scale=2.0)
    noise = torch.randn(1, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sample_denoiser(guided, FakeModel_ac.double(), "eps", noise, settings, callback=callback,
                    extra_args={"cond": CondSchedule(((1, A), (3, B))), "uncond": U, "cond_scale": 2.0},
                    generator=torch.Generator().manual_seed(1))
    assert [i for i, _ in done] == list(range(len(done))) and len(done) >= 4
    starts = [0] + [n for _, n in done]
    for step, (first, last) in enumerate(zip(starts, starts[1:])):
        for call in seen[first:last]:                                       # one batch [uncond, cond]
            assert call == [-1.0, 1.0 if step <= 1 else 2.0], (step, seen)
    assert [-1.0, 2.0] in seen and seen[0] == [-1.0, 1.0]


def test_and_is_composable_diffusion_in_one_pass():
    seen = []
    fn = recording_net(seen)
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([10, 10])
    c1, c2, u = (torch.full((1, 2, 3), v, dtype=torch.float64) for v in (1.0, 3.0, -1.0))
    out = CFGDenoiser(fn)(x, t, cond=Composition(((1.0, c1), (0.5, c2))), uncond=u, cond_scale=7.0)
    assert len(seen) == 1 and len(seen[0]) == 6                              # [u, c1, c2] x batch 2
    o_u, o_1, o_2 = (fn(x, t, c.expand(2, 2, 3)) for c in (u, c1, c2))
    assert torch.allclose(out, o_u + (o_1 - o_u) * 7.0 + (o_2 - o_u) * 3.5)
    with pytest.raises(ValueError, match="AND"):
        CFGDenoiser(fn)(x, t, cond=Composition(((1.0, c1),)), uncond=None, cond_scale=7.0)


def test_cond_and_uncond_of_different_lengths_run_as_two_passes():
    seen = []
    fn = recording_net(seen)
    x = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([10])
    c, u = torch.ones(1, 154, 3, dtype=torch.float64), -torch.ones(1, 77, 3, dtype=torch.float64)
    out = CFGDenoiser(fn)(x, t, cond=c, uncond=u, cond_scale=3.0)
    assert len(seen) == 2
    assert torch.allclose(out, fn(x, t, u) + 3.0 * (fn(x, t, c) - fn(x, t, u)))


def test_conditioning_at_lifts_a_composition_out_of_an_inpainting_dict():
    a, b, concat = torch.zeros(1, 2, 3), torch.ones(1, 2, 3), torch.full((1, 5, 2, 2), 7.0)
    cond = {"c_concat": [concat], "c_crossattn": [Composition(((1.0, CondSchedule(((0, a), (4, b)))), (2.0, b)))]}
    at0, at1 = conditioning_at(cond, 0), conditioning_at(cond, 1)
    assert isinstance(at0, Composition) and [w for w, _ in at0.parts] == [1.0, 2.0]
    assert at0.parts[0][1]["c_crossattn"][0] is a and at1.parts[0][1]["c_crossattn"][0] is b
    assert all(part["c_concat"][0] is concat for _, part in at0.parts)


# ---------------------------------------------------------------------------------------------
# End to end: txt2img on a tiny SD model
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sd1():
    from tests.tiny_models import tiny_model
    return tiny_model("sd1")


def test_txt2img_with_prompt_syntax_records_clip_skip_and_reads_it_back(tiny_sd1, tmp_path):
    from core.pipelines import txt2img
    from core.pipelines.infotext import read_infotext, save_png
    prompt = "a (red:1.2) [circle|square] AND a [blue::0.5] sky :0.5"
    image = txt2img(tiny_sd1, prompt, "[ugly:blurry:2]", steps=3, sampler="DPM++ 2M SDE", seed=3, clip_skip=2,
                    scheduler="Exponential")[0]
    text = image.info["parameters"]
    assert text.startswith(prompt) and "Clip skip: 2" in text and "Schedule type: Exponential" in text
    back = read_infotext(save_png(image, tmp_path / "x.png"))
    assert (back["prompt"], back["clip_skip"], back["scheduler"], back["sampler"]) == \
        (prompt, 2, "exponential", "dpmpp_2m_sde")
    again = txt2img(tiny_sd1, back["prompt"], back["negative_prompt"], steps=back["steps"], sampler=back["sampler"],
                    seed=back["seed"], clip_skip=back["clip_skip"], scheduler=back["scheduler"])[0]
    assert np.array_equal(np.asarray(again), np.asarray(image))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = txt2img(tiny_sd1, "a red circle", steps=2, sampler="euler", seed=1)[0]
    assert "Clip skip" not in plain.info["parameters"] and "Schedule type" not in plain.info["parameters"]
    with pytest.warns(UserWarning, match="DPM\\+\\+ 3M SDE"):
        txt2img(tiny_sd1, "a red circle", steps=2, sampler="DPM++ 3M SDE", seed=1)
