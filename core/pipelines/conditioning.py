"""The conditioning c and the unconditional u for classifier-free guidance, per kind of model.

text:   c = tau(prompt), u = tau(negative prompt) ("" when none, as the reference).
class:  c = embedding(label), u = the null class's embedding (cin256-v2 was trained with one);
        a model without a null class has no u, so it samples without guidance.
layout: c = tokens of the boxes, u = the empty layout (all null tokens).
Over-long prompts are truncated at the tokenizer's limit with a warning by the text encoder itself.
"""

import operator
import warnings

import torch


def _check_prompt(text, name: str) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a string; got {type(text).__name__}.")
    return text


def text_conditioning(m, prompt, negative_prompt=""):
    """(c, u): the text encoder's context for the prompt and for the negative prompt, (1, L, D) each."""
    prompt = _check_prompt(prompt, "prompt")
    negative_prompt = _check_prompt(negative_prompt, "negative_prompt")
    if not prompt.strip():
        warnings.warn("the prompt is empty: sampling follows only the model's unconditional "
                      "distribution (and the negative prompt)", stacklevel=3)
    return m.get_learned_conditioning([prompt]), m.get_learned_conditioning([negative_prompt])


def class_conditioning(m, class_label):
    """(c, u) for one class label; u is None for a model without a null class."""
    embedder = m.cond_stage_model
    try:
        label = operator.index(class_label)
    except TypeError:
        raise ValueError(f"class_label must be a whole number; got {class_label!r}.") from None
    if isinstance(class_label, bool) or not 0 <= label < embedder.n_classes:
        raise ValueError(f"class_label must be in [0, {embedder.n_classes - 1}]; got {class_label!r}.")
    cond = m.get_learned_conditioning(torch.tensor([label]))
    uncond = embedder.unconditional(1) if embedder.null_class is not None else None
    return cond, uncond


def layout_conditioning(m, layout):
    """(c, u) for one layout, a list of (class_id, x0, y0, x1, y1) with coordinates in [0, 1]."""
    if not isinstance(layout, (list, tuple)):
        raise ValueError("layout must be a list of (class_id, x0, y0, x1, y1) boxes with coordinates in "
                         f"[0, 1]; got {type(layout).__name__}.")
    return m.get_learned_conditioning([list(layout)]), m.get_learned_conditioning([[]])
