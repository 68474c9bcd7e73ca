"""Sampler quality against steps on the default text-to-image model.

For each sampler and number of steps, the same scenes (shapes-world captions, fixed seeds) are drawn
by core.pipelines.txt2img (through core.eval.eval_shapes, so each image is the one a user gets for
its seed) and judged by the project's checker (core.world.judge); the figure of merit is the
fraction of scenes entirely right and the mean accuracy of the judged attributes (colour, shape,
size, cell), next to the mean wall time per image. A sampler that needs fewer steps for the same
accuracy is the faster one, whatever its cost per step.

    python bench/samplers.py                                   # the default model, 64 scenes, all samplers
    python bench/samplers.py --n 128 --steps 5 10 20 50 --samplers ddim dpmpp_2m euler_a
    python bench/samplers.py --out bench/results/samplers.json

Prints a Markdown table (rows: sampler, columns: steps; cells: % right and s/image).
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import load_model                                   # noqa: E402
from core.eval import eval_shapes                             # noqa: E402
from core.pipelines import model_defaults                     # noqa: E402

ATTRIBUTES = ("colour", "shape", "size", "cell")

DEFAULT_SAMPLERS = ("ddim", "plms", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_karras", "unipc")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="weights/shapes-txt2img.safetensors")
    p.add_argument("--n", type=int, default=64, help="scenes per (sampler, steps) cell")
    p.add_argument("--objects", default="mixed", choices=("1", "2", "3", "mixed"))
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--samplers", nargs="+", default=list(DEFAULT_SAMPLERS),
                   help="sampler names; NAME_karras uses Karras sigmas")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    m = load_model(args.model, dtype=torch.float32)
    guidance = args.guidance if args.guidance is not None else model_defaults(m).guidance_scale
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"{args.model}: {args.n} scenes ({args.objects} objects) per cell, CFG {guidance}; {machine}")
    cells = {}
    for name in args.samplers:
        sampler, karras = (name[:-len("_karras")], True) if name.endswith("_karras") else (name, False)
        for steps in args.steps:
            start = time.perf_counter()
            r = eval_shapes(m, n=args.n, objects=args.objects, sampler=sampler, karras=karras, steps=steps,
                            guidance_scale=guidance, log=None)
            seconds = (time.perf_counter() - start) / args.n
            summary = r["summary"]
            attributes = sum(summary[a] for a in ATTRIBUTES) / len(ATTRIBUTES)
            cells[(name, steps)] = {"scene_accuracy": summary["scene_accuracy"],
                                    "object_accuracy": summary["object_accuracy"],
                                    "attribute_accuracy": attributes,
                                    **{a: summary[a] for a in ATTRIBUTES}, "s_per_image": seconds}
            print(f"  {name:16s} {steps:3d} steps: {summary['scene_accuracy']:6.1%} of scenes right, "
                  f"attributes {attributes:6.1%}, {seconds:.3f} s/image", flush=True)

    print("\ncells: scenes entirely right / mean attribute accuracy (colour, shape, size, cell) / s per image")
    print("\n| sampler | " + " | ".join(f"{s} steps" for s in args.steps) + " |")
    print("|---|" + "---|" * len(args.steps))
    for name in args.samplers:
        row = [f"{cells[(name, s)]['scene_accuracy']:.0%} / {cells[(name, s)]['attribute_accuracy']:.0%} / "
               f"{cells[(name, s)]['s_per_image']:.2f} s" for s in args.steps]
        print(f"| {name} | " + " | ".join(row) + " |")
    result = {"model": args.model, "n": args.n, "objects": args.objects, "guidance_scale": guidance,
              "machine": machine,
              "cells": [{"sampler": k[0], "steps": k[1], **v} for k, v in cells.items()]}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
