"""Caption following: does a text-to-image model draw what a shapes-world caption asks?

Random shapes-world captions (shared/shapes_world.md), one image each by core.pipelines.txt2img
(scene i gets seed + i, so every image IS the one a user gets for that caption and seed), judged by
`core.world.judge` (colour, shape, size, cell per object, no extra object, background). Reported:
the fraction of scenes entirely right, per-attribute accuracy over the asked objects, and both
split by the number of objects. The judging takes a plain callable (captions, seeds -> images), so
a test can pass a perfect "model" through exactly the same path.
"""

import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from core import pipelines
from core.eval.results import mean, model_info
from core.capabilities import capabilities
from core.pipelines.defaults import check_size
from core.samplers import SamplingSettings
from core.world import caption, judge, random_scene

OBJECT_CHOICES = {"1": 1, "2": 2, "3": 3, "mixed": None}
SCENE_STREAM = 0x5EE1      # the evaluation scenes' own numpy stream, apart from the training world's
ATTRIBUTES = ("found", "colour", "shape", "size", "cell")


def eval_scenes(n: int, objects: str = "mixed", seed: int = 0) -> list:
    """n random scenes for captions; scene i from numpy's PCG64 seeded with (SCENE_STREAM, seed, i)."""
    if objects not in OBJECT_CHOICES:
        raise ValueError(f"objects must be one of {list(OBJECT_CHOICES)}, got {objects!r}")
    if n <= 0:
        raise ValueError(f"n must be a positive number of scenes, got {n}")
    return [random_scene(np.random.default_rng([SCENE_STREAM, seed, i]), OBJECT_CHOICES[objects])
            for i in range(n)]


def text_generator(m, width: int, height: int, settings: SamplingSettings
                   ) -> Callable[[list[str], list[int]], list[np.ndarray]]:
    """captions, seeds -> uint8 (H, W, 3) images, each `pipelines.txt2img(m, caption, seed=seed)`
    under `settings` with the empty negative prompt."""
    capabilities(m).require("txt2img")
    check_size(m, width, height, "the shapes evaluation")

    def generate(captions: list[str], seeds: list[int]) -> list[np.ndarray]:
        return [np.asarray(pipelines.txt2img(
            m, text, "", steps=settings.steps, guidance_scale=settings.guidance_scale, sampler=settings.sampler,
            seed=int(seed), width=width, height=height, eta=settings.eta, karras=settings.karras)[0])
            for text, seed in zip(captions, seeds)]

    return generate


def evaluate_shapes(generate: Callable, scenes: list, seeds: list[int], batch_size: int = 16,
                    save_dir: str | Path | None = None, log=print) -> dict:
    """Generate an image per scene's caption (batch_size captions per call) and judge it."""
    records = []
    for start in range(0, len(scenes), batch_size):
        batch = scenes[start:start + batch_size]
        texts = [caption(s) for s in batch]
        images = generate(texts, seeds[start:start + batch_size])
        for k, (scene, text, image) in enumerate(zip(batch, texts, images)):
            i = start + k
            verdict = judge(image, scene)
            records.append(judged_record(i, seeds[i], text, verdict))
            if save_dir is not None:
                Path(save_dir).mkdir(parents=True, exist_ok=True)
                mark = "ok" if verdict["scene_ok"] else "wrong"
                Image.fromarray(image).save(Path(save_dir) / f"{i:05d}_{mark}.png")
        if log:
            right = sum(r["scene_ok"] for r in records)
            log(f"  {len(records)}/{len(scenes)} scenes, {right} entirely right")
    return {"summary": accuracy(records), "by_objects": _by_objects(records), "scenes": records}


def judged_record(index: int, seed: int, text: str, verdict: dict) -> dict:
    """One scene's record from core.world.judge's verdict."""
    objects = [{"asked": o["asked"], "found": o["found"], "colour": o["colour_ok"],
                "shape": o["shape_ok"], "size": o["size_ok"], "cell": o["cell_ok"], "ok": o["ok"]}
               for o in verdict["objects"]]
    return {
        "index": index, "seed": seed, "caption": text, "scene_ok": verdict["scene_ok"],
        "background_ok": verdict["background"]["ok"], "background_seen": verdict["background"]["seen"],
        # count: as many objects seen as asked (none missing, none extra)
        "count_ok": all(o["found"] for o in objects) and verdict["no_extra"],
        "extra_objects": len(verdict["extra_objects"]), "objects": objects,
    }


def accuracy(records: list[dict]) -> dict:
    """Scene and per-attribute accuracies over judged records."""
    objects = [o for r in records for o in r["objects"]]
    out = {"scenes": len(records), "scene_accuracy": mean(r["scene_ok"] for r in records),
           "objects": len(objects), "object_accuracy": mean(o["ok"] for o in objects)}
    out.update({a: mean(o[a] for o in objects) for a in ATTRIBUTES})
    out["count"] = mean(r["count_ok"] for r in records)
    out["background"] = mean(r["background_ok"] for r in records)
    return out


def _by_objects(records: list[dict]) -> dict:
    counts = sorted({len(r["objects"]) for r in records})
    return {str(k): accuracy([r for r in records if len(r["objects"]) == k]) for k in counts}


def eval_shapes(m, n: int = 200, objects: str = "mixed", seed: int = 0, sampler: str | None = None,
                steps: int | None = None, guidance_scale: float | None = None, eta: float | None = None,
                karras: bool | None = None, width: int | None = None, height: int | None = None,
                batch_size: int = 16, save_dir=None, log=print) -> dict:
    """The shapes evaluation of a loaded text-to-image model; settings default to the model's own."""
    defaults = pipelines.model_defaults(m)
    sampling = SamplingSettings.resolve(defaults, sampler, karras, steps, guidance_scale, eta)
    width, height = width or defaults.width, height or defaults.height
    settings = {"n": n, "objects": objects, "seed": seed, "sampler": sampling.sampler, "karras": sampling.karras,
                "steps": sampling.steps, "guidance_scale": sampling.guidance_scale, "eta": sampling.eta,
                "width": width, "height": height, "batch_size": batch_size}
    generate = text_generator(m, width, height, sampling)
    start = time.perf_counter()
    result = evaluate_shapes(generate, eval_scenes(n, objects, seed), [seed + i for i in range(n)],
                             batch_size, save_dir, log)
    return {"task": "shapes", **model_info(m), "settings": settings, **result,
            "wall_time_s": round(time.perf_counter() - start, 2)}


def summary_lines(result: dict) -> list[str]:
    lines = []
    for k, s in [("all", result["summary"]), *result["by_objects"].items()]:
        label = "all scenes" if k == "all" else f"{k}-object scenes"
        attrs = ", ".join(f"{a} {s[a]:.1%}" for a in (*ATTRIBUTES, "count", "background"))
        lines.append(f"{label} ({s['scenes']}): {s['scene_accuracy']:.1%} entirely right; {attrs}")
    return lines
