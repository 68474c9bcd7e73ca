"""AUTOMATIC1111's HTTP API (/sdapi/v1/...) on the app's own server, behind `--api`.

    python app.py --api                       # http://127.0.0.1:7860/sdapi/v1/txt2img, ...
    python app.py --api --listen --api-auth me:pw

Clients written for A1111 (Open WebUI, SillyTavern, the `webuiapi` package, bots, plugins) work
unchanged. The routes share the app's Studio: its model cache and its one job runner, so API and
browser requests wait in one line for the device, and results are saved in outputs/ as the tabs'
are. The login is HTTP Basic: `--api-auth`'s pairs, else `--auth`'s; without one, 401.

Bodies follow A1111's `modules/api/models.py` (ui/api_a1111_models.py); responses its
`TextToImageResponse` & co.: base64 PNGs carrying their infotext as the `parameters` chunk, `info`
as A1111's JSON string, `parameters` echoing the request. A bad body is a 422 naming the field, an
image beyond --max-upload-mb or --max-size a 413; fields we do not act on are named in a warning
in the server log.
"""
import base64
import binascii
import functools
import io
import json
import logging
import secrets
import time
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import Image, UnidentifiedImageError

from core import pipelines
from core.lora import network_folders
from core.checkpoints import CheckpointError
from core.pipelines.hires import IMAGE_UPSCALERS, LATENT_UPSCALERS
from core.pipelines.infotext import PARAMETERS, attach_parameters, cached_model_hash
from core.pipelines.upscale import scaled_size
from core.samplers import SAMPLER_DISPLAY_NAMES, SCHEDULE_DISPLAY_NAMES
from ui.api_a1111_models import (INPAINTING_FILL, SOFT_INPAINTING, ExtrasSingleImage, Generation, Img2Img, PNGInfo,
                                 Txt2Img, soft_inpainting_requested)
from ui.controls import check_batch, optional_float, optional_int, schedule_key, seed_value
from ui.follow import pipeline_progress
from ui.hires import MODEL_PREFIX, hires_request
from ui.refiner import NO_REFINER, refiner_entry
from ui.images import mask_from_upload, open_image, run_and_save
from ui.img2img import resize_mode_value
from ui.jobs import JobState
from ui.studio import Studio

log = logging.getLogger("ldm_studio.api")
CHECKPOINT_TABS = ("txt2img", "img2img", "inpaint")      # what A1111 calls a checkpoint; SR models are upscalers
RESAMPLERS = {"None": Image.Resampling.LANCZOS, **IMAGE_UPSCALERS}   # A1111's "None" resizes by Lanczos
UNEXPECTED = "The job failed unexpectedly"               # ui/jobs.py: not the request's fault -> 500


def answers(fn):
    """A handler whose ValueError (bad input, in words) becomes a 422 with that message."""
    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, CheckpointError, FileNotFoundError) as err:
            raise HTTPException(422, str(err)) from None
    return handler


# ---- images in and out ----------------------------------------------------------------------------
def decode_image(data: str, studio: Studio, field: str) -> Image.Image:
    """A base64 image (a data: URL prefix allowed) as PIL, not yet converted; 413 beyond
    --max-upload-mb or --max-size, 422 when it is not an image."""
    data = data.split(",", 1)[1] if data.startswith("data:") else data
    limit = studio.settings.max_upload_mb * 2**20
    if len(data) * 3 // 4 > limit:
        raise HTTPException(413, f"{field}: the image is over {studio.settings.max_upload_mb} MB (--max-upload-mb)")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        width, height = image.size
    except Image.DecompressionBombError:
        raise HTTPException(413, f"{field}: the image declares more pixels than --max-size allows") from None
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError):
        raise HTTPException(422, f"{field}: not a base64-encoded image (PNG, JPEG, WebP ...)") from None
    if max(width, height) > studio.settings.max_side:
        raise HTTPException(413, f"{field}: the image is {width}x{height} px; at most {studio.settings.max_side} "
                                 "per side (--max-size)")
    return image


def encode_file(path: str) -> str:
    """A saved PNG (its parameters chunk inside) as base64, as A1111 sends images."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def encode_image(image: Image.Image) -> str:
    """A step preview (no parameters) as a base64 PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def info_json(state: JobState, req: Generation, batch_size: int, title: str | None) -> str:
    """A1111's `info` (its Processed.js()): the first image's parameters and the per-image lists."""
    fields = [pipelines.parse_infotext(text) for text in state.infotexts]
    first = fields[0] if fields else {}
    seeds = [f.get("seed") for f in fields]
    record = {
        "prompt": req.prompt, "all_prompts": [f.get("prompt", req.prompt) for f in fields],
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [f.get("negative_prompt", req.negative_prompt) for f in fields],
        "seed": first.get("seed"), "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(fields),
        "subseed_strength": 0, "width": first.get("width"), "height": first.get("height"),
        "sampler_name": SAMPLER_DISPLAY_NAMES.get(first.get("sampler"), first.get("sampler")),
        "cfg_scale": first.get("guidance_scale"), "steps": first.get("steps"), "batch_size": batch_size,
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": first.get("model"),
        "sd_model_hash": first.get("model_hash"), "sd_model_checkpoint": title, "sd_vae_name": None,
        "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": first.get("strength"), "extra_generation_params": {}, "index_of_first_image": 0,
        "infotexts": list(state.infotexts), "styles": [], "job_timestamp": state.id[:15].replace("-", ""),
        "clip_skip": first.get("clip_skip") or 1, "is_using_inpainting_conditioning": False,
        "version": first.get("version"), "warnings": list(state.warnings)}
    return json.dumps(record)


def a1111_parameters(text: str) -> dict:
    """PNG info's `parameters` as A1111 names them ("Prompt", "Steps", "Size-1", ...)."""
    fields = pipelines.parse_infotext(text)
    labels = {key: label for label, key, _ in PARAMETERS}
    out = {"Prompt": fields.pop("prompt", ""), "Negative prompt": fields.pop("negative_prompt", "")}
    if "width" in fields:
        out["Size-1"], out["Size-2"] = fields.pop("width"), fields.pop("height", None)
    fields.pop("karras", None)
    for key, value in fields.items():
        if key == "sampler":
            value = SAMPLER_DISPLAY_NAMES.get(value, value)
        elif key == "scheduler":
            value = SCHEDULE_DISPLAY_NAMES.get(value, value)
        out[labels.get(key, key)] = value
    return out


class A1111Api:
    """The routes' state: the Studio, the API's current checkpoint (A1111 has one model loaded; our
    tabs each pick theirs) and the options clients set."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.checkpoint: str | None = None        # a ModelEntry.name; None: the first text-to-image model
        self.options: dict = {}

    # ---- models -----------------------------------------------------------------------------------
    def checkpoints(self) -> list:
        return [e for e in self.studio.models.scan()[0] if any(e.caps.serves(t) for t in CHECKPOINT_TABS)]

    def upscaler_models(self) -> list:
        return self.studio.models.for_tab("upscale")

    @staticmethod
    def title(entry) -> str:
        """A1111's `name [hash]`: the file's path under weights/ and its SHA-256's first 10 digits."""
        return f"{entry.name} [{cached_model_hash(entry.path)}]"

    def find_checkpoint(self, name: str, field: str = "sd_model_checkpoint"):
        for e in self.checkpoints():
            stem = str(Path(e.name).with_suffix(""))
            if name in (self.title(e), e.name, stem, stem.replace("/", "_"), e.label, cached_model_hash(e.path)):
                return e
        titles = ", ".join(self.title(e) for e in self.checkpoints()) or f"none in {self.studio.models.weights_dir}/"
        raise ValueError(f"{field}: no model {name!r}; choose one of: {titles}")

    def entry(self, tab: str, req: Generation):
        """The model for `tab`: override_settings' checkpoint, else the API's current one (when it
        cannot do `tab`, the tab's first model, with a warning)."""
        override = req.override_settings.get("sd_model_checkpoint")
        if override:
            return self.studio.models.entry(tab, self.find_checkpoint(override).name)
        try:
            return self.studio.models.entry(tab, self.checkpoint)
        except ValueError:
            if self.checkpoint is None:
                raise
            fallback = self.studio.models.entry(tab, None)
            log.warning("the API's model %s cannot do %s; using %s", self.checkpoint, tab, fallback.name)
            return fallback

    def current(self):
        entries = self.checkpoints()
        chosen = [e for e in entries if e.name == self.checkpoint]
        return (chosen or [e for e in entries if e.caps.serves("txt2img")] or entries or [None])[0]

    # ---- request fields ---------------------------------------------------------------------------
    def warn_ignored(self, req, route: str) -> None:
        names = req.ignored_fields()
        if isinstance(req, Generation):
            names += [f"alwayson_scripts.{k}" for k in req.alwayson_scripts
                      if not (k.lower() == SOFT_INPAINTING and getattr(req, "mask", None))]
            names += ["script_name"] if req.script_name else []
            names += [f"override_settings.{k}" for k in req.override_settings
                      if k not in ("sd_model_checkpoint", "CLIP_stop_at_last_layers")]
        if names:
            log.warning("/sdapi/v1/%s: ignored what this server does not do: %s", route, ", ".join(names))

    def sampling(self, req: Generation) -> dict:
        """The pipelines' sampling keywords. The sampler goes by name to the pipelines, which read
        A1111's names ("DPM++ 2M Karras") and fall back to the model's default, with a warning, for
        one we lack."""
        side = self.studio.settings.max_side
        clip_skip = req.override_settings.get("CLIP_stop_at_last_layers", self.options.get("CLIP_stop_at_last_layers"))
        return dict(sampler=req.sampler(), steps=optional_int(req.steps, "steps", maximum=1000),
                    guidance_scale=optional_float(req.cfg_scale, "cfg_scale"), seed=seed_value(req.seed),
                    scheduler=schedule_key(req.scheduler),          # "Automatic": the model's default, as the tabs
                    width=optional_int(req.width, "width (--max-size)", maximum=side),
                    height=optional_int(req.height, "height (--max-size)", maximum=side),
                    clip_skip=int(clip_skip) if clip_skip else None)

    def hr_upscaler(self, name: str | None) -> str:
        if not name or name in LATENT_UPSCALERS or name in IMAGE_UPSCALERS:
            return name or "Latent"
        if name == "None":
            return "Lanczos"
        for e in self.upscaler_models():
            if name in (e.label, e.name, Path(e.name).stem):
                return MODEL_PREFIX + e.name
        log.warning("hr_upscaler %r is not here; using Latent (GET /sdapi/v1/upscalers lists ours)", name)
        return "Latent"

    # ---- running ----------------------------------------------------------------------------------
    def run(self, kind: str, work, steps: int | None) -> JobState:
        """Submit to the app's job runner (one line with the browser's jobs) and wait for the end."""
        job = self.studio.jobs.submit(kind, work, extra={"steps": steps, "api": True})
        state = job
        for state in self.studio.jobs.follow(job.id):
            pass
        if state.status == "failed":
            raise HTTPException(500 if (state.error or "").startswith(UNEXPECTED) else 422, state.error)
        return state

    def respond(self, state: JobState, req: Generation, batch_size: int, entry) -> dict:
        return {"images": [encode_file(p) for p in state.images],
                "parameters": req.model_dump(), "info": info_json(state, req, batch_size, self.title(entry))}

    # ---- generation routes ------------------------------------------------------------------------
    @answers
    def txt2img(self, req: Txt2Img) -> dict:
        self.warn_ignored(req, "txt2img")
        entry = self.entry("txt2img", req)
        n, batch_size = check_batch(req.n_iter, req.batch_size)
        options = self.sampling(req)
        base = (options["width"] or entry.defaults.width, options["height"] or entry.defaults.height)
        strength = 0.7 if req.denoising_strength is None else req.denoising_strength
        hires, sr_entry = hires_request(self.studio, base, req.enable_hr, self.hr_upscaler(req.hr_upscaler),
                                        req.hr_scale, req.hr_second_pass_steps, strength, req.hr_resize_x,
                                        req.hr_resize_y, req.hr_prompt, req.hr_negative_prompt, req.hr_sampler_name)
        refiner = None
        if req.refiner_checkpoint and req.refiner_checkpoint != NO_REFINER:
            refiner = refiner_entry(self.studio, self.find_checkpoint(req.refiner_checkpoint, "refiner_checkpoint").name)

        def work(job):
            m = self.studio.models.load(entry)
            common = dict(n=n, batch_size=batch_size, **options, callback=pipeline_progress(job),
                          should_stop=job.should_stop, **network_folders(self.studio.settings.weights_dir))
            if refiner is not None:
                common.update(refiner=self.studio.models.load(refiner), refiner_switch_at=req.refiner_switch_at)
            if hires is None:
                run = lambda: pipelines.txt2img(m, req.prompt, req.negative_prompt, **common)  # noqa: E731
            else:
                sr = self.studio.models.load(sr_entry) if sr_entry else None
                run = lambda: pipelines.txt2img_hires(m, req.prompt, hires, req.negative_prompt,  # noqa: E731
                                                      sr_model=sr, **common)
            return run_and_save(run, self.studio.settings.outputs_dir, job.folder)

        return self.respond(self.run("txt2img", work, options["steps"]), req, batch_size, entry)

    @answers
    def img2img(self, req: Img2Img) -> dict:
        self.warn_ignored(req, "img2img")
        if not req.init_images:
            raise ValueError("init_images: give at least one base64-encoded image.")
        init = open_image(decode_image(req.init_images[0], self.studio, "init_images"), self.studio.settings.max_side)
        tab = "inpaint" if req.mask else "img2img"
        entry = self.entry(tab, req)
        n, batch_size = check_batch(req.n_iter, req.batch_size)
        options = self.sampling(req)
        strength = 0.75 if req.denoising_strength is None else req.denoising_strength
        common = dict(negative_prompt=req.negative_prompt, strength=strength, n=n, batch_size=batch_size, **options,
                      **network_folders(self.studio.settings.weights_dir))
        if req.mask:
            common.update(self.inpainting(req, init.size))
            run_pipeline, images = pipelines.inpaint, (init, common.pop("mask"))
        else:
            common["resize_mode"] = resize_mode_value(req.resize_mode)
            run_pipeline, images = pipelines.img2img, (init,)

        def work(job):
            m = self.studio.models.load(entry)
            return run_and_save(lambda: run_pipeline(m, *images, req.prompt, **common,
                                                     callback=pipeline_progress(job), should_stop=job.should_stop),
                                self.studio.settings.outputs_dir, job.folder)

        return self.respond(self.run(tab, work, options["steps"]), req, batch_size, entry)

    def inpainting(self, req: Img2Img, size: tuple[int, int]) -> dict:
        """inpaint()'s keywords from A1111's mask fields (white = repaint unless inverted)."""
        raw = decode_image(req.mask, self.studio, "mask")
        raw = raw.convert("RGBA") if "A" in raw.getbands() or "transparency" in raw.info else raw.convert("L")
        soft = soft_inpainting_requested(req.alwayson_scripts)
        mask = mask_from_upload(raw, size, binary=not soft)
        if req.inpainting_mask_invert:
            mask = mask.point(lambda v: 255 - v)
        if mask.getextrema()[1] == 0:
            raise ValueError("mask: it is empty (white = repaint; inpainting_mask_invert=1: black).")
        if req.inpainting_fill not in INPAINTING_FILL:
            raise ValueError(f"inpainting_fill must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent "
                             f"nothing); got {req.inpainting_fill}.")
        return dict(mask=mask, mask_blur=req.mask_blur_x if req.mask_blur is None else req.mask_blur,
                    inpaint_area="only_masked" if req.inpaint_full_res else "whole",
                    padding=req.inpaint_full_res_padding, masked_content=INPAINTING_FILL[req.inpainting_fill],
                    soft_inpainting=soft)

    @answers
    def extra_single_image(self, req: ExtrasSingleImage) -> dict:
        """Upscale one image with `upscaler_1`: None / Lanczos / Nearest, or one of our
        super-resolution models (GET upscalers), by upscaling_resize or to a target size."""
        self.warn_ignored(req, "extra-single-image")
        low = open_image(decode_image(req.image, self.studio, "image"), self.studio.settings.max_side)
        if req.resize_mode == 0:
            target = scaled_size(low.width, low.height, req.upscaling_resize)
        else:
            target = (req.upscaling_resize_w, req.upscaling_resize_h)
        if max(target) > self.studio.settings.max_side:
            raise ValueError(f"the result would be {target[0]}x{target[1]} px; at most {self.studio.settings.max_side} "
                             "per side (--max-size).")
        models = {key: e for e in self.upscaler_models() for key in (e.label, e.name, Path(e.name).stem)}
        if req.upscaler_1 not in RESAMPLERS and req.upscaler_1 not in models:
            raise ValueError(f"upscaler_1: no upscaler {req.upscaler_1!r}; choose one of: "
                             f"{', '.join([*RESAMPLERS, *(e.label for e in self.upscaler_models())])}.")
        entry = models.get(req.upscaler_1)
        fit = "crop_and_resize" if req.resize_mode == 1 and req.upscaling_crop else "just_resize"

        def work(job):
            image = low
            if entry is not None:
                m = self.studio.models.load(entry)
                scale = min(max(target[0] / low.width, target[1] / low.height), entry.caps.factor)
                image = pipelines.upscale(m, low, scale=scale, callback=pipeline_progress(job),
                                          should_stop=job.should_stop) if scale > 1 else low
            params = dict(image.info.get("ldm_studio") or {}, width=target[0], height=target[1],
                          upscaler=req.upscaler_1, task="upscale")
            if image.size != target:
                resample = RESAMPLERS.get(req.upscaler_1, Image.Resampling.LANCZOS)
                image = pipelines.resize_image(image, *target, fit) if fit != "just_resize" else \
                    image.resize(target, resample)
            return run_and_save(lambda: [attach_parameters(image, params)], self.studio.settings.outputs_dir,
                                job.folder)

        state = self.run("upscale", work, None)
        return {"html_info": f"<p>{state.infotexts[0] if state.infotexts else ''}</p>",
                "image": encode_file(state.images[0]) if state.images and req.show_extras_results else None}

    @answers
    def png_info(self, req: PNGInfo) -> dict:
        image = decode_image(req.image, self.studio, "image")
        items = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, (str, int, float))}
        text = str(items.pop("parameters", ""))
        return {"info": text, "items": items, "parameters": a1111_parameters(text) if text else {}}

    # ---- progress and stopping ----------------------------------------------------------------------
    def progress(self, skip_current_image: bool = False) -> dict:
        state = self.studio.jobs.current()
        steps = (state.extra.get("steps") if state else None) or 0
        fraction = state.fraction if state else 0.0
        elapsed = max(0.0, time.time() - (state.started or state.created)) if state else 0.0
        preview = None
        if state is not None and state.preview is not None and not skip_current_image:
            preview = encode_image(state.preview)
        return {"progress": fraction, "eta_relative": elapsed / fraction - elapsed if fraction > 0 else 0.0,
                "state": {"skipped": False, "interrupted": False, "stopping_generation": False,
                          "job": state.id if state else "", "job_count": self.studio.jobs.waiting(),
                          "job_timestamp": state.id[:15].replace("-", "") if state else "0",
                          "job_no": 0, "sampling_step": round(fraction * steps), "sampling_steps": steps},
                "current_image": preview, "textinfo": state.message if state else None}

    def interrupt(self) -> dict:
        """Stop the running job after its step (what it finished is returned to its caller)."""
        state = self.studio.jobs.current()
        if state is not None:
            self.studio.jobs.interrupt(state.id)
        return {}

    # ---- options -------------------------------------------------------------------------------------
    def get_options(self) -> dict:
        entry = self.current()
        return {**self.options, "sd_model_checkpoint": self.title(entry) if entry else None,
                "sd_checkpoint_hash": cached_model_hash(entry.path) if entry else None,
                "sd_vae": "Automatic", "CLIP_stop_at_last_layers": self.options.get("CLIP_stop_at_last_layers", 1),
                "samples_format": "png", "outdir_samples": str(self.studio.settings.outputs_dir)}

    @answers
    def set_options(self, req: dict) -> bool:
        """Options clients send back (Open WebUI posts the whole dict): sd_model_checkpoint switches
        the API's model, CLIP_stop_at_last_layers is the default clip skip; the rest is kept."""
        if req.get("sd_model_checkpoint"):
            self.checkpoint = self.find_checkpoint(str(req["sd_model_checkpoint"])).name
        self.options.update({k: v for k, v in req.items() if k not in ("sd_model_checkpoint", "sd_checkpoint_hash")})
        return True


def auth_dependency(logins: tuple[tuple[str, str], ...]):
    """HTTP Basic against `logins`; None when the API is open."""
    if not logins:
        return None
    basic = HTTPBasic(auto_error=False)

    def check(credentials: HTTPBasicCredentials | None = Depends(basic)) -> None:
        if credentials is not None:
            for user, password in logins:
                if secrets.compare_digest(credentials.username.encode(), user.encode()) and \
                        secrets.compare_digest(credentials.password.encode(), password.encode()):
                    return
        raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})
    return check


def api_router(studio: Studio) -> APIRouter:
    """The /sdapi/v1 routes over `studio`, behind its API login."""
    from ui.api_a1111_lists import add_list_routes
    check = auth_dependency(studio.settings.api_logins)
    router = APIRouter(prefix="/sdapi/v1", dependencies=[Depends(check)] if check else [])
    api = A1111Api(studio)
    router.add_api_route("/txt2img", api.txt2img, methods=["POST"])
    router.add_api_route("/img2img", api.img2img, methods=["POST"])
    router.add_api_route("/extra-single-image", api.extra_single_image, methods=["POST"])
    router.add_api_route("/png-info", api.png_info, methods=["POST"])
    router.add_api_route("/progress", api.progress, methods=["GET"])
    router.add_api_route("/interrupt", api.interrupt, methods=["POST"])
    router.add_api_route("/skip", api.interrupt, methods=["POST"])     # no batch to skip into: a stop
    router.add_api_route("/options", api.get_options, methods=["GET"])
    router.add_api_route("/options", api.set_options, methods=["POST"])
    add_list_routes(router, api)
    return router


__all__ = ["api_router", "A1111Api"]
