""""Send to ...": a picture's parameters go into another tab's fields with it, as in AUTOMATIC1111.

The parameters are read from the picture itself (the PNG's "parameters" text, ours or A1111's,
parsed by core.pipelines.parse_infotext), so the Text to image gallery and the PNG info tab send
the same way. What cannot be taken is left as it is and named in a warning: a sampler we do not
have ("DPM++ SDE Karras"), a model that is not in weights/, a size this model cannot make, keys we
do not use (ENSD ...). A schedule type we lack becomes Automatic, and a clip skip beyond the model's
text encoder 1, each with a warning; a picture that names neither sets Automatic and 1 (what made it).
"""
from functools import partial
from pathlib import Path

import gradio as gr
from PIL import Image

from core import pipelines
from core.pipelines.layout_text import ANY_BACKGROUND, format_layout, layout_vocabulary
from core.pipelines.refiner import DEFAULT_SWITCH_AT
from core.samplers import SCHEDULE_DISPLAY_NAMES, SIGMA_SAMPLERS, sampler_name
from ui.controls import AUTOMATIC, MAX_CLIP_SKIP
from ui.errors import user_errors
from ui.studio import Studio

# Fields a tab may receive, in the order of its `receives` dict; keys that describe the picture but
# are not settings (hash, version ...) are neither taken nor reported.
FIELDS = ("prompt", "negative_prompt", "model", "sampler", "karras", "steps", "guidance_scale", "seed",
          "width", "height", "strength", "class_label", "native_tiling", "scheduler", "clip_skip", "layout",
          "background", "refiner", "refiner_switch_at")
UNKNOWN_SCHEDULE = "Schedule type"      # parse_infotext keeps a schedule type it does not know under its label
DESCRIPTIVE = {"model_hash", "version", "rng", "task", "eta", "class_name", "tiled_diffusion"}
MAX_SIZE_OVER_NATIVE = 4        # a size over 4x the model's native side is "beyond the model"
LABELS = {"strength": "Denoising strength", "guidance_scale": "CFG scale", "class_label": "Class",
          "scheduler": "Schedule type"}


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


def _schedule(params: dict, notes: list[str]) -> dict:
    """The schedule type's dropdown value (A1111's name): the picture's, else Automatic."""
    if UNKNOWN_SCHEDULE in params:
        notes.append(f"schedule type '{params[UNKNOWN_SCHEDULE]}' is not available here (Automatic is set)")
    return {"scheduler": SCHEDULE_DISPLAY_NAMES.get(params.get("scheduler"), AUTOMATIC)}


def _clip_skip(entry, params: dict, notes: list[str]) -> dict:
    """The clip skip (1 when the picture names none) when this model's text encoder takes it."""
    wanted = params.get("clip_skip") or 1
    limit = min(entry.caps.max_clip_skip, MAX_CLIP_SKIP) if entry is not None else MAX_CLIP_SKIP
    if wanted > limit:
        notes.append(f"clip skip {wanted} is beyond this model's text encoder (at most {limit}; 1 is set)")
        wanted = 1
    return {"clip_skip": wanted}


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


def _layout(entry, params: dict, notes: list[str]) -> dict:
    """The picture's layout (class ids) as the Layout tab's text, in its model's labels, and its
    background ("any" for a picture without one, or one this model does not draw)."""
    if "layout" not in params or entry is None:
        return {}
    vocabulary = layout_vocabulary(entry.model_config)
    try:
        out = {"layout": format_layout(params["layout"], vocabulary)}
    except ValueError as err:
        notes.append(f"layout ({err})")
        return {}
    wanted = params.get("background")
    if wanted and wanted not in vocabulary.backgrounds:
        notes.append(f"background '{wanted}' (this model does not take it; '{ANY_BACKGROUND}' is set)")
    out["background"] = wanted if wanted in vocabulary.backgrounds else ANY_BACKGROUND
    return out


def received(studio: Studio, tab: str, params: dict, names: tuple[str, ...]) -> tuple[list, list[str]]:
    """Values for the fields `names` of `tab` from parsed parameters (gr.skip() where nothing is
    taken) and notes saying what was not taken and why."""
    notes: list[str] = []
    entry = _model(studio, tab, params, notes) if "model" in names else None
    values = {k: params[k] for k in ("prompt", "negative_prompt", "steps", "guidance_scale", "seed", "strength",
                                     "class_label") if k in params}
    # recorded only when tiled ("64 px tiles overlapping 32 px"); "off" in files from before it was the default
    values["native_tiling"] = params.get("tiled_diffusion", "off") != "off"
    values.update(_sampler(params, notes))
    if entry is not None:
        values["model"] = entry.name
    if "width" in names:
        values.update(_size(entry or _first(studio, tab), params, notes, studio.settings.max_side))
    if "scheduler" in names:
        values.update(_schedule(params, notes))
    if "clip_skip" in names:
        values.update(_clip_skip(entry or _first(studio, tab), params, notes))
    if "layout" in names:
        values.update(_layout(entry or _first(studio, tab), params, notes))
    if "refiner" in names and "refiner" in params:
        values.update(_refiner(studio, params, notes))
    unused = [k for k in params if k not in FIELDS and k not in DESCRIPTIVE and
              not (k == UNKNOWN_SCHEDULE and "scheduler" in names)]
    unused += [k for k in ("strength", "class_label", "clip_skip", "scheduler", "layout", "background", "refiner",
                           "refiner_switch_at") if k in params
               and k not in names and not (k == "scheduler" and params[k] == "karras" and "karras" in names)]
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


def wire_sends(studio: Studio, tabs: gr.Tabs, t2i, i2i, inp, up, info, cls, lay) -> None:
    """The "Send to" buttons of the Text to image and Class / unconditional galleries and of PNG info.
    Each shows its tab first: the inpaint editor takes an image only once its tab is showing (its
    canvas is drawn lazily)."""
    routes = []
    for source in (t2i, cls):
        gallery = [source.results.gallery, source.results.selected]
        routes += [(source.to_img2img, gallery, "img2img", "file", i2i.image, i2i.receives),
                   (source.to_inpaint, gallery, "inpaint", "editor", inp.editor, inp.receives),
                   (source.to_upscale, gallery, "upscale", "file", up.image, {})]
    routes += [(info.send, [info.image], "txt2img", "", None, t2i.receives),
               (info.to_img2img, [info.image], "img2img", "file", i2i.image, i2i.receives),
               (info.to_inpaint, [info.image], "inpaint", "editor", inp.editor, inp.receives),
               (info.to_classgen, [info.image], "classgen", "", None, cls.receives),
               (info.to_layout, [info.image], "layout", "", None, lay.receives)]
    for button, inputs, tab, kind, picture, receives in routes:
        outputs = ([picture] if picture is not None else []) + list(receives.values())
        button.click(partial(gr.Tabs, selected=tab), outputs=tabs, api_visibility="private", queue=False).then(
            partial(send, studio, tab, tuple(receives), kind), inputs=inputs, outputs=outputs,
            api_visibility="private", concurrency_limit=None)          # queued: its warning reaches the page
