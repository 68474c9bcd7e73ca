"""python -m core.eval shapes|layout|sr|inpaint|autoencoder --model FILE ... (see core/eval/__init__.py)."""

import argparse
import sys

import torch

import core.eval
from core.eval import autoencoder, inpaint, layout, shapes, sr
from core.eval.results import write_json
from core.samplers import SAMPLERS

SUMMARIES = {"shapes": shapes.summary_lines, "layout": layout.summary_lines, "sr": sr.summary_lines,
             "inpaint": inpaint.summary_lines, "autoencoder": autoencoder.summary_lines}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.eval", description=core.eval.__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="task", required=True)
    for name in SUMMARIES:
        s = sub.add_parser(name)
        s.add_argument("--model", required=True, help="a project .safetensors file")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--sampler", choices=list(SAMPLERS), help="default: the model's")
        s.add_argument("--steps", type=int, help="default: the model's")
        s.add_argument("--karras", action=argparse.BooleanOptionalAction, default=None)
        s.add_argument("--eta", type=float)
        s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        s.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
        s.add_argument("--out", help="write the results here as JSON")
    ae, inp, sha, lay, srp = (sub.choices[k] for k in ("autoencoder", "inpaint", "shapes", "layout", "sr"))
    ae.add_argument("--n", type=int, default=64, help="held-out shapes-world scenes")
    ae.add_argument("--max-side", type=int, default=256, help="centre crops of the photos, at most this side")
    ae.add_argument("--no-photos", action="store_true", help="skip the four evaluation photos")
    inp.add_argument("--n", type=int, default=64, help="number of edits (one object recoloured each)")
    inp.add_argument("--guidance", type=float, help="classifier-free guidance scale; default: the model's")
    inp.add_argument("--mask-blur", type=int, default=2, help="feather of the paste-back, pixels")
    inp.add_argument("--save-images", help="folder for the results, named by index and verdict")
    sha.add_argument("--n", type=int, default=200, help="number of scenes")
    sha.add_argument("--objects", choices=list(shapes.OBJECT_CHOICES), default="mixed")
    sha.add_argument("--guidance", type=float, help="classifier-free guidance scale; default: the model's")
    sha.add_argument("--batch-size", type=int, default=16, help="captions per progress line")
    sha.add_argument("--save-images", help="folder for the generated images, named by index and verdict")
    lay.add_argument("--n", type=int, default=200, help="number of layouts")
    lay.add_argument("--objects", choices=list(shapes.OBJECT_CHOICES), default="mixed")
    lay.add_argument("--guidance", type=float, help="classifier-free guidance scale; default: the model's")
    srp.add_argument("--n-shapes", type=int, default=16, help="shapes-world scenes (256 px) besides the photos")
    srp.add_argument("--shapes-size", type=int, default=256, help="side of the shapes-world scenes")
    srp.add_argument("--max-side", type=int, help="crop the photos to at most this side (default: whole)")
    srp.add_argument("--no-photos", action="store_true", help="skip the four evaluation photos")
    srp.add_argument("--back-projection", type=int, help="rounds after decoding; default: the model's")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    from core import load_model
    m = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    common = dict(seed=args.seed, sampler=args.sampler, steps=args.steps, eta=args.eta, karras=args.karras)
    log = lambda text: print(text, file=sys.stderr, flush=True)     # noqa: E731
    if args.task == "shapes":
        result = shapes.eval_shapes(m, n=args.n, objects=args.objects, guidance_scale=args.guidance,
                                    batch_size=args.batch_size, save_dir=args.save_images, log=log, **common)
    elif args.task == "layout":
        result = layout.eval_layout(m, n=args.n, objects=args.objects, guidance_scale=args.guidance, log=log,
                                    **common)
    elif args.task == "autoencoder":
        result = autoencoder.eval_autoencoder(m, n_shapes=args.n, seed=args.seed, photos=not args.no_photos,
                                              max_side=args.max_side, log=log)
    elif args.task == "inpaint":
        result = inpaint.eval_inpaint(m, n=args.n, guidance_scale=args.guidance, mask_blur=args.mask_blur,
                                      save_dir=args.save_images, log=log, **common)
    else:
        result = sr.eval_sr(m, n_shapes=args.n_shapes, max_side=args.max_side, photos=not args.no_photos,
                            shapes_size=args.shapes_size, back_projection=args.back_projection, log=log, **common)
    result["command"] = "python -m core.eval " + " ".join(sys.argv[1:] if argv is None else argv)
    for line in SUMMARIES[args.task](result):
        print(line)
    if args.out:
        write_json(result, args.out)
        print(f"results written to {args.out}")
    return result


if __name__ == "__main__":
    main()
