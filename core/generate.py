"""Command line for the pipelines: writes PNGs (with their "parameters" text) into an output folder.

    python -m core.generate txt2img --model weights/shapes-txt2img.safetensors \\
        --prompt "a large red circle in the center on a white background" --n 4 --seed 1
    python -m core.generate img2img --model M --image in.png --prompt "..." --strength 0.6
    python -m core.generate inpaint --model M --image in.png --mask mask.png --prompt "..."
    python -m core.generate outpaint --model M --image in.png --right 64 --prompt "..."
    python -m core.generate upscale --model weights/shapes-sr.safetensors --image small.png
    python -m core.generate class --model cin256-v2.ckpt --config cin256-v2.yaml --class-label 207
    python -m core.generate layout --model M --layout boxes.txt       # "circle red 0.02 0.02 0.32 0.32" a line
    python -m core.generate layout --model M --layout boxes.json      # or [[class_id, x0, y0, x1, y1], ...]
    python -m core.generate uncond --model M --n 4
    python -m core.generate semantic --model M --config semantic_synthesis256.yaml --segmentation labels.png
    python -m core.generate txt2img --model M --prompt "..." --width 256 --height 256   # tiled above native
    python -m core.generate txt2img --help

Files are named NNNNN-SEED.png in --outdir (default outputs/YYYY-MM-DD/), numbered after the
highest number already there, never overwriting. The written paths go to stdout, a progress bar to
stderr. Errors print one line and exit with status 2; Ctrl-C stops after the current step, saves
the images already finished and exits with 130 (a second Ctrl-C aborts at once).
"""

import argparse
import datetime
import signal
import sys
import threading
import warnings
from pathlib import Path

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, prompts: bool = True, count: bool = True) -> None:
    g = p.add_argument_group("model and output")
    g.add_argument("--model", required=True, metavar="PATH",
                   help="weights file: a project .safetensors (config inside) or an original .ckpt/.safetensors")
    g.add_argument("--config", metavar="YAML",
                   help="the CompVis/Stability YAML an original checkpoint was released with")
    g.add_argument("--device", default=None, help="where to run: cpu, cuda, cuda:1 ... (default: cuda when "
                   "available, else cpu, as the app)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="weights precision (default: float32 on the CPU, where float16 is many times slower, "
                        "float16 on CUDA, as the app)")
    g.add_argument("--outdir", metavar="DIR", default=None, help="output folder (default outputs/YYYY-MM-DD)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    s = p.add_argument_group("sampling (defaults: the model file's, else the reference's)")
    s.add_argument("--seed", type=int, default=None,
                   help="seed of the first image; image i uses seed+i (default random, recorded)")
    s.add_argument("--steps", type=int, default=None, help="sampling steps")
    s.add_argument("--sampler", default=None,
                   help="ddim, plms, ddpm, euler, euler_a, heun, dpmpp_2m, unipc (or 'DPM++ 2M' ...)")
    s.add_argument("--karras", action=argparse.BooleanOptionalAction, default=None,
                   help="Karras sigmas (sigma-space samplers only)")
    s.add_argument("--cfg-scale", dest="guidance_scale", type=float, default=None,
                   help="classifier-free guidance scale (1 = no guidance)")
    s.add_argument("--eta", type=float, default=None, help="DDIM eta (0 = deterministic)")
    s.add_argument("--vae-tile", type=int, default=None, metavar="N",
                   help="decode in tiles of N latent pixels (0 = never; default: only when memory requires)")
    if prompts:
        s.add_argument("--prompt", default="", help="what to draw")
        s.add_argument("--negative-prompt", default="", help="what to steer away from")
    if count:
        s.add_argument("--n", type=int, default=1, help="number of images (default 1)")
        s.add_argument("--batch-size", type=int, default=1,
                       help="images per UNet batch (faster on a GPU; each image still depends only on its seed)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.generate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{txt2img,img2img,inpaint,outpaint,upscale,class,uncond,layout,semantic}")

    p = sub.add_parser("txt2img", help="text to image")
    _common(p)
    _networks(p)
    _size(p)
    h = p.add_argument_group("hires fix (a second img2img pass at a larger size, as AUTOMATIC1111's)")
    h.add_argument("--hires", action="store_true", help="turn the hires fix on")
    h.add_argument("--hires-scale", type=float, default=2.0, help="upscale factor of the second pass (default 2)")
    h.add_argument("--hires-width", type=int, default=None, help="target width instead of a scale")
    h.add_argument("--hires-height", type=int, default=None, help="target height instead of a scale")
    h.add_argument("--hires-upscaler", default="Latent",
                   help="Latent, 'Latent (antialiased)', 'Latent (bicubic)', 'Latent (nearest-exact)', Lanczos, "
                        "Nearest, or the path of a super-resolution model file")
    h.add_argument("--hires-steps", type=int, default=None, help="second-pass steps (default: as the first)")
    h.add_argument("--hires-strength", type=float, default=0.7, help="denoising strength of the second pass")
    h.add_argument("--hires-prompt", default=None, help="second-pass prompt (default: the prompt)")
    h.add_argument("--hires-negative-prompt", default=None, help="second-pass negative prompt")
    h.add_argument("--hires-sampler", default=None, help="second-pass sampler (default: the first's)")
    r = p.add_argument_group("refiner (a second model finishes the sampling, as AUTOMATIC1111's)")
    r.add_argument("--refiner", default=None, metavar="FILE", help="the refiner model, e.g. an SDXL refiner")
    r.add_argument("--refiner-switch-at", type=float, default=0.8, metavar="F",
                   help="fraction of the steps the base model samples before the refiner takes over (default 0.8)")

    p = sub.add_parser("img2img", help="image to image (SDEdit)")
    _common(p)
    _networks(p)
    p.add_argument("--image", required=True, help="input image")
    p.add_argument("--strength", type=float, default=0.75, help="fraction of the schedule re-run (0, 1]")
    p.add_argument("--width", type=int, default=None, help="resize the image to this width first")
    p.add_argument("--height", type=int, default=None, help="resize the image to this height first")
    p.add_argument("--resize-mode", default="just_resize",
                   choices=["just_resize", "crop_and_resize", "resize_and_fill"],
                   help="how the image is brought to --width x --height (AUTOMATIC1111's modes 0, 1, 2)")

    p = sub.add_parser("inpaint", help="repaint the white part of a mask")
    _common(p)
    _networks(p)
    p.add_argument("--image", required=True, help="input image")
    p.add_argument("--mask", required=True, help="mask image: white = repaint, black = keep")
    p.add_argument("--strength", type=float, default=1.0, help="fraction of the schedule run (1 = from noise)")
    p.add_argument("--mask-blur", type=int, default=4, help="feather of the paste-back in pixels")
    p.add_argument("--inpaint-area", choices=["whole", "only_masked"], default="whole",
                   help="process the whole picture, or a crop around the mask at the model's size")
    p.add_argument("--padding", type=int, default=32, help="only_masked: pixels of context around the mask")
    p.add_argument("--masked-content", choices=["original", "fill", "latent_noise", "latent_nothing"],
                   default="original", help="what the masked area starts from")
    p.add_argument("--width", type=int, default=None, help="only_masked: processing width")
    p.add_argument("--height", type=int, default=None, help="only_masked: processing height")
    p.add_argument("--no-color-match", dest="color_match", action="store_false",
                   help="do not correct the colour shift measured around the mask")
    p.add_argument("--soft-inpainting", action="store_true",
                   help="keep the mask fractional: grey = a partial change, the blur a real transition")

    p = sub.add_parser("outpaint", help="grow the canvas and paint the new area")
    _common(p)
    _networks(p)
    p.add_argument("--image", required=True, help="input image")
    for side in ("left", "right", "top", "bottom"):
        p.add_argument(f"--{side}", type=int, default=0, help=f"pixels added on the {side} (a multiple of the grid)")
    p.add_argument("--fill", choices=["edge", "fill", "latent_noise", "latent_nothing"], default="edge",
                   help="what the new area starts from (edge: the border colours extended)")
    p.add_argument("--overlap", type=int, default=None, help="blended band inside the original, px "
                   "(default 4 latent cells)")
    p.add_argument("--strength", type=float, default=1.0, help="fraction of the schedule run (1 = from noise)")
    p.add_argument("--inpaint-area", choices=["whole", "only_masked"], default="whole",
                   help="process the whole canvas, or a crop around the new area at the model's size")
    p.add_argument("--padding", type=int, default=32, help="only_masked: pixels of context around the new area")
    p.add_argument("--soft-inpainting", action="store_true", help="the band's weight also drives the latent blend")

    p = sub.add_parser("upscale", help="super-resolution, tiled to any size")
    _common(p, count=False)
    p.add_argument("--image", required=True, help="input (low-resolution) image")
    p.add_argument("--tile", type=int, default=None, help="UNet tile in input pixels (default: planned)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in input pixels (default tile/4)")
    p.add_argument("--tile-batch", type=int, default=1, help="tiles per UNet call")
    p.add_argument("--noise-level", type=int, default=None, help="x4 upscaler: noise augmentation level")
    p.add_argument("--scale", type=float, default=None,
                   help="output side / input side, above 1 and at most the model's factor (default: the factor, 4)")
    p.add_argument("--back-projection", type=int, default=None, metavar="ROUNDS",
                   help="rounds of back-projection onto the input after decoding (default: the model's)")

    p = sub.add_parser("class", help="class-conditional sampling (e.g. cin256)")
    _common(p, prompts=False)
    p.add_argument("--class-label", type=int, required=True, help="the class number")
    _size(p)
    p = sub.add_parser("uncond", help="unconditional sampling")
    _common(p, prompts=False)
    _size(p)
    p = sub.add_parser("layout", help="layout to image")
    _common(p, prompts=False)
    p.add_argument("--layout", required=True, metavar="FILE",
                   help="a text file, one object a line: its label then x0 y0 x1 y1 in [0, 1] ('circle red 0.1 "
                        "0.1 0.4 0.4'); or a JSON file: a list of [class_id, x0, y0, x1, y1]")
    p.add_argument("--background", default=None,
                   help="for a model trained with backgrounds: white, black or gray (default any: drawn from the seed)")
    _size(p)
    p = sub.add_parser("semantic", help="semantic synthesis: an image from a segmentation map")
    _common(p, prompts=False)
    p.add_argument("--segmentation", required=True, metavar="FILE.png",
                   help="a label map: a single-channel PNG whose pixel values are class ids; the image has its size")
    return parser


def _networks(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LoRA and embeddings (AUTOMATIC1111's files)")
    g.add_argument("--lora-dir", default="weights/lora", metavar="DIR",
                   help="folder of the prompt's <lora:name:weight> tags (default weights/lora)")
    g.add_argument("--embeddings-dir", default="weights/embeddings", metavar="DIR",
                   help="textual-inversion embeddings used by writing their name (default weights/embeddings)")


def _size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, default=None, help="pixels, a multiple of the model's grid")
    p.add_argument("--height", type=int, default=None, help="pixels, a multiple of the model's grid")
    p.add_argument("--native-tiling", action=argparse.BooleanOptionalAction, default=False,
                   help="above the model's native size, denoise the whole image in overlapping tiles of the "
                        "native size blended every step (default: in one piece, as AUTOMATIC1111 does)")


# ---------------------------------------------------------------------------------------------
# Output files and progress
# ---------------------------------------------------------------------------------------------

class ProgressBar:
    """A one-line progress bar on stderr (redrawn with carriage returns)."""

    def __init__(self, enabled: bool, width: int = 30):
        self.enabled, self.width, self.shown = enabled, width, False

    def __call__(self, progress) -> None:
        if not self.enabled:
            return
        filled = int(round(self.width * progress.fraction))
        bar = "#" * filled + "-" * (self.width - filled)
        where = f"image {progress.image + 1}/{progress.images}"
        if progress.tile is not None:
            where += f" tile {progress.tile}/{progress.tiles}"
        line = f"\r{progress.stage:<6} [{bar}] {progress.step}/{progress.total} {where}"
        sys.stderr.write(line.ljust(72))
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.shown = False


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def _run(args, stop: threading.Event, bar: ProgressBar) -> list:
    import torch

    from core import default_device, inference_dtype, load_model, pipelines

    device = args.device or default_device()
    dtype = getattr(torch, DTYPES[args.dtype] if args.dtype else inference_dtype(device))
    m = load_model(args.model, config=args.config, device=device, dtype=dtype)
    common = dict(steps=args.steps, sampler=args.sampler, seed=args.seed, karras=args.karras,
                  eta=args.eta, vae_tile=args.vae_tile, callback=bar, should_stop=stop,
                  guidance_scale=args.guidance_scale)
    many = dict(n=args.n, batch_size=args.batch_size) if args.command != "upscale" else {}
    if args.command in ("txt2img", "img2img", "inpaint", "outpaint"):
        many.update(lora_dir=args.lora_dir, embeddings_dir=args.embeddings_dir)   # the prompt's folders
    if args.command == "txt2img" and args.refiner:
        many.update(refiner=load_model(args.refiner, device=device, dtype=dtype), refiner_switch_at=args.refiner_switch_at)
    if args.command == "txt2img" and args.hires:
        return _hires(args, m, device, dtype, many, common)
    if args.command == "txt2img":
        return pipelines.txt2img(m, args.prompt, args.negative_prompt, width=args.width, height=args.height,
                                 native_tiling=args.native_tiling, **many, **common)
    if args.command == "img2img":
        return pipelines.img2img(m, args.image, args.prompt, args.strength, args.negative_prompt,
                                 width=args.width, height=args.height, resize_mode=args.resize_mode,
                                 **many, **common)
    if args.command == "inpaint":
        return pipelines.inpaint(m, args.image, args.mask, args.prompt, args.negative_prompt,
                                 strength=args.strength, mask_blur=args.mask_blur, inpaint_area=args.inpaint_area,
                                 padding=args.padding, masked_content=args.masked_content,
                                 width=args.width, height=args.height, color_match=args.color_match,
                                 soft_inpainting=args.soft_inpainting, **many, **common)
    if args.command == "outpaint":
        return pipelines.outpaint(m, args.image, args.prompt, args.negative_prompt, left=args.left, right=args.right,
                                  top=args.top, bottom=args.bottom, fill=args.fill, overlap=args.overlap,
                                  strength=args.strength, inpaint_area=args.inpaint_area, padding=args.padding,
                                  soft_inpainting=args.soft_inpainting, **many, **common)
    if args.command == "upscale":
        return [pipelines.upscale(m, args.image, tile=args.tile, overlap=args.overlap, prompt=args.prompt,
                                  negative_prompt=args.negative_prompt, noise_level=args.noise_level,
                                  back_projection=args.back_projection, scale=args.scale,
                                  tile_batch=args.tile_batch, **common)]
    size = {} if args.command == "semantic" else dict(width=args.width, height=args.height,   # semantic: the map's
                                                      native_tiling=args.native_tiling)
    if args.command == "class":
        return pipelines.sample_class(m, args.class_label, **size, **many, **common)
    if args.command == "layout":
        return pipelines.sample_layout(m, _read_layout(args.layout), background=args.background, **size, **many,
                                       **common)
    if args.command == "semantic":
        if args.guidance_scale not in (None, 1.0):
            raise ValueError("a semantic-synthesis model has no unconditional branch to guide against; "
                             "leave --cfg-scale out.")
        del common["guidance_scale"]
        return pipelines.sample_semantic(m, args.segmentation, **many, **common)
    return pipelines.sample_unconditional(m, **size, **many, **common)


def _hires(args, m, device, dtype, many: dict, common: dict) -> list:
    from core import load_model, pipelines

    sr_model, upscaler = None, args.hires_upscaler
    if Path(upscaler).suffix in (".safetensors", ".ckpt"):
        sr_model, upscaler = load_model(upscaler, device=device, dtype=dtype), "model"
    hires = pipelines.HiresSettings(args.hires_scale, args.hires_width, args.hires_height, upscaler,
                                    args.hires_steps, args.hires_strength, args.hires_prompt,
                                    args.hires_negative_prompt, args.hires_sampler)
    del common["eta"]
    return pipelines.txt2img_hires(m, args.prompt, hires, args.negative_prompt, width=args.width,
                                   height=args.height, sr_model=sr_model, native_tiling=args.native_tiling,
                                   **many, **common)


def _read_layout(path: str) -> str:
    """The layout file's text (the text format or JSON; core.pipelines.parse_layout reads both)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--layout {path}: not a text file; write one object a line, e.g. "
                         "'circle red 0.02 0.02 0.32 0.32', or a JSON list of [class_id, x0, y0, x1, y1].") from None


def _save(images, outdir: Path) -> None:
    from core.pipelines import save_png
    from core.pipelines.outputs import reserve_output

    for image in images:
        path = reserve_output(outdir, image.info.get("ldm_studio", {}).get("seed"))
        save_png(image, path)
        print(path, flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    outdir = Path(args.outdir) if args.outdir else Path("outputs") / datetime.date.today().isoformat()
    previous_format = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        sys.stderr.write("\nstopping after this step (Ctrl-C again to abort)\n")

    previous = signal.signal(signal.SIGINT, on_sigint)
    bar = ProgressBar(not args.quiet)
    from core.checkpoints import CheckpointError
    from core.samplers import SamplingInterrupted
    try:
        images = _run(args, stop, bar)
    except SamplingInterrupted as interrupted:
        bar.close()
        _save(interrupted.images + interrupted.partial, outdir)
        print(f"interrupted: {interrupted}", file=sys.stderr)
        return 130
    except (ValueError, CheckpointError, MemoryError, OSError) as err:
        bar.close()
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)
        warnings.formatwarning = previous_format
    bar.close()
    _save(images, outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
