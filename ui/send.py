""""Send to ...": a picture's parameters go into another tab's fields with it, as in AUTOMATIC1111.

The parameters are read from the picture itself (the PNG's "parameters" text, ours or A1111's,
parsed by core.pipelines.parse_infotext), so the Text to image gallery and the PNG info tab send
the same way. What cannot be taken is left as it is and named in a warning: a sampler we do not
have ("DPM++ SDE Karras"), a model that is not in weights/, a size this model cannot make, keys we
do not use (Clip skip, ENSD ...).
"""
from functools import partial
from pathlib import Path

import gradio as gr
from PIL import Image

from core import pipelines
from core.pipelines.refiner import DEFAULT_SWITCH_AT
from core.samplers import sampler_name
from core.samplers import SIGMA_SAMPLERS
from ui.errors import user_errors
from ui.studio import Studio

# Fields a tab may receive, in the order of its `receives` dict; keys that describe the picture but
# are not settings (hash, version ...) are neither taken nor reported.
FIELDS = ("prompt", "negative_prompt", "model", "sampler", "karras", "steps", "guidance_scale", "seed",
          "width", "height", "strength", "refiner", "refiner_switch_at")
TAB_ONLY = ("strength", "refiner", "refiner_switch_at")     # named as not used where the tab lacks them
DESCRIPTIVE = {"model_hash", "version", "rng", "task", "eta"}
MAX_SIZE_OVER_NATIVE = 4        # a size over 4x the model's native side is "beyond the model"
LABELS = {"strength": "Denoising strength", "guidance_scale": "CFG scale"}


def picture_parameters(path: str | None) -> dict:
    """The parsed parameters of the picture at `path` ({} when it has none or cannot be read)."""
    try:
        with Image.open(path) as im:
            text = im.info.get("parameters")
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
    return pipelines.parse_infotext(str(text)) if text else {}


def _sampler(params: dict, notes: list[str]) -> dict:
    """sampler / karras values from the picture's sampler name (ours or an A1111 display name)."""
    if "sampler" not in params:
        return {}
    try:
        key, named_karras = sampler_name(params["sampler"])
    except ValueError:
        notes.append(f"sampler '{params['sampler']}' is not available here (the current one is kept)")
        return {}
    karras = params.get("karras", named_karras) if key in SIGMA_SAMPLERS else False
    return {"sampler": key, "karras": bool(karras)}


def _model(studio: Studio, tab: str, params: dict, notes: list[str]):
    """The tab's picker value for the picture's model, or None (with a note) when it is not here."""
    wanted = params.get("model")
    if not wanted:
        return None
    for entry in studio.models.for_tab(tab):
        if wanted in (entry.label, Path(entry.name).stem, entry.name):
            return entry
    notes.append(f"model '{wanted}' is not in weights/ for this tab (the current one is kept)")
    return None


def _size(entry, params: dict, notes: list[str], max_side: int) -> dict:
    """width / height when this model can make them."""
    if "width" not in params or "height" not in params:
        return {}
    width, height = params["width"], params["height"]
    native = max(entry.defaults.width, entry.defaults.height) if entry else 0
    limit = min(max_side, native * MAX_SIZE_OVER_NATIVE) if native else max_side
    if width % 8 or height % 8 or max(width, height) > limit:
        notes.append(f"size {width}x{height} is beyond this model (at most {limit} px a side, multiples of 8; "
                     "the current size is kept)")
        return {}
    return {"width": width, "height": height}


def received(studio: Studio, tab: str, params: dict, names: tuple[str, ...]) -> tuple[list, list[str]]:
    """Values for the fields `names` of `tab` from parsed parameters (gr.skip() where nothing is
    taken) and notes saying what was not taken and why."""
    notes: list[str] = []
    entry = _model(studio, tab, params, notes) if "model" in names else None
    values = {k: params[k] for k in ("prompt", "negative_prompt", "steps", "guidance_scale", "seed", "strength")
              if k in params}
    values.update(_sampler(params, notes))
    if entry is not None:
        values["model"] = entry.name
    if "width" in names:
        values.update(_size(entry or _first(studio, tab), params, notes, studio.settings.max_side))
    if "refiner" in names and "refiner" in params:
        values.update(_refiner(studio, params, notes))
    unused = [k for k in params if k not in FIELDS and k not in DESCRIPTIVE]
    unused += [k for k in TAB_ONLY if k in params and k not in names]
    if unused:
        notes.append("not used here: " + ", ".join(f"{_label(k)} {params[k]}" for k in unused))
    return [values[n] if n in values else gr.skip() for n in names], notes


def _refiner(studio: Studio, params: dict, notes: list[str]) -> dict:
    """The Refiner group's values for the picture's `Refiner: name [hash]`, when that model is here."""
    wanted = str(params["refiner"]).rsplit(" [", 1)[0]
    for entry in studio.models.for_tab("txt2img"):
        if wanted in (entry.label, Path(entry.name).stem, entry.name):
            return {"refiner": entry.name, "refiner_switch_at": params.get("refiner_switch_at", DEFAULT_SWITCH_AT)}
    notes.append(f"refiner '{wanted}' is not in weights/ (no refiner is set)")
    return {}


def _label(key: str) -> str:
    """A parameter's name as the infotext writes it ("clip_skip" -> "Clip skip")."""
    return LABELS.get(key) or (key[:1].upper() + key[1:]).replace("_", " ")


def _first(studio: Studio, tab: str):
    entries = studio.models.for_tab(tab)
    return entries[0] if entries else None


def send_parameters(studio: Studio, tab: str, names: tuple[str, ...], params: dict | None) -> list:
    """Handler: parsed parameters -> the tab's field values; what is not taken is said in a warning."""
    values, notes = received(studio, tab, params or {}, names)
    if notes:
        gr.Warning("Not taken: " + "; ".join(notes) + ".")
    return values


def gallery_image(images, index) -> str | None:
    """The gallery image at `index` (the one clicked last), as a file path."""
    if not images:
        raise ValueError("Generate an image first.")
    item = images[min(int(index or 0), len(images) - 1)]
    if isinstance(item, (list, tuple)):
        item = item[0]
    if isinstance(item, dict):
        item = item.get("image", {}).get("path") if isinstance(item.get("image"), dict) else item.get("path")
    return str(item)


@user_errors
def send(studio: Studio, tab: str, names: tuple[str, ...], kind: str, *picture) -> list:
    """Handler: a picture (a path, or a gallery's (images, index)) -> [the picture as `kind` wants
    it: "file", "editor" (an ImageEditor value) or "" (none)] + the tab's field values."""
    path = gallery_image(*picture) if len(picture) == 2 else picture[0]
    if not path:
        raise ValueError("Upload an image first.")
    values = send_parameters(studio, tab, names, picture_parameters(path))
    image = {"background": path, "layers": [], "composite": path} if kind == "editor" else path
    return ([image] if kind else []) + values


def wire_sends(studio: Studio, tabs: gr.Tabs, t2i, i2i, inp, up, info) -> None:
    """The "Send to" buttons of Text to image's gallery and of PNG info. Each shows its tab first:
    the inpaint editor takes an image only once its tab is showing (its canvas is drawn lazily)."""
    gallery = [t2i.results.gallery, t2i.results.selected]
    routes = [(t2i.to_img2img, gallery, "img2img", "file", i2i.image, i2i.receives),
              (t2i.to_inpaint, gallery, "inpaint", "editor", inp.editor, inp.receives),
              (t2i.to_upscale, gallery, "upscale", "file", up.image, {}),
              (info.send, [info.image], "txt2img", "", None, t2i.receives),
              (info.to_img2img, [info.image], "img2img", "file", i2i.image, i2i.receives),
              (info.to_inpaint, [info.image], "inpaint", "editor", inp.editor, inp.receives)]
    for button, inputs, tab, kind, picture, receives in routes:
        outputs = ([picture] if picture is not None else []) + list(receives.values())
        button.click(partial(gr.Tabs, selected=tab), outputs=tabs, api_visibility="private", queue=False).then(
            partial(send, studio, tab, tuple(receives), kind), inputs=inputs, outputs=outputs,
            api_visibility="private", concurrency_limit=None)          # queued: its warning reaches the page
