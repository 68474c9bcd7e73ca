"""Larger than trained: the default text model (64 px native) at 256 px, tiled vs in one piece.

    python bench/native_tiling.py                              # weights/shapes-txt2img.safetensors
    python bench/native_tiling.py --size 256 --seeds 0 1 2 --steps 30 --threads 1

For each seed it generates the same prompt twice: with native tiling (core/pipelines/tiling.py:
tiles of the native latent size overlapping by half a tile, blended every step) and with
native_tiling=False (the whole latent through the UNet in one piece), and prints wall seconds and
CPU seconds (the figure to read on a shared machine) and
the seam ratio (core.eval.metrics.seam_ratio: the mean jump across the tiles' edges over the mean
jump across the other latent-pixel edges; ~1 = no seam). For reference it also runs hard tiles (no
overlap, nothing blended), which is what cutting the image into native pieces would look like.
The images are saved under --out to look at.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import load_model, pipelines  # noqa: E402
from core.eval.metrics import seam_ratio  # noqa: E402
from core.pipelines.tiles import overlapping_tiles  # noqa: E402

PROMPT = ("a large red circle at the top left and a small blue star in the center and a large green square at "
          "the bottom right on a white background")


def _edges(caps, side: int, overlap_fraction: float) -> list[int]:
    f, tile = caps.factor, caps.native_size // caps.factor
    align = caps.grid // f
    overlap = int(tile * overlap_fraction) // align * align
    return sorted({e * f for t in overlapping_tiles(side // f, side // f, tile, overlap, align) for e in (t.x0, t.x1)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="weights/shapes-txt2img.safetensors")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="default: the model's")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="outputs/bench-native-tiling")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    m = load_model(args.model)
    caps = pipelines.capabilities(m)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    edges = _edges(caps, args.size, 0.5)
    hard_edges = _edges(caps, args.size, 0.0)
    tiling = sys.modules["core.pipelines.txt2img"]
    rows = []
    for seed in args.seeds:
        for mode in ("tiled", "one piece", "hard tiles"):
            plan = tiling.plan_native_tiling
            if mode == "hard tiles":                      # the same tiles, cut apart: what blending avoids
                tile, align = caps.native_size // caps.factor, caps.grid // caps.factor
                tiling.plan_native_tiling = lambda m_, w, h, e=True: (tiling_wrap(tile, align), "hard")
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                image = pipelines.txt2img(m, args.prompt, steps=args.steps, seed=seed, width=args.size,
                                          height=args.size, native_tiling=mode != "one piece")[0]
            finally:
                tiling.plan_native_tiling = plan
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            image.save(out / f"{seed}-{mode.replace(' ', '_')}.png")
            rows.append((seed, mode, seconds, seam_ratio(image, edges, edges, caps.factor),
                         seam_ratio(image, hard_edges, hard_edges, caps.factor), cpu))
            print(f"seed {seed} {mode:<10} {seconds:6.1f} s ({cpu:6.1f} CPU s)  seam ratio at the tiles' edges "
                  f"{rows[-1][3]:.3f}  at hard-tile edges {rows[-1][4]:.3f}", flush=True)
    for mode in ("tiled", "one piece", "hard tiles"):
        r = [row for row in rows if row[1] == mode]
        print(f"mean {mode:<10} {sum(x[2] for x in r) / len(r):6.1f} s ({sum(x[5] for x in r) / len(r):6.1f} CPU s)"
              f"  seam ratio {sum(x[3] for x in r) / len(r):.3f}  at hard-tile edges {sum(x[4] for x in r) / len(r):.3f}")


def tiling_wrap(tile: int, align: int):
    from core.pipelines.tiling import tiled
    return tiled(tile, 0, align)


if __name__ == "__main__":
    main()
