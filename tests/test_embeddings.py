"""Textual-inversion embeddings on tiny SD1 / SD2 models: the A1111 file formats, the name's tokens
replaced by the vectors (checked against the same vectors written into spare vocabulary rows),
weights and negative prompts, `TI hashes`, and .pt files read with weights_only only."""
import hashlib
import pickle
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.embeddings import load_embeddings, read_embedding, replace_in
from core.models.clip_text import BOS_ID, EOS_ID, clip_bpe
from core.pipelines.conditioning import text_conditioning, with_steps
from tests.tiny_models import tiny_model


class NotATensor:
    pass


def write_a1111_pt(path, vectors):
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": path.stem,
                "step": 100, "sd_checkpoint": "abc", "sd_checkpoint_name": "x"}, path)


def test_formats(tmp_path):
    v = torch.randn(2, 32)
    write_a1111_pt(tmp_path / "one.pt", v)
    save_file({"emb_params": v}, tmp_path / "two.safetensors")
    save_file({"clip_l": torch.randn(3, 768), "clip_g": torch.randn(3, 1280)}, tmp_path / "xl.safetensors")
    torch.save({"<cat-toy>": v[0]}, tmp_path / "learned_embeds.bin")
    assert torch.equal(read_embedding(tmp_path / "one.pt").vectors[""], v)
    assert torch.equal(read_embedding(tmp_path / "two.safetensors").vectors[""], v)
    xl = read_embedding(tmp_path / "xl.safetensors")
    assert xl.for_width(1280).shape == (3, 1280) and xl.for_width(768).shape == (3, 768)
    assert read_embedding(tmp_path / "learned_embeds.bin").vectors[""].shape == (1, 32)
    assert sorted(load_embeddings(tmp_path)) == ["learned_embeds", "one", "two", "xl"]


def test_pt_files_are_read_with_weights_only(tmp_path):
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}, "payload": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        read_embedding(tmp_path / "evil.pt")
    with pytest.warns(UserWarning, match="evil.pt was skipped"):
        assert load_embeddings(tmp_path) == {}


def test_replace_in_uses_the_longest_name_and_counts_vectors():
    bpe = clip_bpe()
    from core.embeddings import Embedding
    a = Embedding("style", {"": torch.ones(2, 4)}, tuple(bpe.encode("style")), None)
    b = Embedding("style art", {"": torch.zeros(1, 4)}, tuple(bpe.encode("style art")), None)
    extra = []
    ids, used = replace_in(bpe.encode("a style art and style"), {"style": a, "style art": b}, 4, 1000, extra)
    assert used == ["style art", "style"]
    assert ids == bpe.encode("a") + [1000] + bpe.encode("and") + [1001, 1002]
    assert [tuple(e.shape) for e in extra] == [(1, 4), (2, 4)]


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_embedding_name_becomes_its_vectors(family, tmp_path):
    m = tiny_model(family)
    encoder = m.cond_stage_model
    tower = encoder.transformer if family == "sd1" else encoder.model
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    write_a1111_pt(tmp_path / "mystyle.pt", vectors)
    c, u = text_conditioning(m, "a photo of mystyle cat", "mystyle", embeddings_dir=tmp_path)
    c, u = with_steps(c, 10), with_steps(u, 10)

    # Reference: the vectors in two spare vocabulary rows, encoded by the ordinary path.
    spare = (1000, 1001)
    bpe = clip_bpe()
    reference = tiny_model(family)
    ref_tower = reference.cond_stage_model.transformer if family == "sd1" else reference.cond_stage_model.model
    with torch.no_grad():
        ref_tower.token_embedding.weight[list(spare)] = vectors

    def encode(ids):
        ids = [BOS_ID] + ids + [EOS_ID]
        tokens = torch.full((1, 77), encoder.pad_id)
        tokens[0, :len(ids)] = torch.tensor(ids)
        with torch.no_grad():
            return reference.cond_stage_model.encode_tokens(tokens)

    expected_c = encode(bpe.encode("a photo of") + list(spare) + bpe.encode("cat"))
    expected_u = encode(list(spare))
    assert torch.allclose(c, expected_c, atol=1e-5) and torch.allclose(u, expected_u, atol=1e-5)
    plain, _ = text_conditioning(m, "a photo of mystyle cat")
    assert not torch.allclose(with_steps(plain, 10), c, atol=1e-3)       # without the folder: text
    assert tower.token_embedding.weight.shape[0] == 49408                # nothing was added to the model
    weighted, _ = text_conditioning(m, "a photo of (mystyle:1.3) cat", embeddings_dir=tmp_path)
    assert with_steps(weighted, 10).shape == c.shape


def test_embedding_of_another_width_is_read_as_text(tmp_path):
    m = tiny_model("sd1")
    save_file({"emb_params": torch.randn(2, 768)}, tmp_path / "bigstyle.safetensors")
    with pytest.warns(UserWarning, match="'bigstyle' has no vectors of width 32"):
        c = with_steps(text_conditioning(m, "bigstyle cat", embeddings_dir=tmp_path)[0], 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = with_steps(text_conditioning(m, "bigstyle cat")[0], 10)
    assert torch.allclose(c, plain, atol=1e-5)


def test_txt2img_records_ti_hashes(tmp_path):
    from core.pipelines import txt2img
    from core.pipelines.infotext import read_infotext
    m = tiny_model("sd1")
    write_a1111_pt(tmp_path / "mystyle.pt", torch.randn(2, 32))
    write_a1111_pt(tmp_path / "unused.pt", torch.randn(1, 32))
    args = {"steps": 2, "seed": 7, "width": 32, "height": 32, "sampler": "euler"}
    image = txt2img(m, "a mystyle circle", embeddings_dir=tmp_path, **args)[0]
    short = hashlib.sha256((tmp_path / "mystyle.pt").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "mystyle: {short}"' in image.info["parameters"]
    assert read_infotext(image)["ti_hashes"] == f"mystyle: {short}"
    plain = txt2img(m, "a mystyle circle", **args)[0]
    assert "TI hashes" not in plain.info["parameters"]
    assert not np.array_equal(np.asarray(plain), np.asarray(image))


def test_a_model_without_clip_says_nothing_of_an_empty_embeddings_folder(tmp_path):
    """The app always passes weights/embeddings: a shapes-style text model (TransformerEmbedder) only
    hears about embeddings when the folder holds some."""
    import dataclasses
    from core.models.diffusion import LatentDiffusion
    cfg = tiny_model("ldm_txt2img").config
    m = LatentDiffusion(dataclasses.replace(cfg, cond_stage=dataclasses.replace(cfg.cond_stage, tokenizer="clip",
                                                                                 vocab_size=49408)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text_conditioning(m, "a red circle", "", embeddings_dir=tmp_path / "missing")
        text_conditioning(m, "a red circle", "", embeddings_dir=tmp_path)
    save_file({"emb_params": torch.randn(1, 32)}, tmp_path / "toy.safetensors")
    with pytest.warns(UserWarning, match="reads their names as text"):
        text_conditioning(m, "a red circle", "", embeddings_dir=tmp_path)
