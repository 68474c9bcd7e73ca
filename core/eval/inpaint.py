"""Inpainting: repaint one object of a shapes-world scene in another colour, judge the whole scene.

One object of a 1- or 2-object scene is masked (its circumscribed square plus 3 px) and repainted
by core.pipelines.inpaint with the caption that gives it another colour; the result is judged
against the edited scene. Reported: the fraction entirely right and the CIEDE2000 colour difference
along the mask border (the pipeline's border_delta_e). A text-to-image model inpaints by latent
blending, a dedicated inpainting model with its mask and masked-image conditioning. Pixels outside
the mask are the original's exactly (the pipeline pastes them back; a test checks it), so there is
nothing to measure there.
"""

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

from core import pipelines
from core.capabilities import capabilities
from core.eval.results import mean, model_info
from core.eval.shapes import SCENE_STREAM, accuracy, judged_record
from core.pipelines.defaults import first_stage_factor
from core.samplers import SamplingSettings
from core.world import PALETTE, caption, judge, random_scene, render


def inpaint_cases(n: int, seed: int = 0, size: int = 64, margin: int = 3) -> list[dict]:
    """n edits: a 1- or 2-object scene, one of its objects to be repainted in another colour.

    Each case: the original scene and its render, the edited scene (what the result must show: the
    same scene with that object's colour changed), and the mask (H, W) uint8, 255 = repaint: the
    object's circumscribed square grown by `margin` pixels."""
    cases = []
    for i in range(n):
        rng = np.random.default_rng([SCENE_STREAM, seed, i, 7])
        scene = random_scene(rng, (1, 2))
        k = int(rng.integers(len(scene.objects)))
        obj = scene.objects[k]
        colour = str(rng.choice([c for c in PALETTE if c != obj.colour]))
        objects = list(scene.objects)
        objects[k] = dataclasses.replace(obj, colour=colour)
        edited = dataclasses.replace(scene, objects=tuple(objects))
        half = obj.diameter * size / 2 + margin
        x0, x1 = (max(0, int(math.floor(obj.cx * size - half))), min(size, int(math.ceil(obj.cx * size + half))))
        y0, y1 = (max(0, int(math.floor(obj.cy * size - half))), min(size, int(math.ceil(obj.cy * size + half))))
        mask = np.zeros((size, size), np.uint8)
        mask[y0:y1, x0:x1] = 255
        cases.append({"scene": scene, "edited": edited, "image": render(scene, size), "mask": mask,
                      "prompt": caption(edited), "object": k, "new_colour": colour})
    return cases


def eval_inpaint(m, n: int = 64, seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 guidance_scale: float | None = None, eta: float | None = None, karras: bool | None = None,
                 mask_blur: int = 2, save_dir=None, log=print) -> dict:
    """Inpaint every case of inpaint_cases with `m` (a dedicated inpainting model, or any text-to-image
    model by latent blending) and report the fraction of edited scenes entirely right (checker) and
    the border colour difference (CIEDE2000) the pipeline measures."""
    sampling = SamplingSettings.resolve(pipelines.model_defaults(m), sampler, karras, steps, guidance_scale, eta)
    size = m.config.image_size * first_stage_factor(m)
    records = []
    start = time.perf_counter()
    for i, case in enumerate(inpaint_cases(n, seed, size)):
        out = pipelines.inpaint(m, Image.fromarray(case["image"]), Image.fromarray(case["mask"]), case["prompt"],
                                steps=sampling.steps, guidance_scale=sampling.guidance_scale,
                                sampler=sampling.sampler, seed=seed + i, eta=sampling.eta, karras=sampling.karras,
                                mask_blur=mask_blur)[0]
        verdict = judge(np.asarray(out.convert("RGB")), case["edited"])
        border = out.info.get("ldm_studio", {}).get("border_delta_e")
        records.append({**judged_record(i, seed + i, case["prompt"], verdict), "border_delta_e": border})
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            out.save(Path(save_dir) / f"{i:05d}_{'ok' if verdict['scene_ok'] else 'wrong'}.png")
        if log and (i + 1) % 8 == 0:
            log(f"  {i + 1}/{n} edits, {sum(r['scene_ok'] for r in records)} entirely right")
    summary = accuracy(records)
    summary["border_delta_e"] = mean(r["border_delta_e"] for r in records if r["border_delta_e"] is not None)
    settings = {"n": n, "seed": seed, "sampler": sampling.sampler, "karras": sampling.karras, "steps": sampling.steps,
                "guidance_scale": sampling.guidance_scale, "eta": sampling.eta, "mask_blur": mask_blur,
                "method": "dedicated model" if capabilities(m).dedicated_inpainting else "latent blending"}
    return {"task": "inpaint", **model_info(m), "settings": settings, "summary": summary, "scenes": records,
            "wall_time_s": round(time.perf_counter() - start, 2)}


def summary_lines(result: dict) -> list[str]:
    s = result["summary"]
    return [f"inpaint ({result['settings']['method']}, {s['scenes']} edits): {s['scene_accuracy']:.1%} of edited "
            f"scenes entirely right; objects {s['object_accuracy']:.1%}; border colour difference "
            f"{s['border_delta_e']:.2f} (CIEDE2000)"]
