"""The training command line.

    python -m core.train autoencoder|ldm --config FILE.yaml [--resume] [--name NAME] [--runs-dir DIR]
                                         [--max-steps N] [--steps N]
    python -m core.train export runs/NAME --out weights/NAME.safetensors [--name DISPLAY_NAME] [--defaults JSON]
                                        [--first-stage AUTOENCODER]
    python -m core.train export weights/NAME.safetensors --out F [--first-stage AE] [--defaults JSON] [--name N]
    python -m core.train lora --base weights/X.safetensors --data FOLDER_OR_ZIP [--rank 4] [--alpha 4]
                              [--layers attn,ff,proj,conv,text] [--steps N] [--lr LR] [--batch-size B]
                              [--size PX] [--name NAME] [--out weights/lora/NAME.safetensors]
    python -m core.train lora --config FILE.yaml | --resume --name NAME   (export: `export runs/NAME --out F`)

The same training command under `torchrun --nproc_per_node N` trains with DistributedDataParallel.
Exit status: 0 when the run finished or was stopped (SIGTERM saves a checkpoint first), 1 on failure.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from core.train.export import export_run, reexport_file
from core.train.dataset_check import extract_zip
from core.train.lora import LoraRunConfig, export_lora, is_lora_run, make_lora_config
from core.train.lora_network import LAYER_GROUPS
from core.train.session import train


def add_lora_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", help="the text-to-image model the LoRA is for, e.g. weights/X.safetensors")
    p.add_argument("--base-config", help="its YAML or bundled config name, for a file without one inside")
    p.add_argument("--data", help="a folder of images with captions (name.txt or captions.jsonl), or a .zip of one")
    p.add_argument("--rank", type=int, default=4, help="the adapters' rank (kohya's network_dim; default 4)")
    p.add_argument("--alpha", type=float, help="scale alpha / rank (kohya's network_alpha; default = rank)")
    p.add_argument("--layers", default="attn", help=f"comma-separated groups of {', '.join(LAYER_GROUPS)} "
                                                    "(default attn; text = the text encoder too)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=1, help="images per step (default 1)")
    p.add_argument("--size", type=int, help="training image side in pixels (default: the base's native size)")
    p.add_argument("--out", help="the LoRA file written when the run finishes (default weights/lora/NAME.safetensors "
                                 "when trained from --base / --data)")


def lora_cli_config(args) -> tuple[LoraRunConfig | str | None, str | None, Path | None]:
    """(config, run name, output file) of `lora`: a --config file, a resumed run, or --base and --data."""
    if args.config or args.resume:
        return args.config, args.name, Path(args.out) if args.out else None
    if not args.base or not args.data:
        raise ValueError("give --base (the text-to-image model) and --data (a folder or .zip of captioned images), "
                         "or --config FILE.yaml")
    name = args.name or f"{Path(args.data).stem}-lora"
    data = Path(args.data)
    if data.suffix.lower() == ".zip":                       # unpacked safely into the run's folder
        target = Path(args.runs_dir) / name / "data"
        if not target.is_dir():
            extract_zip(data, target)
        data = target
    config = make_lora_config(args.base, str(data), rank=args.rank, alpha=args.alpha,
                              layers=[g.strip() for g in args.layers.split(",") if g.strip()],
                              steps=args.steps or 1000, batch_size=args.batch_size, lr=args.lr,
                              image_size=args.size, base_config=args.base_config, name=name)
    return config, name, Path(args.out or Path("weights") / "lora" / f"{name}.safetensors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.train", description="Train LDM Studio models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage, what in (("autoencoder", "the first stage (KL or VQ autoencoder)"),
                        ("ldm", "a latent diffusion model on a trained first stage"),
                        ("lora", "a LoRA for a text-to-image model, exported in kohya's format")):
        p = sub.add_parser(stage, help=f"train {what}")
        p.add_argument("--config", help="training config YAML (scripts/train_configs/*.yaml); "
                                        "optional with --resume")
        p.add_argument("--resume", action="store_true", help="continue runs/NAME from its last checkpoint")
        p.add_argument("--name", help="run name (default: the config file's name)")
        p.add_argument("--runs-dir", default="runs", help="folder of the run folders (default: runs)")
        p.add_argument("--max-steps", type=int, help="stop (resumably) at this step")
        p.add_argument("--steps", type=int, help="change the run's total number of steps (e.g. to extend it)")
    add_lora_arguments(p)                                  # the last parser: lora's
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
        write = reexport_file if args.run.endswith(".safetensors") else export_lora if is_lora_run(args.run) \
            else export_run
        try:
            path = write(args.run, args.out, name=args.name, defaults=args.defaults, first_stage=args.first_stage)
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {path}")
        return 0
    config, out = args.config, None
    try:
        if args.command == "lora":
            config, args.name, out = lora_cli_config(args)
        status = train(args.command, config, name=args.name, runs_dir=args.runs_dir, resume=args.resume,
                       max_steps=args.max_steps, steps=args.steps,
                       command=" ".join(["python -m core.train", *(sys.argv[1:] if argv is None else argv)]))
    except Exception as err:                              # the traceback is in the log and state.json
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if rank == 0:
        print(f"run {status}")
    if out is not None and status == "finished":
        try:
            print(f"wrote {export_lora(Path(args.runs_dir) / args.name, out)}")
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
