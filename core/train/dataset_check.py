"""Look at a user's image folder before a run starts, unpack an uploaded zip safely, and keep user
paths inside the data folder.

    check_dataset("data/my_images", size=64)   # -> {count, unreadable, captions, size_histogram, ...}
    extract_zip("upload.zip", "data/my_images")
    resolve_data_path("data", "my_images")     # -> Path, or ValueError when it leaves data/

The check reads the same layout the image-folder dataset trains on: images anywhere under the root
(hidden files and folders skipped), a caption either in `name.txt` beside `name.png` or in a
`captions.jsonl` at the root ({"file": "name.png", "caption": "..."} per line). It decodes every
image fully (PIL's `load()`), because a truncated file often opens fine and fails only on decoding.

The zip extractor is written against the known archive attacks: path traversal ("zip slip":
`../x`, absolute paths, drive letters), symlink members, too many members, too many bytes, and
decompression bombs (a high declared ratio, or a stream that inflates past its declared size).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTIONS_FILE = "captions.jsonl"
# Keys a captions.jsonl line may use for the image (HF imagefolder's metadata.jsonl uses file_name)
# and for its text.
FILE_KEYS = ("file", "file_name", "image", "path")
TEXT_KEYS = ("caption", "text")
# Histogram buckets of the shorter side in pixels: [0, 32), [32, 64), ..., [2048, inf).
BUCKET_EDGES = (0, 32, 64, 128, 256, 512, 1024, 2048)
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
MAX_LISTED = 200                      # unreadable files / missing captions listed by name
TOO_SMALL_WARN_SHARE = 0.05           # warn when more than this share is below the training size

# extract_zip's limits.
MAX_FILES = 10_000
MAX_BYTES = 2 * 1024 ** 3             # 2 GiB uncompressed in all
MAX_RATIO = 200                       # uncompressed / compressed per member; images rarely pass 10,
                                      # a zip bomb of zeros reaches ~1000
RATIO_MIN_BYTES = 1024 ** 2           # small members may compress well (text), ratio not checked
CHUNK = 1024 ** 2


class UnsafeArchiveError(ValueError):
    """The zip file breaks one of extract_zip's rules; nothing was extracted."""


# --------------------------------------------------------------------------------------------
# Dataset check
# --------------------------------------------------------------------------------------------

def _image_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                files.append(Path(dirpath) / name)
    return files


def _jsonl_captions(root: Path) -> tuple[dict[str, str], list[str]]:
    """{relative posix path: caption} from root/captions.jsonl, and the problems met reading it."""
    path = root / CAPTIONS_FILE
    captions, problems = {}, []
    if not path.is_file():
        return captions, problems
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            file = next(record[k] for k in FILE_KEYS if k in record)
            text = next(record[k] for k in TEXT_KEYS if k in record)
        except (json.JSONDecodeError, StopIteration, TypeError):
            problems.append(f"{CAPTIONS_FILE} line {number} is not a JSON object with one of "
                            f"{FILE_KEYS} and one of {TEXT_KEYS}")
            continue
        captions[PurePosixPath(str(file)).as_posix()] = str(text)
    return captions, problems


def _bucket(side: int) -> str:
    edges = BUCKET_EDGES
    for lo, hi in zip(edges, edges[1:]):
        if side < hi:
            return f"{lo}-{hi - 1}"
    return f"{edges[-1]}+"


def check_dataset(root: str | Path, size: int) -> dict:
    """Check the image folder `root` for training at `size` x `size` pixels.

    Returns plain values:
      root, files (image files found), count (readable images),
      unreadable: [{"path", "error"}] (at most MAX_LISTED, `unreadable_count` has them all),
      captions: {"with_caption", "coverage" (0..1 of readable images), "from_txt", "from_jsonl",
                 "empty", "missing" (first names without one)},
      size_histogram: {bucket of the shorter side: count}, smallest / largest: {"path", "width",
      "height"} by pixel count, too_small (shorter side < size), modes: {PIL mode: count},
      grayscale_share, alpha_share, warnings: [sentences for the user].
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; give the folder that holds your images")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    files = _image_files(root)
    jsonl, warnings = _jsonl_captions(root)
    unreadable, modes, histogram = [], {}, {}
    smallest = largest = None
    too_small = count = 0
    captions = {"with_caption": 0, "from_txt": 0, "from_jsonl": 0, "empty": 0, "missing": []}
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            with Image.open(path) as im:
                im.load()                                   # decode fully: truncation shows here
                width, height, mode = im.width, im.height, im.mode
                if mode == "P" and "transparency" in im.info:
                    mode = "PA"
        except Exception as err:                            # PIL raises many types for bad files
            unreadable.append({"path": rel, "error": f"{type(err).__name__}: {err}"})
            continue
        count += 1
        modes[mode] = modes.get(mode, 0) + 1
        bucket = _bucket(min(width, height))
        histogram[bucket] = histogram.get(bucket, 0) + 1
        too_small += min(width, height) < size
        record = {"path": rel, "width": width, "height": height}
        if smallest is None or width * height < smallest["width"] * smallest["height"]:
            smallest = record
        if largest is None or width * height > largest["width"] * largest["height"]:
            largest = record
        # Caption: name.txt beside the image first, then captions.jsonl.
        txt = path.with_suffix(".txt")
        text = None
        if txt.is_file():
            text = txt.read_text(encoding="utf-8", errors="replace").strip()
            captions["from_txt"] += 1
        elif rel in jsonl:
            text = jsonl[rel].strip()
            captions["from_jsonl"] += 1
        if text:
            captions["with_caption"] += 1
        elif text is not None:
            captions["empty"] += 1
        elif len(captions["missing"]) < MAX_LISTED:
            captions["missing"].append(rel)
    captions["coverage"] = captions["with_caption"] / count if count else 0.0
    grayscale = sum(n for m, n in modes.items() if m in GRAYSCALE_MODES)
    alpha = sum(n for m, n in modes.items() if m in ALPHA_MODES)
    report = {
        "root": str(root), "size": size, "files": len(files), "count": count,
        "unreadable": unreadable[:MAX_LISTED], "unreadable_count": len(unreadable),
        "captions": captions,
        "size_histogram": {b: histogram[b] for b in map(_bucket, BUCKET_EDGES) if b in histogram},
        "smallest": smallest, "largest": largest, "too_small": too_small, "modes": modes,
        "grayscale_share": grayscale / count if count else 0.0,
        "alpha_share": alpha / count if count else 0.0,
    }
    report["warnings"] = warnings + _warnings(report)
    return report


def _warnings(r: dict) -> list[str]:
    out = []
    if r["files"] == 0:
        out.append(f"no images found (looked for {', '.join(IMAGE_SUFFIXES)} files)")
    if r["unreadable_count"]:
        out.append(f"{r['unreadable_count']} file(s) cannot be read and will be skipped during training")
    if r["count"] and r["too_small"] / r["count"] > TOO_SMALL_WARN_SHARE:
        out.append(f"{r['too_small']} of {r['count']} images are smaller than {r['size']} px on their "
                   f"shorter side and will be upscaled (blurry); use larger images or a smaller size")
    if r["count"] and 0 < r["captions"]["coverage"] < 1:
        missing = r["count"] - r["captions"]["with_caption"]
        out.append(f"{missing} of {r['count']} images have no caption; they train as the empty "
                   f"caption (unconditional)")
    if r["captions"]["empty"]:
        out.append(f"{r['captions']['empty']} caption(s) are empty")
    if r["grayscale_share"]:
        out.append(f"{r['grayscale_share']:.0%} of the images are grayscale; they are converted to RGB")
    if r["alpha_share"]:
        out.append(f"{r['alpha_share']:.0%} of the images have transparency; it is dropped when "
                   f"converting to RGB")
    return out


# --------------------------------------------------------------------------------------------
# Paths inside the data folder
# --------------------------------------------------------------------------------------------

def resolve_data_path(root: str | Path, user_path: str | Path, must_exist: bool = True) -> Path:
    """The absolute path of `user_path` (relative to `root`, or absolute) if it lies inside `root`
    once symlinks and `..` are resolved; a ValueError otherwise."""
    root = Path(root).resolve()
    text = str(user_path)
    if "\x00" in text:
        raise ValueError("the path contains a NUL character")
    path = (root / Path(text).expanduser()).resolve()     # an absolute user_path replaces root
    if not path.is_relative_to(root):
        raise ValueError(f"{user_path!r} is outside the data folder {root}; put your data under it "
                         f"and give a path relative to it")
    if must_exist and not path.exists():
        raise ValueError(f"{user_path!r} does not exist in the data folder {root}")
    return path


# --------------------------------------------------------------------------------------------
# Safe zip extraction
# --------------------------------------------------------------------------------------------

def _member_path(name: str) -> PurePosixPath:
    """The member's relative path, or UnsafeArchiveError for an absolute or escaping name."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"member {name!r} has a NUL character in its name")
    posix = name.replace("\\", "/")                          # Windows zips use backslashes
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise UnsafeArchiveError(f"member {name!r} has an absolute path")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"member {name!r} points outside the folder ('..')")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    # Unix mode bits live in the high 16 bits of external_attr (create_system 3 = Unix).
    return stat.S_ISLNK(info.external_attr >> 16)


def extract_zip(zip_path: str | Path, dest: str | Path, max_files: int = MAX_FILES,
                max_bytes: int = MAX_BYTES, max_ratio: float = MAX_RATIO) -> dict:
    """Extract `zip_path` into the new (or empty) folder `dest`, all or nothing.

    Every member is checked before anything is written: no absolute paths, no `..`, no symlinks, no
    encrypted members, at most `max_files` files and `max_bytes` declared bytes, and no member over
    1 MiB that declares more than `max_ratio` times its compressed size. While writing, a member
    that inflates past its declared size stops the extraction (a lying header). The files go to a
    temporary folder beside `dest` that is renamed at the end, so a refused or broken archive leaves
    nothing behind. `__MACOSX/` folders are skipped. Returns {"dest", "files", "bytes"}.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest} exists and is not an empty folder; extract into a new folder")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UnsafeArchiveError(f"{zip_path.name} is not a readable zip file: {err}") from err
    with archive:
        members = _checked_members(archive, max_files, max_bytes, max_ratio)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        try:
            total = 0
            for info, rel in members:
                target = tmp.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    total += _copy_member(archive, info, target, max_bytes - total)
                except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                    raise UnsafeArchiveError(f"member {info.filename!r} is corrupt: {err}") from err
            if dest.exists():
                dest.rmdir()                                 # empty, checked above
            tmp.replace(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {"dest": str(dest), "files": len(members), "bytes": total}


def _checked_members(archive: zipfile.ZipFile, max_files: int, max_bytes: int, max_ratio: float):
    members, declared, seen = [], 0, set()
    for info in archive.infolist():
        rel = _member_path(info.filename)
        if _is_symlink(info):
            raise UnsafeArchiveError(f"member {info.filename!r} is a symbolic link; links are refused")
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"member {info.filename!r} is encrypted; upload an unencrypted zip")
        if info.is_dir() or rel.parts[:1] == ("__MACOSX",) or str(rel) == ".":
            continue
        if rel in seen:
            raise UnsafeArchiveError(f"member {info.filename!r} appears twice")
        seen.add(rel)
        members.append((info, rel))
        if len(members) > max_files:
            raise UnsafeArchiveError(f"the zip holds more than {max_files} files; split it up")
        declared += info.file_size
        if declared > max_bytes:
            raise UnsafeArchiveError(f"the zip unpacks to more than {max_bytes / 1024 ** 3:.2f} GiB")
        if info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            raise UnsafeArchiveError(
                f"member {info.filename!r} inflates {info.file_size / max(info.compress_size, 1):.0f}x "
                f"(more than {max_ratio}x): refused as a likely zip bomb")
    return members


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Stream one member to `target`, never writing more than its declared size or the budget."""
    limit = min(info.file_size, budget)
    written = 0
    with archive.open(info) as src, open(target, "xb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise UnsafeArchiveError(f"member {info.filename!r} inflates past its declared size "
                                         f"({info.file_size} bytes): refused as a likely zip bomb")
            out.write(chunk)
    return written
