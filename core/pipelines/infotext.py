"""AUTOMATIC1111's "parameters" infotext (shared/FORMATS.md): write, parse, attach, save as PNG.

The text: the prompt (may span lines), then `Negative prompt: ...` (left out when empty), then
one last line of `Key: value` pairs joined by ", " in the reference's key order. A value holding
`,`, `:` or a newline is written as a JSON string. Readers treat the last line as parameters only
when the FORMATS.md pattern finds at least 3 pairs in it.

Our images carry the same parameters twice: `image.info["parameters"]` (that text) and
`image.info["ldm_studio"]` (a plain dict with the keys of PARAMETERS below, plus reports).
`read_infotext` returns the same dict shape from any PNG, AUTOMATIC1111's included; keys it does
not know keep their label and string value.
"""

import json
import os
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from core.checkpoints import model_hash
from core.pipelines.images import read_image_file
from core.samplers import SAMPLER_DISPLAY_NAMES, SCHEDULE_DISPLAY_NAMES, SIGMA_SAMPLERS, scheduler_name

# (infotext label, our key, type), in the order the reference writes them; task extras after RNG.
PARAMETERS = [
    ("Steps", "steps", int),
    ("Sampler", "sampler", str),
    ("Schedule type", "scheduler", str),           # read back also as "karras" (True for Karras)
    ("CFG scale", "guidance_scale", float),
    ("Seed", "seed", int),
    ("Size", "size", str),                         # width x height
    ("Model hash", "model_hash", str),
    ("Model", "model", str),
    ("VAE hash", "vae_hash", str),
    ("VAE", "vae", str),
    ("Variation seed", "variation_seed", int),
    ("Variation seed strength", "variation_seed_strength", float),
    ("Denoising strength", "strength", float),
    ("Hires upscale", "hr_scale", float),
    ("Hires resize", "hr_resize", str),                # width x height, when a target size was given
    ("Hires steps", "hr_steps", int),
    ("Hires upscaler", "hr_upscaler", str),
    ("Hires sampler", "hr_sampler", str),
    ("Hires prompt", "hr_prompt", str),
    ("Hires negative prompt", "hr_negative_prompt", str),
    ("Refiner", "refiner", str),                   # "name [hash]" of the second-stage model
    ("Refiner switch at", "refiner_switch_at", float),
    ("Clip skip", "clip_skip", int),
    ("Lora hashes", "lora_hashes", str),           # "name: shorthash, ..." (A1111's extra-network record)
    ("TI hashes", "ti_hashes", str),               # textual-inversion embeddings used, likewise
    ("RNG", "rng", str),
    ("Eta DDIM", "eta", float),                  # DDIM's eta (the reference's label)
    ("Class", "class_label", int),                 # "N (name)" when the class has a name (class_name)
    ("Tiled diffusion", "tiled_diffusion", str),   # above the native size: "64 px tiles overlapping 32 px" / "off"
    ("Layout", "layout", "json"),
    ("Background", "background", str),             # a layout model's background token ("gray"), when it has them
    ("Segmentation hash", "segmentation_hash", str),   # semantic synthesis: sha256 of the one-hot map, 10 digits
    ("Segmentation classes", "segmentation_classes", "json"),
    ("Mask blur", "mask_blur", int),
    ("Inpaint area", "inpaint_area", str),
    ("Masked area padding", "padding", int),
    ("Masked content", "masked_content", str),
    ("Soft inpainting enabled", "soft_inpainting", bool),      # A1111's label (PR 14208)
    ("Outpaint", "outpaint", str),                 # the sides grown, in px: "left 64 right 64"
    ("Outpaint fill", "outpaint_fill", str),
    ("Outpaint overlap", "outpaint_overlap", int),
    ("Tile size", "tile", int),
    ("Tile overlap", "overlap", int),
    ("Upscale", "upscale", float),
    ("Upscaler", "upscaler", str),
    ("Noise level", "noise_level", int),
    ("Back-projection", "back_projection", int),
    ("Interrupted", "interrupted", str),           # a partial image: "interrupted at step k of n"
    ("Task", "task", str),
    ("Version", "version", str),
]
_BY_LABEL = {label: (key, kind) for label, key, kind in PARAMETERS}
_SAMPLER_FROM_DISPLAY = {v: k for k, v in SAMPLER_DISPLAY_NAMES.items()}

# FORMATS.md: the last line's pairs, and `Size: WxH`.
PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
CLASS_PATTERN = re.compile(r"^(\d+)(?: \((.+)\))?$")               # `Class: 3 (circle orange)`

_HASHES: dict[tuple, str] = {}


def cached_model_hash(path) -> str | None:
    """`Model hash` of a weights file (first 10 hex digits of its SHA-256), computed once per
    (path, size, modification time); None when there is no file."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = model_hash(path)
    return _HASHES[key]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def _quote(text: str) -> str:
    """A value holding ',', ':' or a newline becomes a JSON string (as the reference's quote())."""
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _format_value(key: str, kind, value, params: dict) -> str | None:
    if key in ("sampler", "hr_sampler"):
        return SAMPLER_DISPLAY_NAMES.get(value, str(value))
    if key == "scheduler":
        if params.get("sampler") not in SIGMA_SAMPLERS or value == "automatic":
            return None                                      # DDIM/PLMS/DDPM have no schedule type
        return SCHEDULE_DISPLAY_NAMES.get(value, str(value))
    if key == "eta" and params.get("sampler") != "ddim":
        return None
    if key == "class_label" and params.get("class_name"):
        return f"{int(value)} ({params['class_name']})"
    if kind == "json":
        return json.dumps(value, separators=(",", ":"))
    if kind is float:
        value = float(value)
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def infotext(params: dict) -> str:
    """The "parameters" text for a parameters dict (keys of PARAMETERS, plus prompt,
    negative_prompt, width, height). None values are left out."""
    lines = [params.get("prompt") or ""]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    pairs = []
    for label, key, kind in PARAMETERS:
        if key == "size":
            if params.get("width") is not None and params.get("height") is not None:
                pairs.append(f"Size: {params['width']}x{params['height']}")
            continue
        value = params.get(key)
        if key == "scheduler" and value is None and params.get("karras"):
            value = "karras"                                 # a dict from before schedule types
        if value is None:
            continue
        text = _format_value(key, kind, value, params)
        if text is not None:
            pairs.append(f"{label}: {_quote(text)}")
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def attach_parameters(image: Image.Image, params: dict, reports: dict | None = None) -> Image.Image:
    """Put the parameters on the image: info["parameters"] (infotext) and info["ldm_studio"]
    (the dict, with `reports` such as inpainting's border colour difference merged in)."""
    image.info["parameters"] = infotext(params)
    image.info["ldm_studio"] = {**{k: v for k, v in params.items() if v is not None}, **(reports or {})}
    return image


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _typed(label: str, value: str, out: dict) -> None:
    """Store one pair under our key with its type; unknown or malformed ones keep label and text."""
    if label == "Size":
        m = SIZE_PATTERN.match(value.strip())
        if m:
            out["width"], out["height"] = int(m.group(1)), int(m.group(2))
            return
    elif label == "Sampler":
        name = value.strip()
        if name.endswith(" Karras") and name[:-7] in _SAMPLER_FROM_DISPLAY:     # older A1111 style
            out["sampler"], out["karras"], out["scheduler"] = _SAMPLER_FROM_DISPLAY[name[:-7]], True, "karras"
        else:
            out["sampler"] = _SAMPLER_FROM_DISPLAY.get(name, name)
        return
    elif label == "Class":
        m = CLASS_PATTERN.match(value.strip())
        if m:
            out["class_label"] = int(m.group(1))
            if m.group(2):
                out["class_name"] = m.group(2)
            return
    elif label == "Hires sampler":
        out["hr_sampler"] = _SAMPLER_FROM_DISPLAY.get(value.strip(), value.strip())
        return
    elif label == "Schedule type":
        try:
            out["scheduler"] = scheduler_name(value)
            out["karras"] = out["scheduler"] == "karras"
            return
        except ValueError:
            pass
    elif label in _BY_LABEL:
        key, kind = _BY_LABEL[label]
        try:
            if kind is bool:
                if value.strip() not in ("True", "False"):
                    raise ValueError(value)
                out[key] = value.strip() == "True"
            elif kind is int:
                out[key] = int(value)
            elif kind is float:
                out[key] = float(value)
            elif kind == "json":
                out[key] = json.loads(value)
            else:
                out[key] = value
            return
        except ValueError:
            pass
    out[label] = value


def parse_infotext(text: str) -> dict:
    """Parse a "parameters" text (ours or AUTOMATIC1111's) -> {"prompt", "negative_prompt", ...}."""
    if not isinstance(text, str):
        raise ValueError(f"infotext must be a string; got {type(text).__name__}.")
    *lines, last = text.strip().split("\n")
    if len(PARAM_PATTERN.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    for label, value in PARAM_PATTERN.findall(last):
        _typed(label.strip(), _unquote(value.strip()), out)
    return out


def read_infotext(image_or_path) -> dict:
    """The parameters of a PNG (path or PIL image) written by us or AUTOMATIC1111.

    Raises ValueError when the image carries no "parameters" text.
    """
    if isinstance(image_or_path, (str, Path)):
        text = read_image_file(image_or_path).info.get("parameters")
    elif isinstance(image_or_path, Image.Image):
        text = image_or_path.info.get("parameters")
    else:
        raise ValueError(f"expected a path or a PIL image; got {type(image_or_path).__name__}.")
    if not text:
        raise ValueError("this image carries no generation parameters (no PNG 'parameters' text).")
    return parse_infotext(str(text))


def save_png(image: Image.Image, path, parameters: str | None = None) -> Path:
    """Write `image` as PNG with its "parameters" text chunk (tEXt; iTXt when not Latin-1).

    `parameters` defaults to image.info["parameters"]. Written to a temporary name and renamed,
    so a crash never leaves half a file.
    """
    path = Path(path)
    text = parameters if parameters is not None else image.info.get("parameters")
    info = PngInfo()
    if text:
        info.add_text("parameters", str(text))               # PIL switches to iTXt when not Latin-1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
