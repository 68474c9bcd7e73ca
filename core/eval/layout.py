"""Layout following: does a layout-to-image model draw each box's object inside its box?

Random shapes-world scenes (the same evaluation scenes as core/eval/shapes.py) give the layouts:
each object's class (shape x colour) and circumscribed square. One image per layout by
core.pipelines.sample_layout (layout i gets seed + i, so every image IS the one a user gets), judged
by the shapes-world checker's analysis (`core.world.analyse`): an asked object is right when an
object of its colour, its shape and its size class (from the box's side: small boxes are 0.18-0.22
of the image, large 0.28-0.32) has its centre inside the box; a scene is right when every object is
and nothing else is drawn. The background is not asked by a layout, so it is not judged; a model
trained with backgrounds draws the one its default ("any") picks from the seed, recorded per layout
and summarised per background.
"""

import time
from dataclasses import asdict

import numpy as np

from core import pipelines
from core.capabilities import capabilities
from core.eval.results import mean, model_info
from core.eval.shapes import eval_scenes
from core.samplers import SamplingSettings
from core.world import PALETTE, SHAPES, analyse, layout
from core.world.checker import MIN_FIT, SIZE_THRESHOLD

ATTRIBUTES = ("found", "colour", "shape", "size")


def layout_boxes(scene) -> list[list]:
    """A scene's layout as the model reads it: [class_id, x0, y0, x1, y1] per object, the class
    shape_index * 6 + colour_index, coordinates clipped to [0, 1]."""
    return [[SHAPES.index(shape) * len(PALETTE) + list(PALETTE).index(colour),
             *(min(max(float(v), 0.0), 1.0) for v in box)]
            for shape, colour, *box in layout(scene)]


def judge_layout(image: np.ndarray, scene) -> dict:
    """Judge one image against the layout of `scene`: per asked object the seen object whose centre
    lies inside its box (the one nearest the box's centre), then colour, shape and size class."""
    seen = analyse(image).objects
    used, objects = set(), []
    for shape, colour, x0, y0, x1, y1 in layout(scene):
        inside = [(np.hypot(s.cx - (x0 + x1) / 2, s.cy - (y0 + y1) / 2), j) for j, s in enumerate(seen)
                  if j not in used and x0 <= s.cx <= x1 and y0 <= s.cy <= y1]
        j = min(inside)[1] if inside else None
        s = None if j is None else seen[j]
        used.add(j)
        size = "large" if x1 - x0 > SIZE_THRESHOLD else "small"
        verdict = {"asked": {"shape": shape, "colour": colour, "size": size, "box": [x0, y0, x1, y1]},
                   "seen": None if s is None else asdict(s), "found": s is not None,
                   "colour": s is not None and s.colour == colour,
                   "shape": s is not None and s.shape == shape and s.fit >= MIN_FIT,
                   "size": s is not None and s.size == size}
        verdict["ok"] = all(verdict[k] for k in ATTRIBUTES)
        objects.append(verdict)
    extra = len(seen) - len(used - {None})
    return {"scene_ok": extra == 0 and all(o["ok"] for o in objects), "objects": objects,
            "extra_objects": extra}


def accuracy(records: list[dict]) -> dict:
    objects = [o for r in records for o in r["objects"]]
    out = {"scenes": len(records), "scene_accuracy": mean(r["scene_ok"] for r in records),
           "objects": len(objects), "object_accuracy": mean(o["ok"] for o in objects)}
    out.update({a: mean(o[a] for o in objects) for a in ATTRIBUTES})
    out["no_extra"] = mean(r["extra_objects"] == 0 for r in records)
    return out


def eval_layout(m, n: int = 200, objects: str = "mixed", seed: int = 0, sampler: str | None = None,
                steps: int | None = None, guidance_scale: float | None = None, eta: float | None = None,
                karras: bool | None = None, batch_size: int = 8, log=print) -> dict:
    """The layout evaluation of a loaded shapes-world layout model; settings default to the model's."""
    capabilities(m).require("layout")
    defaults = pipelines.model_defaults(m)
    sampling = SamplingSettings.resolve(defaults, sampler, karras, steps, guidance_scale, eta)
    settings = {"n": n, "objects": objects, "seed": seed, "sampler": sampling.sampler, "karras": sampling.karras,
                "steps": sampling.steps, "guidance_scale": sampling.guidance_scale, "eta": sampling.eta,
                "width": defaults.width, "height": defaults.height}
    start, records = time.perf_counter(), []
    for i, scene in enumerate(eval_scenes(n, objects, seed)):
        boxes = layout_boxes(scene)
        image = pipelines.sample_layout(m, boxes, seed=seed + i, sampler=sampling.sampler, karras=sampling.karras,
                                        steps=sampling.steps, guidance_scale=sampling.guidance_scale,
                                        eta=sampling.eta, width=defaults.width, height=defaults.height)[0]
        records.append({"index": i, "seed": seed + i, "layout": boxes,
                        "background": pipelines.read_infotext(image).get("background"),
                        **judge_layout(np.asarray(image), scene)})
        if log and (i + 1) % batch_size == 0:
            log(f"  {i + 1}/{n} layouts, {sum(r['scene_ok'] for r in records)} entirely right")
    counts = sorted({len(r["objects"]) for r in records})
    backgrounds = sorted({r["background"] for r in records if r["background"]})
    return {"task": "layout", **model_info(m), "settings": settings, "summary": accuracy(records),
            "by_objects": {str(k): accuracy([r for r in records if len(r["objects"]) == k]) for k in counts},
            "by_background": {b: accuracy([r for r in records if r["background"] == b]) for b in backgrounds},
            "scenes": records, "wall_time_s": round(time.perf_counter() - start, 2)}


def summary_lines(result: dict) -> list[str]:
    lines = []
    for k, s in [("all", result["summary"]), *result["by_objects"].items()]:
        label = "all layouts" if k == "all" else f"{k}-object layouts"
        attrs = ", ".join(f"{a} {s[a]:.1%}" for a in (*ATTRIBUTES, "no_extra"))
        lines.append(f"{label} ({s['scenes']}): {s['scene_accuracy']:.1%} entirely right; {attrs}")
    if result.get("by_background"):
        lines.append("by background: " + ", ".join(f"{b} {s['scene_accuracy']:.1%} of {s['scenes']}"
                                                   for b, s in result["by_background"].items()))
    return lines
