"""Our KL-f8 VAE decoder against diffusers' AutoencoderKL on the same weights: numerics and speed.

    python bench/vae.py                       # ours only: packed (the default) against plain kernels
    .bench-venv/bin/python bench/vae.py       # with diffusers (bench/README.md for the venv)
    .bench-venv/bin/python bench/vae.py --repeats 6 --dtypes fp32

The configuration is the first stage of Stability's `v2-inference.yaml` (the SD 1.x/2.x KL-f8
autoencoder, 83M parameters), read by our own YAML translator; the weights are random but fixed
(bench/unet.py's seeded_init_), converted to diffusers' layout by diffusers' own converter for
original-LDM checkpoints. One decode: batch 1, a 4x64x64 latent -> a 3x512x512 image.

Timed in one process, alternately (A B C, C B A, ...): "ours" as load_model runs it (oneDNN-packed
weights on the CPU, core/speed.py), "ours-plain" the same model with torch's plain kernels, and
diffusers. Median wall and process-CPU milliseconds (user + system, all threads), and the ratios to
diffusers. Numerics: relative error ||a - b|| / ||b|| of each against diffusers' float32 output.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from unet import DTYPES, V2_INFERENCE, machine, seeded_init_  # noqa: E402

from core import speed  # noqa: E402
from core.checkpoints import config_from_yaml  # noqa: E402
from core.models.autoencoder import AutoencoderKL  # noqa: E402

PREFIX = "first_stage_model."  # the VAE's prefix in an original LDM checkpoint


def models(seed: int, dtype: torch.dtype, with_diffusers: bool) -> dict:
    """{"ours": packed AutoencoderKL, "diffusers": AutoencoderKL} on the same seeded weights."""
    ours = seeded_init_(AutoencoderKL(config_from_yaml(V2_INFERENCE).first_stage), seed).eval()
    out = {}
    if with_diffusers:
        from diffusers import AutoencoderKL as DiffusersKL
        from diffusers.loaders.single_file_utils import (convert_ldm_vae_checkpoint,
                                                         create_vae_diffusers_config_from_ldm)
        ldm = {PREFIX + k: v for k, v in ours.state_dict().items()}
        config = create_vae_diffusers_config_from_ldm(V2_INFERENCE, ldm)
        theirs = DiffusersKL(**config)
        theirs.load_state_dict(convert_ldm_vae_checkpoint(ldm, config), strict=True)
        out["diffusers"] = theirs.to(dtype).eval()
    ours = ours.to(dtype)
    speed.pack_as_it_fits(ours)                  # what load_model does on the CPU
    out["ours"] = ours
    return out


def steps(nets: dict, z: torch.Tensor) -> dict:
    """name -> a zero-argument decode."""
    def plain():
        with speed.plain_kernels():
            return nets["ours"].decode(z)
    out = {"ours": lambda: nets["ours"].decode(z), "ours-plain": plain}
    if "diffusers" in nets:
        out["diffusers"] = lambda: nets["diffusers"].decode(z, return_dict=False)[0]
    return out


def run(dtype_name: str, args, with_diffusers: bool) -> None:
    dtype = DTYPES[dtype_name]
    nets = models(args.seed, dtype, with_diffusers)
    z = torch.randn(1, 4, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(dtype)
    fns = steps(nets, z)
    names = list(fns)
    with torch.inference_mode():
        outputs = {name: fn().float() for name, fn in fns.items()}   # also the warm-up
        ref = outputs.get("diffusers", outputs["ours-plain"])
        print(f"\n### {dtype_name}: relative error against {'diffusers' if with_diffusers else 'ours-plain'}"
              f" ({dtype_name})")
        for name, out in outputs.items():
            print(f"- {name}: {((out - ref).norm() / ref.norm()).item():.2e}")
        wall, cpu = {n: [] for n in names}, {n: [] for n in names}
        for r in range(args.repeats):
            for name in (names if r % 2 == 0 else names[::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                fns[name]()
                wall[name].append((time.perf_counter() - t0) * 1e3)
                cpu[name].append((time.process_time() - c0) * 1e3)
    base = "diffusers" if with_diffusers else "ours-plain"
    print(f"\n| impl | dtype | median ms | min ms | median CPU ms | time / {base} | CPU time / {base} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    bw, bc = statistics.median(wall[base]), statistics.median(cpu[base])
    for name in names:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"| {name} | {dtype_name} | {w:.0f} | {min(wall[name]):.0f} | {c:.0f} | {w / bw:.2f} | {c / bc:.2f} |",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--size", type=int, default=64, help="latent side (64: a 512x512 image)")
    p.add_argument("--repeats", type=int, default=4, help="timed decodes per implementation")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=0, help="weight seed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import importlib.util
    with_diffusers = importlib.util.find_spec("diffusers") is not None
    print(f"# KL-f8 VAE decode, {args.size}x{args.size} latent -> {8 * args.size}x{8 * args.size}: ours vs "
          f"{'diffusers' if with_diffusers else 'ours with plain kernels'}\n\nmachine: {machine('cpu', args.threads)}"
          f"\npacked kernels: {speed.CPU_PACKED and bool(speed.packed_dtypes())} "
          f"({', '.join(str(d).removeprefix('torch.') for d in speed.packed_dtypes()) or 'no oneDNN'})")
    for dtype_name in args.dtypes:
        if dtype_name == "bf16" and torch.bfloat16 not in speed.packed_dtypes():
            print("\n(bf16: this CPU has no native bfloat16; ours runs the plain kernels)")
        run(dtype_name, args, with_diffusers)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (a shared machine makes figures noisy)")


if __name__ == "__main__":
    main()
