"""The training command line.

    python -m core.train autoencoder|ldm --config FILE.yaml [--resume] [--name NAME] [--runs-dir DIR]
                                         [--max-steps N] [--steps N]
    python -m core.train export runs/NAME --out weights/NAME.safetensors [--name DISPLAY_NAME] [--defaults JSON]
                                        [--first-stage AUTOENCODER]
    python -m core.train export weights/NAME.safetensors --out F [--first-stage AE] [--defaults JSON] [--name N]

The same training command under `torchrun --nproc_per_node N` trains with DistributedDataParallel.
Exit status: 0 when the run finished or was stopped (SIGTERM saves a checkpoint first), 1 on failure.
"""

import argparse
import json
import logging
import os
import sys

from core.train.export import export_run, reexport_file
from core.train.session import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.train", description="Train LDM Studio models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage, what in (("autoencoder", "the first stage (KL or VQ autoencoder)"),
                        ("ldm", "a latent diffusion model on a trained first stage")):
        p = sub.add_parser(stage, help=f"train {what}")
        p.add_argument("--config", help="training config YAML (scripts/train_configs/*.yaml); "
                                        "optional with --resume")
        p.add_argument("--resume", action="store_true", help="continue runs/NAME from its last checkpoint")
        p.add_argument("--name", help="run name (default: the config file's name)")
        p.add_argument("--runs-dir", default="runs", help="folder of the run folders (default: runs)")
        p.add_argument("--max-steps", type=int, help="stop (resumably) at this step")
        p.add_argument("--steps", type=int, help="change the run's total number of steps (e.g. to extend it)")
    p = sub.add_parser("export", help="write a run's EMA weights as an fp16 .safetensors")
    p.add_argument("run", help="the run folder, e.g. runs/shapes-txt2img, or an exported LDM file to rewrite "
                               "with --first-stage / --defaults / --name")
    p.add_argument("--out", required=True, help="output file, e.g. weights/shapes-txt2img.safetensors")
    p.add_argument("--name", help="display name stored in the file (default: export.name or the run's name)")
    p.add_argument("--defaults", type=json.loads, metavar="JSON",
                   help="sampling defaults over the config's export.defaults, e.g. '{\"guidance_scale\": 5}'")
    p.add_argument("--first-stage", metavar="AUTOENCODER",
                   help="LDMs: take the first stage from this autoencoder file or run folder instead (a decoder "
                        "fine-tuned with train.freeze_encoder; the encoder must be the LDM's own)")
    args = parser.parse_args(argv)

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stdout,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    if args.command == "export":
        write = reexport_file if args.run.endswith(".safetensors") else export_run
        try:
            path = write(args.run, args.out, name=args.name, defaults=args.defaults, first_stage=args.first_stage)
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {path}")
        return 0
    try:
        status = train(args.command, args.config, name=args.name, runs_dir=args.runs_dir, resume=args.resume,
                       max_steps=args.max_steps, steps=args.steps,
                       command=" ".join(["python -m core.train", *(sys.argv[1:] if argv is None else argv)]))
    except Exception as err:                              # the traceback is in the log and state.json
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if rank == 0:
        print(f"run {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
