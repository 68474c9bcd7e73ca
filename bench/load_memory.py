"""Peak memory of `load_model` on a full-size Stable Diffusion 2.1 checkpoint (random weights).

    python bench/load_memory.py [--dtype fp16|fp32] [--dir /tmp/ldm-bench]

Writes an SD 2.1-shaped original-layout .safetensors (UNet + KL-f8 + OpenCLIP ViT-H text tower) once,
then loads it in a fresh process with the v2-inference YAML and reports the peak resident memory over
the file size: about 1x means the weights were never held twice (meta-device build + assign=True).
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.unet import V2_INFERENCE  # noqa: E402  (Stability's v2-inference.yaml as a dict)


def _write(path: Path, dtype: str) -> None:
    import torch
    from safetensors.torch import save_file
    from core.checkpoints import config_from_yaml
    from core.models.diffusion import LatentDiffusion
    torch.manual_seed(0)
    model = LatentDiffusion(config_from_yaml(V2_INFERENCE))
    cast = torch.float16 if dtype == "fp16" else torch.float32
    sd = {k: (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))


def _child(path: str) -> None:
    from core import load_model
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    model = load_model(path, config=V2_INFERENCE)
    seconds = time.perf_counter() - t0
    for p in model.parameters():  # touch every weight, so memory-mapped pages count as resident
        p.float().sum()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "import_mib": base / 1024, "params": n}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--dir", default="/tmp/ldm-bench")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--write", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child)
    if args.write:
        return _write(Path(args.write), args.dtype)
    path = Path(args.dir) / f"sd21-random-{args.dtype}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # in its own process, so this one stays small for the measurement
        print(f"writing {path} ...", flush=True)
        subprocess.run([sys.executable, __file__, "--write", str(path), "--dtype", args.dtype], check=True, cwd=ROOT)
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    size = path.stat().st_size / 2 ** 20
    extra = r["peak_mib"] - r["import_mib"]
    print(f"SD 2.1 ({r['params'] / 1e6:.0f}M params), {args.dtype} file {size:.0f} MiB: load {r['seconds']:.1f} s, "
          f"peak RSS {r['peak_mib']:.0f} MiB ({r['import_mib']:.0f} MiB after imports), "
          f"weights added {extra:.0f} MiB = {extra / size:.2f}x the file")


if __name__ == "__main__":
    main()
