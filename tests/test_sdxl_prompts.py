"""A1111's prompt syntax on SDXL (issue 17): each text tower (CLIP ViT-L, OpenCLIP bigG) reads the same
chunks with its own padding and emphasis, the contexts are concatenated along D, the pooled vector is
bigG's of the first chunk, unemphasised (A1111's sd_hijack_clip over sgm's conditioner); prompt
editing and AND give schedules and compositions of {"c_crossattn", "y"} dicts; every SDXL pipeline
takes them (txt2img, hires fix, inpainting with c_concat, the refiner)."""
import numpy as np
import pytest
import torch

from core import pipelines as P
from core.models.clip_text import BOS_ID, EOS_ID, clip_bpe
from core.pipelines.conditioning import PromptConditioning, sdxl_conditioning, with_steps
from core.samplers.scheduled import Composition, CondSchedule
from tests.tiny_models import tiny_model

SIZE = (64, 64)


@pytest.fixture(scope="module")
def xl():
    return tiny_model("sdxl")


def reference(m, text: str) -> dict:
    """sgm's own encoding of a text (the reference path, no syntax read), at SIZE."""
    with torch.no_grad():
        return m.get_learned_conditioning(m.conditioner.make_batch([text], original_size=SIZE, target_size=SIZE))


def rows(m, ids: list[int]) -> list[torch.Tensor]:
    """[BOS] + ids + [EOS] padded to 77 as each text tower pads (CLIP-L with EOS, bigG with 0)."""
    out = []
    for embedder in m.conditioner.embedders[:2]:
        row = [BOS_ID] + ids + [EOS_ID]
        out.append(torch.tensor([row + [embedder.pad_id] * (77 - len(row))]))
    return out


def emphasised(z, weights):
    original = z.mean()
    z = z * torch.tensor(weights, dtype=z.dtype)[:, None]
    return z * (original / z.mean())


def test_plain_prompts_keep_the_reference_path_and_unit_weights_equal_it(xl):
    c = reference(xl, "a (red) circle")
    escaped, _ = sdxl_conditioning(xl, "a \\(red\\) circle", "", size=SIZE)
    assert isinstance(escaped, PromptConditioning)
    resolved = with_steps(escaped, 10)
    assert torch.equal(resolved["c_crossattn"][0], c["c_crossattn"][0]) and torch.equal(resolved["y"], c["y"])


def test_emphasis_per_tower_and_the_pooled_vector_unemphasised(xl):
    c = with_steps(sdxl_conditioning(xl, "a (red:1.5) circle", "", size=SIZE)[0], 10)
    bpe = clip_bpe()
    ids_a, ids_red, ids_circle = bpe.encode("a"), bpe.encode("red"), bpe.encode("circle")
    ids = ids_a + ids_red + ids_circle
    weights = [1.0] * (1 + len(ids_a)) + [1.5] * len(ids_red) + [1.0] * (76 - len(ids_a) - len(ids_red))
    clip_l, big_g = xl.conditioner.embedders[0], xl.conditioner.embedders[1]
    tokens_l, tokens_g = rows(xl, ids)
    with torch.no_grad():
        hidden_l = emphasised(clip_l.encode_tokens(tokens_l)[0], weights)
        hidden_g, pooled = big_g.encode_tokens(tokens_g)
        hidden_g = emphasised(hidden_g[0], weights)
    ctx = c["c_crossattn"][0][0]
    width_l = hidden_l.shape[-1]
    assert torch.allclose(ctx[:, :width_l], hidden_l, atol=1e-6)      # each tower restores its own mean
    assert torch.allclose(ctx[:, width_l:], hidden_g, atol=1e-6)
    plain = reference(xl, "a red circle")
    assert torch.equal(c["y"], plain["y"])                             # pooled: not emphasised (A1111)
    assert torch.equal(c["y"][:, :pooled.shape[-1]], pooled)


def test_long_prompts_are_chunked_and_pool_from_the_first_chunk(xl):
    words = " ".join(["red circle"] * 50)                               # 100 tokens: two chunks
    c = with_steps(sdxl_conditioning(xl, words, "", size=SIZE)[0], 10)
    ctx = c["c_crossattn"][0]
    assert ctx.shape[1] == 154
    ids = clip_bpe().encode(words)
    for chunk, part in enumerate([ids[:75], ids[75:]]):
        tokens_l, tokens_g = rows(xl, part)
        with torch.no_grad():
            hidden_l = xl.conditioner.embedders[0].encode_tokens(tokens_l)
            hidden_g, pooled = xl.conditioner.embedders[1].encode_tokens(tokens_g)
        expected = torch.cat([hidden_l, hidden_g], dim=-1)
        assert torch.allclose(ctx[:, 77 * chunk:77 * (chunk + 1)], expected, atol=1e-6)
        if chunk == 0:
            assert torch.allclose(c["y"][:, :pooled.shape[-1]], pooled, atol=1e-6)


def test_editing_and_and_build_schedules_and_compositions_of_dicts(xl):
    c = with_steps(sdxl_conditioning(xl, "a [cat:dog:0.5]", "", size=SIZE)[0], 10)
    assert isinstance(c, CondSchedule) and [end for end, _ in c.entries] == [5, 10]
    for (_, part), text in zip(c.entries, ["a cat", "a dog"]):
        ref = reference(xl, text)
        assert torch.equal(part["c_crossattn"][0], ref["c_crossattn"][0]) and torch.equal(part["y"], ref["y"])
    composed = with_steps(sdxl_conditioning(xl, "a cat :1.2 AND a dog", "", size=SIZE)[0], 10)
    assert isinstance(composed, Composition) and [w for w, _ in composed.parts] == [1.2, 1.0]
    assert torch.equal(composed.parts[1][1]["y"], reference(xl, "a dog")["y"])


def test_negative_prompt_syntax_and_the_zeroed_default(xl):
    _, u = sdxl_conditioning(xl, "(a cat:1.3)", "", size=SIZE)
    assert isinstance(u, dict) and torch.count_nonzero(u["c_crossattn"][0]) == 0   # the base's reference uncond
    _, u = sdxl_conditioning(xl, "a cat", "(blurry:1.4) AND noise", size=SIZE)
    u = with_steps(u, 10)                                   # a negative prompt is never composed (A1111)
    assert isinstance(u, dict) and u["c_crossattn"][0].shape[1] == 77


def test_sdxl_pipelines_take_prompt_syntax(xl, tmp_path):
    run = dict(steps=2, sampler="euler", seed=1, width=64, height=64, guidance_scale=5.0)
    plain = P.txt2img(xl, "a red circle", **run)[0]
    weighted = P.txt2img(xl, "a (red:1.4) circle, [square:triangle:0.5] AND blue", **run)[0]
    assert weighted.tobytes() != plain.tobytes()
    params = P.parse_infotext(weighted.info["parameters"])
    assert params["prompt"] == "a (red:1.4) circle, [square:triangle:0.5] AND blue"
    hires = P.txt2img_hires(xl, "a (red:1.4) circle", P.HiresSettings(scale=1.5, steps=1), **run)[0]
    assert hires.size == (96, 96)


def test_sdxl_inpainting_and_the_refiner_take_prompt_syntax():
    inpainter = tiny_model("sdxl_inpaint")
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :, 0] = np.arange(64)[None, :] * 4
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    run = dict(steps=2, sampler="euler", seed=3, mask_blur=0)
    plain = P.inpaint(inpainter, image, mask, "a photo", **run)[0]
    weighted = P.inpaint(inpainter, image, mask, "a (photo:1.5) [of a cat|of a dog]", negative_prompt="(blur:1.2)",
                         **run)[0]
    assert np.array_equal(np.asarray(weighted)[:16], image[:16])                 # kept outside the mask
    assert weighted.tobytes() != plain.tobytes()

    base, refiner = tiny_model("sdxl"), tiny_model("sdxl_refiner")
    run = dict(steps=4, sampler="euler", seed=1, width=64, height=64)
    out = P.txt2img(base, "a (red:1.3) circle", refiner=refiner, refiner_switch_at=0.5, **run)[0]
    params = P.parse_infotext(out.info["parameters"])
    assert params["refiner_switch_at"] == 0.5 and out.size == (64, 64)
