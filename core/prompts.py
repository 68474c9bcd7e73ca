"""AUTOMATIC1111's prompt syntax: emphasis, BREAK, prompt editing, alternation and AND.

The specification is A1111's `modules/prompt_parser.py` (its doctests are in tests/test_prompts.py);
this is our own reading of it, with a small recursive-descent parser in place of its `lark` grammar.

    parse_prompt_attention("a (red:1.2) ball")  -> [["a ", 1.0], ["red", 1.2], [" ball", 1.0]]
    prompt_schedules(["a [cat:dog:0.5]"], 10)   -> [[(5, "a cat"), (10, "a dog")]]
    split_and("a cat :1.2 AND a dog")            -> [("a cat", 1.2), (" a dog", 1.0)]

| syntax          | meaning                                                                     |
|-----------------|-----------------------------------------------------------------------------|
| `(a)` / `[a]`   | attention to `a` x 1.1 / / 1.1; nested brackets multiply                     |
| `(a:1.3)`       | attention x 1.3                                                             |
| `\\(` `\\)` `\\[` `\\]` | the literal bracket                                                  |
| `BREAK`         | start a new 75-token chunk                                                  |
| `[a:b:when]`    | `a` until step `when`, then `b`; `when` with a "." is a fraction of the steps |
| `[a:when]` / `[a::when]` | add / remove `a` after step `when`                                 |
| `[a|b|c]`       | alternate a, b, c every step                                                |
| `p1 :1.2 AND p2`| composable diffusion: each sub-prompt guides with its own weight            |

Malformed syntax never raises: unbalanced brackets are text, as in A1111 (a prompt the editing
grammar rejects, e.g. one with a `|` outside `[...]`, is used as it is, without editing).
"""
import math
import re
from typing import NamedTuple

ROUND_MULTIPLIER = 1.1            # (a)
SQUARE_MULTIPLIER = 1 / 1.1       # [a]
BREAK = ["BREAK", -1]             # parse_prompt_attention's chunk separator

# ---------------------------------------------------------------------------------------------
# Emphasis: parse_prompt_attention
# ---------------------------------------------------------------------------------------------

# One lexical unit of the emphasis syntax, tried in this order at each position.
_ATTENTION_TOKEN = re.compile(r"""
      \\[()\[\]\\]                          # an escaped bracket or backslash: that character
    | \\                                    # a lone backslash: dropped
    | [(\[]                                 # opens a bracket
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)      # ":1.3)" closes a round bracket with a weight
    | [)\]]                                 # closes a bracket
    | [^\\()\[\]:]+                         # text
    | :                                     # a colon that is not a weight: text
""", re.X)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[list]:
    """[[text, weight], ...]: the prompt cut where its attention weight changes.

    `(a)` multiplies a's weight by 1.1, `[a]` divides it by 1.1, `(a:w)` multiplies by w; nesting
    multiplies; an unclosed bracket applies to the rest of the prompt; a closing bracket with no
    opener and a colon are text. `BREAK` (a word of its own, outside brackets) is returned as
    ["BREAK", -1]. Neighbours of equal weight are merged; "" gives [["", 1.0]].
    """
    pieces: list[list] = []                   # [text, weight]
    open_round: list[int] = []                # index in pieces where each open bracket starts
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        token, weight = match.group(0), _float_or_none(match.group("weight"))
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token in "([":
            (open_round if token == "(" else open_square).append(len(pieces))
        elif weight is not None and open_round:
            scale_from(open_round.pop(), weight)
        elif token == ")" and open_round:
            scale_from(open_round.pop(), ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_MULTIPLIER)
        else:                                 # text (and brackets or weights that close nothing)
            for i, part in enumerate(_BREAK_SPLIT.split(token)):
                if i:
                    pieces.append(list(BREAK))
                pieces.append([part, 1.0])
    for start in open_round:                  # unclosed brackets reach the end of the prompt
        scale_from(start, ROUND_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_MULTIPLIER)

    if not pieces:
        return [["", 1.0]]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return merged


def _float_or_none(text):
    """A weight such as "1.2"; None when absent or not a number ("1.2.3": then the token is text,
    where A1111 would raise)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def has_attention_syntax(text: str) -> bool:
    """Whether parse_prompt_attention would change anything: brackets, backslashes or BREAK."""
    return any(c in text for c in "()[]\\") or _BREAK_SPLIT.search(text) is not None


# ---------------------------------------------------------------------------------------------
# Prompt editing and alternation: prompt_schedules
# ---------------------------------------------------------------------------------------------
# A1111's grammar (lark, Earley), which the parser below follows:
#   start:       (prompt | stray bracket or colon)*
#   prompt:      (emphasized | scheduled | alternate | plain)*
#   emphasized:  "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"     (kept as text)
#   scheduled:   "[" [prompt ":"] prompt ":" NUMBER "]"      (spaces allowed around NUMBER)
#   alternate:   "[" prompt ("|" [prompt])+ "]"
#   plain:       characters other than \ [ ] ( ) : |, or a backslash and the character after it
# Where a bracket can be read both as a structure and as stray text ("[a:3]]": editing followed by
# a stray "]", or "[", "a", ":", "3", "]]" as text), lark's Earley parser picks one by the order of
# a hash set, so A1111 answers differently from one process start to the next (PYTHONHASHSEED).
# We always take the structure, which is one of its answers and the one every doctest shows.

class Scheduled(NamedTuple):
    before: list | None             # nodes, or None for "[after:when]"
    after: list
    when: str                       # the NUMBER as written ("0.5", "10", "1e1")


class Alternate(NamedTuple):
    options: list                   # a list of node lists


_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")          # "." stops at a newline, as lark's regex
_WHEN = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")
_STRAY = "[]():"                    # may stand alone at the top level; "|" may not


def _prompt(s: str, i: int, memo: dict) -> tuple[list, int]:
    """A prompt starting at i: (nodes, end). Stops at the first character it cannot take.
    `memo`: the structures already tried, by position (each is tried once: linear time)."""
    nodes = []
    while i < len(s):
        plain = _PLAIN.match(s, i)
        if plain:
            nodes.append(plain.group())
            i = plain.end()
            continue
        if s[i] in "([" and i not in memo:
            memo[i] = _bracket(s, i, memo)
        bracket = memo.get(i)
        if bracket is None:
            break
        more, i = bracket
        nodes.extend(more)
    return nodes, i


def _bracket(s: str, i: int, memo: dict) -> tuple[list, int] | None:
    """The emphasized, scheduled or alternate structure opening at s[i], or None."""
    first, j = _prompt(s, i + 1, memo)
    if j >= len(s):
        return None
    if s[i] == "(":
        if s[j] == ")":
            return ["(", *first, ")"], j + 1
        if s[j] == ":":
            second, k = _prompt(s, j + 1, memo)
            if k < len(s) and s[k] == ")":
                return ["(", *first, ":", *second, ")"], k + 1
        return None
    if s[j] == "]":
        return ["[", *first, "]"], j + 1
    if s[j] == "|":
        options = [first]
        while j < len(s) and s[j] == "|":
            option, j = _prompt(s, j + 1, memo)
            options.append(option)
        return ([Alternate(options)], j + 1) if j < len(s) and s[j] == "]" else None
    if s[j] == ":":
        when = _WHEN.match(s, j + 1)
        if when:                                                    # [after:when]
            return [Scheduled(None, first, when.group(1))], when.end()
        second, k = _prompt(s, j + 1, memo)
        when = _WHEN.match(s, k + 1) if k < len(s) and s[k] == ":" else None
        if when:                                                    # [before:after:when]
            return [Scheduled(first, second, when.group(1))], when.end()
    return None


def _parse_schedule(s: str) -> list | None:
    """The prompt's nodes, or None where A1111's grammar rejects it (a "|" outside an
    alternation, a backslash at the end or before a newline) or it nests deeper than Python's
    recursion limit (A1111 parses those; we use such a prompt as it is)."""
    try:
        return _parse_top(s)
    except RecursionError:
        return None


def _parse_top(s: str) -> list | None:
    nodes, i, memo = [], 0, {}
    while True:
        more, i = _prompt(s, i, memo)
        nodes.extend(more)
        if i == len(s):
            return nodes
        if s[i] not in _STRAY:
            return None
        nodes.append(s[i])                                          # an unbalanced bracket: text
        i += 1


def _step_of(when: str, steps: int, base_steps: int | None) -> int:
    """The step a `when` names: with a "." a fraction of `steps`, else a step number (for the
    hires pass, both count from the first pass: 1.5 = half way, base_steps + 5 = step 5)."""
    value = float(when)
    if base_steps is None:
        value = value * steps if "." in when else value
    else:
        value = (value - 1.0) * steps if "." in when else value - base_steps
    if math.isinf(value):
        return steps if value > 0 else -1
    return min(steps, int(value))


def _walk(nodes):
    for node in nodes:
        yield node
        if isinstance(node, Scheduled):
            yield from _walk(node.before or [])
            yield from _walk(node.after)
        elif isinstance(node, Alternate):
            for option in node.options:
                yield from _walk(option)


def _text_at(nodes: list, step: int, whens: dict) -> str:
    out = []
    for node in nodes:
        if isinstance(node, Scheduled):
            out.append(_text_at(node.before or [], step, whens) if step <= whens[id(node)]
                       else _text_at(node.after, step, whens))
        elif isinstance(node, Alternate):
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step, whens))
        else:
            out.append(node)
    return "".join(out)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """[(end_step, text), ...] for one prompt: `text` is used up to and including step end_step
    (A1111's reconstruct_cond_batch: the first entry with current_step <= end_step)."""
    total = steps if hires_steps is None else hires_steps
    base = None if hires_steps is None else steps
    nodes = _parse_schedule(prompt)
    if nodes is None:
        return [(total, prompt)]
    ends, whens = {total}, {}
    for node in _walk(nodes):
        if isinstance(node, Scheduled):
            whens[id(node)] = _step_of(node.when, total, base)
            if whens[id(node)] >= 1:
                ends.add(whens[id(node)])
        elif isinstance(node, Alternate):
            ends.update(range(1, total + 1))
    return [(end, _text_at(nodes, end, whens)) for end in sorted(ends)]


def prompt_schedules(prompts: list[str], steps: int, hires_steps: int | None = None) -> list[list[tuple[int, str]]]:
    """A1111's get_learned_conditioning_prompt_schedules: for each prompt, [(end_step, text), ...].

    `[a:b:when]` switches from a to b after step `when`; a `when` holding "." is a fraction of
    `steps`; `[a|b]` alternates every step. With `hires_steps` (the second pass of hires fix) the
    schedule spans the hires steps, and `when` counts from the start of the first pass (A1111's
    default since 1.6: a fraction above 1, or a step number above `steps`).
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a list of strings; got {prompts!r}.")
    for name, value in (("steps", steps), ("hires_steps", hires_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a whole number >= 1; got {value!r}.")
    return [prompt_schedule(p, steps, hires_steps) for p in prompts]


def has_schedule_syntax(prompt: str) -> bool:
    """Whether prompt_schedule could give more than one text (a "[...:...]" or "[...|...]")."""
    return "[" in prompt and (":" in prompt or "|" in prompt)


# ---------------------------------------------------------------------------------------------
# Composition: AND
# ---------------------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_TRAILING_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """A1111's get_multicond_prompt_list for one prompt: the sub-prompts between the words AND,
    each with the weight written at its end (`a cat :1.2`; 1.0 when none)."""
    out = []
    for sub in _AND.split(prompt):
        text, weight = _TRAILING_WEIGHT.match(sub).groups()
        out.append((text, 1.0 if weight is None else float(weight)))
    return out


# ---------------------------------------------------------------------------------------------
# Chunks: the token ids of a weighted prompt, cut into the encoder's 75-token windows
# ---------------------------------------------------------------------------------------------

class Chunk(NamedTuple):
    ids: list[int]                  # chunk_length token ids (padded with the end id), no BOS/EOS
    weights: list[float]            # one emphasis multiplier per id


def prompt_chunks(pieces: list[tuple[list[int], float]], chunk_length: int, end_id: int, comma_id: int | None,
                  comma_backtrack: int = 20) -> list[Chunk]:
    """A1111's tokenize_line: weighted pieces (token ids, weight) -> chunks of chunk_length ids.

    A piece of weight -1 whose ids are None is a BREAK: the chunk ends there. When a chunk fills
    up and its last comma is at most `comma_backtrack` tokens back, the tokens after that comma
    move to the next chunk (A1111's comma_padding_backtrack, default 20). Each chunk is padded
    with `end_id` (weight 1); at least one chunk is returned.
    """
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close():
        nonlocal ids, weights, last_comma
        pad = chunk_length - len(ids)
        chunks.append(Chunk(ids + [end_id] * pad, weights + [1.0] * pad))
        ids, weights, last_comma = [], [], -1

    for piece_ids, weight in pieces:
        if piece_ids is None:                                       # BREAK
            close()
            continue
        for token in piece_ids:
            if token == comma_id:
                last_comma = len(ids)
            elif (comma_backtrack and len(ids) == chunk_length and last_comma != -1
                  and len(ids) - last_comma <= comma_backtrack):
                moved_ids, moved_weights = ids[last_comma + 1:], weights[last_comma + 1:]
                ids, weights = ids[:last_comma + 1], weights[:last_comma + 1]
                close()
                ids, weights = moved_ids, moved_weights
            if len(ids) == chunk_length:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks
