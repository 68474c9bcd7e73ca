"""Conditioning that changes while sampling: AUTOMATIC1111's prompt editing (`[a:b:when]`),
alternation (`[a|b]`) and composition (`a AND b`), as data plus one denoiser wrapper.

    CondSchedule(((3, c_a), (10, c_b)))        c_a at sampler steps 0..3, then c_b
    Composition(((1.0, c_cat), (0.5, c_dog)))  AND: each part guides with its weight
    ScheduledConditioning(guided)              guided(x, t, cond=, uncond=, cond_scale=) with the
                                               cond and uncond of the current step

The samplers never see any of it: ScheduledConditioning resolves the schedule to plain tensors
(or dicts of them) before classifier-free guidance, and learns the step from the sampler's
callback (`advance(i)` after step i), so every sampler follows it however many times it calls
the denoiser per step. CFGDenoiser combines a Composition (core/samplers/denoisers.py).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class CondSchedule:
    """[(end_step, cond), ...] with ascending end steps: cond is used at the sampler steps i
    (0-based) with i <= end_step, the first such entry (A1111's reconstruct_cond_batch); steps
    past the last end (DDIM's extra step when steps does not divide T) keep the last one."""
    entries: tuple

    def at(self, step: int):
        for end, cond in self.entries:
            if step <= end:
                return cond
        return self.entries[-1][1]


@dataclass(frozen=True)
class Composition:
    """AND (composable diffusion, Liu et al. 2022): ((weight, cond), ...), each cond a plain
    conditioning or a CondSchedule."""
    parts: tuple


def is_scheduled(c) -> bool:
    """Whether c holds a CondSchedule or a Composition anywhere (in dicts and lists too)."""
    if isinstance(c, (CondSchedule, Composition)):
        return True
    if isinstance(c, dict):
        return any(is_scheduled(v) for v in c.values())
    if isinstance(c, (list, tuple)):
        return any(is_scheduled(v) for v in c)
    return False


def conditioning_at(c, step: int):
    """c at sampler step `step`: schedules resolved; a Composition inside a dict or list (the
    text part of an inpainting model's {"c_concat", "c_crossattn"}) lifted to the top, so the
    result is a plain conditioning or a Composition of plain ones."""
    if isinstance(c, CondSchedule):
        return conditioning_at(c.at(step), step)
    if isinstance(c, Composition):
        return Composition(tuple((w, conditioning_at(part, step)) for w, part in c.parts))
    if isinstance(c, dict):
        resolved = {k: conditioning_at(v, step) for k, v in c.items()}
        return _lift(resolved, resolved.items(), lambda key, part: {**resolved, key: part})
    if isinstance(c, (list, tuple)):
        resolved = [conditioning_at(v, step) for v in c]
        return _lift(resolved, enumerate(resolved), lambda i, part: resolved[:i] + [part] + resolved[i + 1:])
    return c


def _lift(container, items, replace):
    for key, value in items:
        if isinstance(value, Composition):
            return Composition(tuple((w, replace(key, part)) for w, part in value.parts))
    return container


class ScheduledConditioning:
    """guided(x, t, cond=, uncond=, cond_scale=) -> the same, with cond and uncond taken at the
    current sampler step. `advance(i)` (chained to the sampler's callback) moves to step i + 1."""

    def __init__(self, guided):
        self.inner = guided
        self.step = 0

    def advance(self, i: int) -> None:
        self.step = i + 1

    def following(self, callback):
        """A sampler callback that advances the step, then calls `callback` (if any)."""
        def step_done(i, total, x, pred_x0):
            self.advance(i)
            if callback is not None:
                callback(i, total, x, pred_x0)
        return step_done

    def __call__(self, x, t, cond=None, uncond=None, cond_scale=1.0):
        return self.inner(x, t, cond=conditioning_at(cond, self.step), uncond=conditioning_at(uncond, self.step),
                          cond_scale=cond_scale)
