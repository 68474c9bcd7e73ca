"""The app's settings: what `python app.py --flags` asked for, as one frozen dataclass.

Flags follow AUTOMATIC1111's web UI where it has one (`--listen`, `--port`, `--share`,
`--auth user:pass`); `parse_args` turns argv into `AppSettings`, and everything else in `ui/`
reads that object, never `sys.argv` or environment variables.
"""
import argparse
import dataclasses
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from core import default_device, inference_dtype

DEFAULT_PORT = 7860
DEFAULT_MAX_SIDE = 4096            # pixels: the largest image side accepted or produced
DEFAULT_MAX_UPLOAD_MB = 50         # per uploaded file (images, zips of training images)


@dataclass(frozen=True)
class AppSettings:
    weights_dir: Path = Path("weights")          # the models the pickers list
    outputs_dir: Path = Path("outputs")          # outputs/<date>/ images, outputs/jobs/<id>/ job records
    runs_dir: Path = Path("runs")                # training runs (core.train.runs)
    data_root: Path = Path("data")               # training datasets: folders and unpacked zips live here
    device: str = "cpu"                          # "cpu", "cuda", "cuda:1", ...
    dtype: str = "float32"                       # "float32", "float16", "bfloat16"
    max_side: int = DEFAULT_MAX_SIDE             # largest width/height of an upload or an output
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB   # per file, enforced by Gradio before the handler runs
    host: str = "127.0.0.1"                      # "0.0.0.0" with --listen
    port: int = DEFAULT_PORT
    share: bool = False
    auth: tuple[tuple[str, str], ...] = field(default=())  # (user, password) pairs; empty = no login
    max_training_runs: int = 1                   # training runs at a time (each takes the CPU/GPU from generation)
    api: bool = False                            # --api: AUTOMATIC1111's /sdapi/v1 routes (ui/api_a1111.py)
    api_auth: tuple[tuple[str, str], ...] = field(default=())  # --api-auth; empty: the API takes --auth's logins
    medvram: bool = False                        # --medvram: text encoders and VAE on the CPU between uses (CUDA)

    @property
    def api_logins(self) -> tuple[tuple[str, str], ...]:
        """Who may call /sdapi/v1: --api-auth's pairs, else --auth's (the share login included)."""
        return self.api_auth or self.auth

    @property
    def max_pixels(self) -> int:
        """Decompression-bomb limit: an upload may not hold more pixels than a max_side square."""
        return self.max_side * self.max_side


def parse_auth(value: str) -> tuple[tuple[str, str], ...]:
    """`user:pass`, several separated by commas, or the path of a file holding them (one per line
    or comma-separated, as AUTOMATIC1111's --gradio-auth-path)."""
    path = Path(value)
    text = path.read_text(encoding="utf-8") if path.is_file() else value
    pairs = []
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--auth expects user:password (or a file of them); got {item!r}")
        pairs.append((user, password))
    if not pairs:
        raise ValueError("--auth was given but holds no user:password pair")
    return tuple(pairs)


def with_share_credentials(settings: AppSettings) -> tuple[AppSettings, str | None]:
    """`--share` without `--auth`: a share link is public, so it never runs open. Credentials are
    generated (user "ldm", a random password) and returned with the message that prints them."""
    if not settings.share or settings.auth:
        return settings, None
    user, password = "ldm", secrets.token_urlsafe(12)
    message = (f"--share without --auth: the public link asks for these generated credentials\n"
               f"    user: {user}\n    password: {password}\n  (give --auth user:pass to choose them)")
    return dataclasses.replace(settings, auth=((user, password),)), message


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python app.py", description="LDM Studio web app (Gradio).")
    p.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 (the local network), not only 127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--share", action="store_true",
                   help="create a public gradio.live link; without --auth, credentials are generated and printed")
    p.add_argument("--auth", metavar="USER:PASS|FILE", help="require a login: user:pass[,user2:pass2] or a file")
    p.add_argument("--weights", type=Path, default=Path("weights"), help="folder of models (default weights/)")
    p.add_argument("--outputs", type=Path, default=Path("outputs"), help="where images are saved (default outputs/)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="training runs folder (default runs/)")
    p.add_argument("--data-root", type=Path, default=Path("data"),
                   help="training data must lie under this folder (default data/)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="weights precision (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIDE,
                   help=f"largest image side accepted or produced, in pixels (default {DEFAULT_MAX_SIDE})")
    p.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest uploaded file in MB (default {DEFAULT_MAX_UPLOAD_MB})")
    p.add_argument("--max-training-runs", type=int, default=1, metavar="N",
                   help="training runs that may run at once (default 1: each one slows generation down)")
    p.add_argument("--api", action="store_true",
                   help="also serve AUTOMATIC1111's HTTP API (/sdapi/v1/...) on the same port and job queue")
    p.add_argument("--api-auth", metavar="USER:PASS|FILE",
                   help="the API's login (HTTP Basic), as --auth; default: --auth's")
    p.add_argument("--medvram", action="store_true",
                   help="keep the text encoders and the VAE in CPU memory, moved to the GPU only while they run "
                        "(as AUTOMATIC1111's --medvram: SDXL on an 8-12 GB card); no effect on the CPU")
    return p


def parse_args(argv: list[str] | None = None) -> AppSettings:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        auth = parse_auth(args.auth) if args.auth else ()
        api_auth = parse_auth(args.api_auth) if args.api_auth else ()
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if args.max_size < 64:
        parser.error("--max-size must be at least 64 pixels")
    if args.max_training_runs < 1:
        parser.error("--max-training-runs must be at least 1")
    device = args.device or default_device()
    dtype = args.dtype or inference_dtype(device)
    return AppSettings(weights_dir=args.weights, outputs_dir=args.outputs, runs_dir=args.runs,
                       data_root=args.data_root, device=device, dtype=dtype, max_side=args.max_size,
                       max_upload_mb=args.max_upload_mb, host="0.0.0.0" if args.listen else "127.0.0.1",
                       port=args.port, share=args.share, auth=auth, max_training_runs=args.max_training_runs,
                       api=args.api, api_auth=api_auth, medvram=args.medvram)
