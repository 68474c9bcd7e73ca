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
over-long prompt is truncated with a warning, as before. SDXL: each text embedder (CLIP ViT-L and
OpenCLIP bigG) encodes the same chunks with its own padding and emphasis, their contexts are
concatenated along D and the pooled vector is bigG's of the first chunk (A1111's sd_hijack_clip on
sgm's conditioner); every context is then a {"c_crossattn", "y"} dict. Clip skip does not apply
to SDXL (A1111's default: each tower reads its configured layer).

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
from core.pipelines.layout_text import layout_vocabulary
from core.pipelines.offload import use_part
from core.models.clip_text import BOS_ID, EOS_ID, FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder, clip_bpe
from core.models.conditioners import TransformerEmbedder
from core.models.sdxl_conditioner import TXT
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
    clip_skip = effective_clip_skip(m, clip_skip, warn=True)
    if getattr(m, "conditioner", None) is not None:                    # SDXL (sgm GeneralConditioner)
        return sdxl_conditioning(m, prompt, negative_prompt, size,
                                 load_embeddings(embeddings_dir) if embeddings_dir is not None else None)
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
    aesthetic score 2.5). Prompts with A1111's syntax (or embeddings, or over 75 tokens) become a
    PromptConditioning whose contexts are such dicts: each text embedder (CLIP ViT-L, OpenCLIP bigG)
    reads the chunks and emphasis on its own, the pooled vector is bigG's of the first chunk, as
    A1111's sd_hijack_clip. embeddings: textual-inversion embeddings by name (core/embeddings.py);
    an SDXL pair's clip_l vectors go to the CLIP ViT-L tower, its clip_g ones to OpenCLIP bigG."""
    size = tuple(size) if size is not None else None
    batch = m.conditioner.make_batch([prompt], original_size=size, target_size=size)
    cond = _text(m, prompt, None, True, embeddings, batch)
    if negative_prompt and "aesthetic_score" not in m.conditioner.cfg.input_keys:
        negative = m.conditioner.make_batch([negative_prompt], original_size=size, target_size=size)
        return cond, _text(m, negative_prompt, None, False, embeddings, negative)
    batch_uc, zeroed = m.conditioner.reference_uncond(batch, [negative_prompt] if negative_prompt else None)
    if zeroed:                                    # zeros whatever the text: "" spares encoding the prompt
        return cond, _sdxl_encode(m, {**batch_uc, TXT: [""]}, zeroed)
    return cond, _text(m, batch_uc[TXT][0], None, False, embeddings, batch_uc)


@torch.no_grad()
def _sdxl_encode(m, batch: dict, zeroed=(), text_outputs: dict | None = None) -> dict:
    out = m.conditioner(batch, zeroed, text_outputs=text_outputs)
    return {"c_crossattn": [out["crossattn"]], "y": out["vector"]}


def _text_encoders(m) -> dict:
    """{index: (encoder, embedding part)}: the text encoders a prompt goes through. SDXL: the
    conditioner's `txt` embedders by index, "clip_l" / "clip_g" naming their half of an embedding
    pair; other models: their one encoder, under None."""
    conditioner = getattr(m, "conditioner", None)
    if conditioner is None:
        return {None: (m.cond_stage_model, None)}
    return {i: (e, "clip_g" if isinstance(e, FrozenOpenCLIPEmbedder) else "clip_l")
            for i, (key, e) in enumerate(zip(conditioner.input_keys, conditioner.embedders)) if key == TXT}


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
            what = ("SDXL's text encoders read their configured layers (as A1111 by default), so this model"
                    if getattr(m, "conditioner", None) is not None else f"this model's {type(encoder).__name__}")
            warnings.warn(f"clip skip {clip_skip} applies to CLIP text encoders only; {what} ignores it",
                          stacklevel=4)
        return None
    if clip_skip > encoder.n_blocks:
        raise ValueError(f"clip_skip must be at most {encoder.n_blocks} for this text encoder (it runs "
                         f"{encoder.n_blocks} blocks); got {clip_skip}.")
    return clip_skip


def _text(m, text: str, clip_skip, composable: bool, embeddings: dict | None = None, batch: dict | None = None):
    """One text's conditioning: the reference encoding when A1111 would read it the same (plain),
    else a PromptConditioning. batch: SDXL's conditioner batch (its sizes), whose text towers chunk
    at 75 tokens."""
    window = CHUNK_LENGTH if batch is not None else _window(m.cond_stage_model)
    plain = (lambda: _sdxl_encode(m, batch)) if batch is not None else (lambda: m.get_learned_conditioning([text]))
    if window is None:                                   # not a CLIP-tokenized encoder: as before
        return plain()
    parts = split_and(text) if composable else [(text, 1.0)]
    if _is_plain(text, parts, clip_skip, window, embeddings):
        return plain()
    return PromptConditioning(m, parts, clip_skip, embeddings, batch=batch)


def _is_plain(text: str, parts: list, clip_skip, window: int, embeddings: dict | None) -> bool:
    """Whether the reference encoding reads `text` as A1111 would: one unweighted part, no
    brackets or editing, within one chunk, no clip skip, no embedding named."""
    return (clip_skip is None and len(parts) == 1 and parts[0][1] == 1.0 and not has_attention_syntax(text)
            and not has_schedule_syntax(text) and len(clip_bpe().encode(text)) <= window
            and not (embeddings and used_embeddings([text], embeddings)))


def _window(encoder) -> int | None:
    """Tokens per chunk besides BOS and EOS: 75, or the context of a shorter encoder; None for
    an encoder without the CLIP tokenizer."""
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
    SDXL (batch: the conditioner's batch dict, sizes and aesthetic score): each context is a dict
    {"c_crossattn": [ctx], "y": vector, **extra}; `with_keys` adds keys (an inpainting c_concat).
    """

    def __init__(self, m, parts, clip_skip: int | None, embeddings: dict | None = None, batch: dict | None = None,
                 extra: dict | None = None):
        self.m, self.parts, self.clip_skip, self.embeddings = m, list(parts), clip_skip, embeddings
        self.batch, self.extra = batch, dict(extra or {})
        self._by_steps: dict[tuple, object] = {}

    def with_keys(self, **keys) -> "PromptConditioning":
        return PromptConditioning(self.m, self.parts, self.clip_skip, self.embeddings, self.batch,
                                  {**self.extra, **keys})

    def for_steps(self, steps: int, hires_steps: int | None = None):
        if (steps, hires_steps) not in self._by_steps:
            self._by_steps[steps, hires_steps] = self._build(steps, hires_steps)
        return self._by_steps[steps, hires_steps]

    def _build(self, steps: int, hires_steps: int | None):
        use_part(self.m, "text")
        schedules = [prompt_schedule(text, steps, hires_steps) for text, _ in self.parts]
        encoded = [_encode_schedule(self.m, [t for _, t in schedule], self.clip_skip, self.embeddings, self.batch)
                   for schedule in schedules]
        tokens = max(_context(c).shape[1] for contexts in encoded for c in contexts)
        conds = []
        for schedule, contexts in zip(schedules, encoded):
            contexts = [_repeat_last_token(c, tokens, self.extra) for c in contexts]
            conds.append(contexts[0] if len(contexts) == 1 else
                         CondSchedule(tuple((end, c) for (end, _), c in zip(schedule, contexts))))
        if len(self.parts) == 1 and self.parts[0][1] == 1.0:
            return conds[0]
        return Composition(tuple((weight, c) for (_, weight), c in zip(self.parts, conds)))


def with_keys(c, **keys):
    """An SDXL conditioning (a dict, or a PromptConditioning of dicts) with more keys: SDXL
    inpainting's c_concat."""
    return c.with_keys(**keys) if isinstance(c, PromptConditioning) else {**c, **keys}


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


def _context(c) -> torch.Tensor:
    return c["c_crossattn"][0] if isinstance(c, dict) else c


def _repeat_last_token(c, tokens: int, extra: dict):
    """(1, L, D) -> (1, tokens, D) by repeating the last token vector (A1111's stack_conds); an
    SDXL dict gets it in its context, and the `extra` keys."""
    if isinstance(c, dict):
        return {**c, "c_crossattn": [_repeat_last_token(_context(c), tokens, extra)], **extra}
    if c.shape[1] == tokens:
        return c
    return torch.cat([c, c[:, -1:].expand(1, tokens - c.shape[1], c.shape[2])], dim=1)


def _encode_schedule(m, texts: list[str], clip_skip, embeddings=None, batch: dict | None = None) -> list:
    """One context (1, 77 k, D) per text (SDXL: one dict, see _sdxl_encode), each distinct text
    encoded once; shorter ones padded with empty chunks to the longest (A1111 encodes a prompt's
    edited texts as one batch). The pooled vector is the text's first chunk's (A1111's zs[0])."""
    encoders = _text_encoders(m)
    distinct = {text: {i: _encode_chunks(encoder, text, clip_skip, embeddings, part)
                       for i, (encoder, part) in encoders.items()} for text in dict.fromkeys(texts)}
    most = max(z.shape[0] for outputs in distinct.values() for z, _ in outputs.values())
    empty: dict = {}
    out = []
    for text in texts:
        outputs = {}
        for i, (z, pooled) in distinct[text].items():                      # z: (k, L, D)
            if z.shape[0] < most:
                if i not in empty:
                    empty[i] = _encode_chunks(encoders[i][0], "", clip_skip)[0]
                z = torch.cat([z] + [empty[i]] * (most - z.shape[0]))
            z = z.reshape(1, -1, z.shape[-1])
            outputs[i] = z if pooled is None else (z, pooled[:1])
        out.append(outputs[None] if batch is None else _sdxl_encode(m, batch, (), outputs))
    return out


@torch.no_grad()
def _encode_chunks(encoder, text: str, clip_skip, embeddings=None, part: str | None = None):
    """The chunks of one prompt text, encoded and emphasised: (k, window + 2, D), and the pooled
    vectors (k, E) of an encoder that has them (SDXL's bigG; else None). Embedding names become
    their vectors (ids past the vocabulary, core/embeddings.py; part: an SDXL pair's half)."""
    bpe, window = clip_bpe(), _window(encoder)
    pieces, extra = [], []
    for piece in parse_prompt_attention(text):
        if piece == BREAK:
            pieces.append((None, -1.0))
            continue
        ids = bpe.encode(piece[0])
        if embeddings:
            tower = encoder.model if isinstance(encoder, FrozenOpenCLIPEmbedder) else encoder.transformer
            vocab, width = tower.token_embedding.weight.shape
            ids, _ = replace_in(ids, embeddings, width, vocab, extra, part)
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
    z, pooled = z if isinstance(z, tuple) else (z, None)                           # SDXL's bigG: + pooled
    return torch.stack([_emphasis(z_i, w.to(z_i)) for z_i, w in zip(z, multipliers)]), pooled


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
    clips boxes at the image's edge), and only the objects with TILE_SHARE of their box inside it; a
    background token (a class after the objects', layout_text.py) holds in every tile."""
    enc = m.cond_stage_model
    first_background = layout_vocabulary(m).n_classes

    def encode(raw, tile, H: int, W: int):
        classes, boxes = raw[..., 0].long(), raw[..., 1:]                          # (B, K), (B, K, 4)
        if tile is not None:
            scale = boxes.new_tensor([W, H, W, H])
            origin = boxes.new_tensor([tile.x0, tile.y0, tile.x0, tile.y0])
            size = boxes.new_tensor([tile.x1 - tile.x0, tile.y1 - tile.y0] * 2)
            local = (boxes * scale - origin) / size                                # the tile's frame
            clipped = local.clamp(0, 1)
            area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])    # noqa: E731
            inside = area(clipped) >= TILE_SHARE * area(local).clamp(min=1e-12)
            keep = (classes >= first_background) | ((classes >= 0) & inside)
            classes, boxes = torch.where(keep, classes, -1), torch.where(keep[..., None], clipped, 0)
        return enc.encode_tensors(classes, boxes)
    return encode
