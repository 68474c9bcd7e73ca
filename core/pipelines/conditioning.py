"""The conditioning c and the unconditional u for classifier-free guidance, per kind of model.

text:   c = tau(prompt), u = tau(negative prompt) ("" when none, as the reference).
class:  c = embedding(label), u = the null class's embedding (cin256-v2 was trained with one);
        a model without a null class has no u, so it samples without guidance.
layout: c = tokens of the boxes, u = the empty layout (all null tokens).

Prompts take AUTOMATIC1111's syntax (core/prompts.py). A plain prompt (no brackets, BREAK, AND or
trailing weight, within the encoder's window, no clip skip) is encoded exactly as before, by
m.get_learned_conditioning. Any other prompt becomes a PromptConditioning, encoded the way A1111's
sd_hijack_clip does once the number of steps is known (core/pipelines/denoise.py asks
`for_steps(steps)`):
- the prompt is cut where its emphasis changes, each piece tokenized, and the tokens cut into
  chunks of 75 (at BREAK, and at the last comma within 20 tokens of a chunk's end), each encoded
  as [BOS] + 75 tokens + [EOS] (padded as the encoder pads) and the chunks concatenated along the
  tokens: (1, 77 k, D);
- emphasis ("Original"): z * w per token, then z * (mean before / mean after), per chunk;
- prompt editing and alternation: one context per distinct text, the texts of one prompt padded
  to the same number of chunks with empty chunks; a CondSchedule the sampler follows step by step
  (over the settings' steps, counted from the first step run: in img2img, as in A1111, a part-way
  start runs the schedule's first steps);
- AND: a Composition of the weighted sub-prompts (sub-prompts of different lengths padded by
  repeating their last token vector, as A1111's stack_conds); composable diffusion in CFGDenoiser;
- clip skip N (CLIP and OpenCLIP encoders): the text tower stops N - 1 blocks earlier.
A prompt and a negative prompt of different lengths are not padded to each other: classifier-free
guidance then runs them as two passes (A1111's default). Our shapes-world models (a
TransformerEmbedder with the CLIP tokenizer and a context shorter than 77) take the same syntax
in one chunk of their own length: weights, editing and AND apply, BREAK only separates, and an
over-long prompt is truncated with a warning, as before.

Differences from A1111, all small: emphasis restores the mean per prompt text (A1111: over the
batch of a prompt's edited texts); the schedule counts sampler steps (A1111 counts network calls,
with doubled step numbers for second-order samplers); malformed weights such as "(a:1.2.3)" are
text (A1111 raises).
"""

import operator
import warnings

import torch

from core.embeddings import load_embeddings, replace_in, used_embeddings
from core.lora import prompt_loras
from core.pipelines.offload import use_part
from core.models.clip_text import BOS_ID, EOS_ID, FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder, clip_bpe
from core.models.conditioners import TransformerEmbedder
from core.prompts import (BREAK, has_attention_syntax, has_schedule_syntax, parse_prompt_attention, prompt_chunks,
                          prompt_schedule, split_and)
from core.samplers.scheduled import Composition, CondSchedule

CHUNK_LENGTH = 75                  # tokens per chunk besides BOS and EOS (A1111's chunk_length)


def _check_prompt(text, name: str) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a string; got {type(text).__name__}.")
    return text


def text_conditioning(m, prompt, negative_prompt="", *, clip_skip=None, size=None, lora_dir=None,
                      embeddings_dir=None):
    """(c, u): the text encoder's context for the prompt and for the negative prompt.

    Plain prompts: tensors (1, L, D). Prompts with A1111's syntax: PromptConditioning objects,
    resolved by core.pipelines.denoise once the steps are known. clip_skip: None or 1 = the
    model's usual layer; N > 1 stops N - 1 blocks earlier (CLIP text encoders only; others warn
    and ignore it, see `effective_clip_skip`). size: (height, width) of the image made, for SDXL's
    size conditioning (see `sdxl_conditioning`). lora_dir: the folder of the prompt's
    `<lora:name:weight>` tags (core/lora.py; None: the tags are removed, with a warning).
    embeddings_dir: the folder of textual-inversion embeddings used by name (core/embeddings.py).
    """
    prompt = prompt_loras(m, _check_prompt(prompt, "prompt"), lora_dir)
    negative_prompt = _check_prompt(negative_prompt, "negative_prompt")
    use_part(m, "text")                                                # --medvram: the encoders onto the GPU
    if getattr(m, "conditioner", None) is not None:                    # SDXL (sgm GeneralConditioner)
        return sdxl_conditioning(m, prompt, negative_prompt, size,
                                 load_embeddings(embeddings_dir) if embeddings_dir is not None else None)
    clip_skip = effective_clip_skip(m, clip_skip, warn=True)
    if not prompt.strip():
        warnings.warn("the prompt is empty: sampling follows only the model's unconditional "
                      "distribution (and the negative prompt)", stacklevel=3)
    embeddings = _embeddings(m, embeddings_dir)
    return (_text(m, prompt, clip_skip, True, embeddings),
            _text(m, negative_prompt, clip_skip, False, embeddings))


def _embeddings(m, folder) -> dict | None:
    """The folder's textual-inversion embeddings, for CLIP / OpenCLIP text encoders (other encoders
    read their names as text, said only when the folder holds some)."""
    if folder is None:
        return None
    if not isinstance(m.cond_stage_model, (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder)):
        if not load_embeddings(folder):
            return None
        warnings.warn("textual-inversion embeddings apply to CLIP text encoders only; this model's "
                      f"{type(m.cond_stage_model).__name__} reads their names as text", stacklevel=4)
        return None
    return load_embeddings(folder) or None


def sdxl_conditioning(m, prompt: str, negative_prompt: str, size=None, embeddings: dict | None = None):
    """SDXL's (c, u), dicts {"c_crossattn": [ctx], "y": vector}, with the size conditioning filled as
    AUTOMATIC1111 does: original = target = the image's (height, width), crop (0, 0). The
    unconditional branch: a negative prompt is encoded like the prompt (A1111); without one, what
    the reference scripts use (the base zeroes its text embeddings; the refiner encodes "" with
    aesthetic score 2.5). embeddings: textual-inversion embeddings by name (core/embeddings.py);
    an SDXL pair's clip_l vectors go to the CLIP ViT-L tower, its clip_g ones to OpenCLIP bigG."""
    if has_attention_syntax(prompt) or has_schedule_syntax(prompt) or len(split_and(prompt)) > 1:
        warnings.warn("A1111 prompt syntax (weights, editing, AND) is not applied to SDXL models yet; the "
                      "prompt is read as plain text", stacklevel=4)
    size = tuple(size) if size is not None else None
    batch = m.conditioner.make_batch([prompt], original_size=size, target_size=size)
    cond = _sdxl_encode(m, batch, (), _sdxl_tokens(m, prompt, embeddings))
    if negative_prompt and "aesthetic_score" not in m.conditioner.cfg.input_keys:
        negative = m.conditioner.make_batch([negative_prompt], original_size=size, target_size=size)
        return cond, _sdxl_encode(m, negative, (), _sdxl_tokens(m, negative_prompt, embeddings))
    batch_uc, zeroed = m.conditioner.reference_uncond(batch, [negative_prompt] if negative_prompt else None)
    return cond, _sdxl_encode(m, batch_uc, zeroed, _sdxl_tokens(m, negative_prompt, embeddings))


@torch.no_grad()
def _sdxl_encode(m, batch: dict, zeroed, tokens: dict | None) -> dict:
    out = m.conditioner(batch, zeroed, text_tokens=tokens)
    return {"c_crossattn": [out["crossattn"]], "y": out["vector"]}


def _sdxl_tokens(m, text: str, embeddings: dict | None) -> dict | None:
    """{text embedder index: (tokens (1, L), extra vectors)} with the embeddings' names in `text`
    replaced by their vectors (clip_l for CLIP ViT-L, clip_g for OpenCLIP), or None when none is
    used. Rows are [BOS] + ids (cut to L - 2) + [EOS], padded as each tokenizer pads."""
    if not embeddings or not text or not used_embeddings([text], embeddings):
        return None
    ids, out = clip_bpe().encode(text), {}
    for index, embedder in enumerate(m.conditioner.embedders):
        if isinstance(embedder, FrozenOpenCLIPEmbedder):
            tower, part = embedder.model, "clip_g"
        elif isinstance(embedder, FrozenCLIPEmbedder):
            tower, part = embedder.transformer, "clip_l"
        else:
            continue
        vocab, width = tower.token_embedding.weight.shape
        extra: list = []
        replaced, _ = replace_in(ids, embeddings, width, vocab, extra, part)
        length = embedder.cfg.max_length
        if len(replaced) > length - 2:
            warnings.warn(f"the prompt is {len(replaced)} tokens long; SDXL's text encoders read {length - 2}, "
                          "so the rest was dropped", stacklevel=5)
        row = [BOS_ID] + replaced[:length - 2] + [EOS_ID]
        out[index] = (torch.tensor([row + [embedder.pad_id] * (length - len(row))]),
                      torch.cat(extra) if extra else None)
    return out


def effective_clip_skip(m, clip_skip, warn: bool = False) -> int | None:
    """The clip skip that applies to this model (None for the usual layer): a whole number >= 1;
    values above 1 apply to CLIP / OpenCLIP text encoders only (recorded as "Clip skip: N")."""
    if clip_skip is None:
        return None
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 1:
        raise ValueError(f"clip_skip must be a whole number >= 1 (1 = the text encoder's usual layer); "
                         f"got {clip_skip!r}.")
    if clip_skip == 1:
        return None
    encoder = m.cond_stage_model
    if not isinstance(encoder, (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder)):
        if warn:
            warnings.warn(f"clip skip {clip_skip} applies to CLIP text encoders only; this model's "
                          f"{type(encoder).__name__} ignores it", stacklevel=4)
        return None
    if clip_skip > encoder.n_blocks:
        raise ValueError(f"clip_skip must be at most {encoder.n_blocks} for this text encoder (it runs "
                         f"{encoder.n_blocks} blocks); got {clip_skip}.")
    return clip_skip


def _text(m, text: str, clip_skip, composable: bool, embeddings: dict | None = None):
    window = _window(m)
    if window is None:                                   # not a CLIP-tokenized encoder: as before
        return m.get_learned_conditioning([text])
    parts = split_and(text) if composable else [(text, 1.0)]
    plain = (clip_skip is None and len(parts) == 1 and parts[0][1] == 1.0 and not has_attention_syntax(text)
             and not has_schedule_syntax(text) and len(clip_bpe().encode(text)) <= window
             and not (embeddings and used_embeddings([text], embeddings)))
    if plain:
        return m.get_learned_conditioning([text])
    return PromptConditioning(m, parts, clip_skip, embeddings)


def _window(m) -> int | None:
    """Tokens per chunk besides BOS and EOS: 75, or the context of a shorter encoder; None for
    an encoder without the CLIP tokenizer."""
    encoder = m.cond_stage_model
    if isinstance(encoder, (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder)):
        length = encoder.cfg.max_length
    elif isinstance(encoder, TransformerEmbedder) and encoder.cfg.tokenizer == "clip":
        length = encoder.cfg.max_seq_len
    else:
        return None
    return min(CHUNK_LENGTH, length - 2)


class PromptConditioning:
    """A prompt in A1111's syntax: ((text, weight), ...) sub-prompts (AND), encoded on demand.

    for_steps(steps) -> a context (1, L, D), a CondSchedule of them (prompt editing,
    alternation) or a Composition (AND, or a single sub-prompt with a weight other than 1).
    for_steps(steps, hires_steps): the schedule of hires fix's second pass (core.prompts).
    """

    def __init__(self, m, parts, clip_skip: int | None, embeddings: dict | None = None):
        self.m, self.parts, self.clip_skip, self.embeddings = m, list(parts), clip_skip, embeddings
        self._by_steps: dict[tuple, object] = {}

    def for_steps(self, steps: int, hires_steps: int | None = None):
        if (steps, hires_steps) not in self._by_steps:
            self._by_steps[steps, hires_steps] = self._build(steps, hires_steps)
        return self._by_steps[steps, hires_steps]

    def _build(self, steps: int, hires_steps: int | None):
        use_part(self.m, "text")
        schedules = [prompt_schedule(text, steps, hires_steps) for text, _ in self.parts]
        encoded = [_encode_schedule(self.m, [t for _, t in schedule], self.clip_skip, self.embeddings)
                   for schedule in schedules]
        tokens = max(c.shape[1] for contexts in encoded for c in contexts)
        conds = []
        for schedule, contexts in zip(schedules, encoded):
            contexts = [_repeat_last_token(c, tokens) for c in contexts]
            conds.append(contexts[0] if len(contexts) == 1 else
                         CondSchedule(tuple((end, c) for (end, _), c in zip(schedule, contexts))))
        if len(self.parts) == 1 and self.parts[0][1] == 1.0:
            return conds[0]
        return Composition(tuple((weight, c) for (_, weight), c in zip(self.parts, conds)))


def with_steps(c, steps: int, hires_steps: int | None = None):
    """c with every PromptConditioning in it (also inside dicts and lists) encoded for `steps`
    (and `hires_steps`, for hires fix's second pass)."""
    if isinstance(c, PromptConditioning):
        return c.for_steps(steps, hires_steps)
    if isinstance(c, dict):
        return {k: with_steps(v, steps, hires_steps) for k, v in c.items()}
    if isinstance(c, list):
        return [with_steps(v, steps, hires_steps) for v in c]
    return c


def _repeat_last_token(c: torch.Tensor, tokens: int) -> torch.Tensor:
    """(1, L, D) -> (1, tokens, D) by repeating the last token vector (A1111's stack_conds)."""
    if c.shape[1] == tokens:
        return c
    return torch.cat([c, c[:, -1:].expand(1, tokens - c.shape[1], c.shape[2])], dim=1)


def _encode_schedule(m, texts: list[str], clip_skip, embeddings=None) -> list[torch.Tensor]:
    """One context (1, 77 k, D) per text, each distinct text encoded once; shorter ones padded with
    empty chunks to the longest (A1111 encodes a prompt's edited texts as one batch)."""
    distinct = {text: _encode_chunks(m, text, clip_skip, embeddings) for text in dict.fromkeys(texts)}
    most = max(z.shape[0] for z in distinct.values())
    empty = None
    out = []
    for text in texts:
        z = distinct[text]                                                   # (k, L, D)
        if z.shape[0] < most:
            empty = _encode_chunks(m, "", clip_skip) if empty is None else empty
            z = torch.cat([z] + [empty] * (most - z.shape[0]))
        out.append(z.reshape(1, -1, z.shape[-1]))
    return out


@torch.no_grad()
def _encode_chunks(m, text: str, clip_skip, embeddings=None) -> torch.Tensor:
    """The chunks of one prompt text, encoded and emphasised: (k, window + 2, D). Embedding names
    become their vectors (ids past the vocabulary, core/embeddings.py)."""
    encoder, bpe, window = m.cond_stage_model, clip_bpe(), _window(m)
    pieces, extra = [], []
    for piece in parse_prompt_attention(text):
        if piece == BREAK:
            pieces.append((None, -1.0))
            continue
        ids = bpe.encode(piece[0])
        if embeddings:
            tower = encoder.model if isinstance(encoder, FrozenOpenCLIPEmbedder) else encoder.transformer
            vocab, width = tower.token_embedding.weight.shape
            ids, _ = replace_in(ids, embeddings, width, vocab, extra)
        pieces.append((ids, piece[1]))
    if window < CHUNK_LENGTH:                          # a short context: one chunk, BREAK only separates
        pieces = _truncated([p for p in pieces if p[0] is not None], window)
        chunks = prompt_chunks(pieces, window, EOS_ID, None)
    else:
        chunks = prompt_chunks(pieces, window, EOS_ID, bpe.encoder[",</w>"])
    rows = []
    for chunk in chunks:
        ids = [BOS_ID] + chunk.ids + [EOS_ID]
        first_eos = ids.index(EOS_ID)                  # SD2 / ours pad with 0 after the first EOS
        rows.append(ids[:first_eos + 1] + [encoder.pad_id] * (len(ids) - first_eos - 1))
    tokens = torch.tensor(rows)                                                     # (k, window + 2)
    multipliers = torch.tensor([[1.0] + chunk.weights + [1.0] for chunk in chunks])  # (k, window + 2)
    if isinstance(encoder, TransformerEmbedder):
        z = encoder.encode_tokens(encoder.bpe_rows(tokens, stacklevel=6))          # (k, L, D)
    else:
        z = encoder.encode_tokens(tokens, clip_skip or 1, torch.cat(extra) if extra else None)  # (k, L, D)
    return torch.stack([_emphasis(z_i, w.to(z_i)) for z_i, w in zip(z, multipliers)])


def _truncated(pieces: list, window: int) -> list:
    """The weighted pieces cut to `window` tokens in all, with a warning naming what was dropped."""
    ids = [i for piece_ids, _ in pieces for i in piece_ids]
    if len(ids) > window:
        warnings.warn(f"the prompt is {len(ids)} tokens long; the text encoder reads at most {window}, so the "
                      f"last {len(ids) - window} tokens were dropped: {clip_bpe().decode(ids[window:]).strip()!r}",
                      stacklevel=7)
    out, room = [], window
    for piece_ids, weight in pieces:
        out.append((piece_ids[:room], weight))
        room -= len(out[-1][0])
    return out


def _emphasis(z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis on one chunk (L, D): z * w per token, then rescaled so that the
    mean over the chunk is what it was."""
    original_mean = z.mean()
    z = z * multipliers[:, None]
    return z * (original_mean / z.mean())


def class_conditioning(m, class_label):
    """(c, u) for one class label; u is None for a model without a null class."""
    embedder = m.cond_stage_model
    try:
        label = operator.index(class_label)
    except TypeError:
        raise ValueError(f"class_label must be a whole number; got {class_label!r}.") from None
    classes = embedder.n_classes - (embedder.null_class is not None)        # the null class is guidance's
    if isinstance(class_label, bool) or not 0 <= label < classes:
        null = "" if embedder.null_class is None else f" ({embedder.null_class} is the null class, used by guidance)"
        raise ValueError(f"class_label must be in [0, {classes - 1}]{null}; got {class_label!r}.")
    cond = m.get_learned_conditioning(torch.tensor([label]))
    uncond = embedder.unconditional(1) if embedder.null_class is not None else None
    return cond, uncond


def layout_conditioning(m, layout):
    """(c, u) for one layout, a list of (class_id, x0, y0, x1, y1) with coordinates in [0, 1], as
    raw (1, K, 5) float64 tensors (class id, box; -1 = no object) that `layout_encoder(m)` turns
    into tokens: for the whole image, or per tile with each tile's own boxes (larger than trained)."""
    if not isinstance(layout, (list, tuple)):
        raise ValueError("layout must be a list of (class_id, x0, y0, x1, y1) boxes with coordinates in "
                         f"[0, 1]; got {type(layout).__name__}.")
    enc = m.cond_stage_model

    def raw(boxes):
        classes, xyxy = enc.layouts_to_tensors([list(boxes)])                      # (1, K), (1, K, 4)
        return torch.cat([classes[..., None].to(xyxy.dtype), xyxy], dim=-1)        # (1, K, 5)
    return raw(layout), raw([])


TILE_SHARE = 0.5    # a tile's layout keeps the objects with at least this share of their box inside it


def layout_encoder(m):
    """encode(raw (B, K, 5), tile, H, W) -> tokens (B, K, D). tile None: the whole image. A tile (latent
    pixels y0:y1, x0:x1 of an H x W latent) sees the boxes in its own frame, clipped to it (as training
    clips boxes at the image's edge), and only the objects with TILE_SHARE of their box inside it."""
    enc = m.cond_stage_model

    def encode(raw, tile, H: int, W: int):
        classes, boxes = raw[..., 0].long(), raw[..., 1:]                          # (B, K), (B, K, 4)
        if tile is not None:
            scale = boxes.new_tensor([W, H, W, H])
            origin = boxes.new_tensor([tile.x0, tile.y0, tile.x0, tile.y0])
            size = boxes.new_tensor([tile.x1 - tile.x0, tile.y1 - tile.y0] * 2)
            local = (boxes * scale - origin) / size                                # the tile's frame
            clipped = local.clamp(0, 1)
            area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])    # noqa: E731
            keep = (classes >= 0) & (area(clipped) >= TILE_SHARE * area(local).clamp(min=1e-12))
            classes, boxes = torch.where(keep, classes, -1), torch.where(keep[..., None], clipped, 0)
        return enc.encode_tensors(classes, boxes)
    return encode
