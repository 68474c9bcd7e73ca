"""AUTOMATIC1111's /sdapi/v1 request bodies, as pydantic models with its field names and defaults.

The specification is A1111's `modules/api/models.py`, whose txt2img / img2img models are generated
from the `__init__` parameters of `StableDiffusionProcessingTxt2Img` / `...Img2Img`
(`modules/processing.py`). We declare the fields we act on; every other field a client sends
(`alwayson_scripts`, `subseed`, `restore_faces`, SillyTavern's `url` and `auth` ...) is accepted
(extra="allow") and named in a warning by `ignored_fields`, never refused.

Where A1111's default is a number tied to SD 1.x (width 512, steps 50, cfg_scale 7) we default to
None: "the model's own default" (its file's ldm_studio_defaults), which is what a client that
leaves the field out wants from a 64 px shapes-world model as much as from SD.
"""
import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("ldm_studio.api")

# Fields A1111 defines that change nothing here when sent with these values (clients send them all
# the time): not worth a warning. Any other unknown field is named in one.
HARMLESS = {"send_images": True, "save_images": None, "do_not_save_samples": None, "do_not_save_grid": None,
            "override_settings_restore_afterwards": None, "include_init_images": None, "restore_faces": False,
            "tiling": False, "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": -1, "seed_resize_from_w": -1,
            "s_churn": None, "s_tmax": None, "s_tmin": None, "s_noise": None, "s_min_uncond": None,
            "script_args": None, "styles": None, "firstphase_width": 0, "firstphase_height": 0, "eta": None}
EMPTY = (None, "", [], {})


class Request(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def ignored_fields(self) -> list[str]:
        """The fields sent that we do not act on (HARMLESS ones at their usual values left out)."""
        names = []
        for name, value in (self.model_extra or {}).items():
            usual = HARMLESS.get(name, "absent")
            if value in EMPTY or name in HARMLESS and (usual is None or value == usual):
                continue
            names.append(name)
        return names


class Generation(Request):
    """What txt2img and img2img share (A1111's StableDiffusionProcessing)."""
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"                  # the older name; sampler_name wins when both are sent
    scheduler: str | None = None                  # A1111's schedule type: "Automatic", "Karras", ...
    batch_size: int = 1
    n_iter: int = 1
    steps: int | None = None                      # None: the model's default (A1111: 50)
    cfg_scale: float | None = None                # None: the model's default (A1111: 7.0)
    width: int | None = None                      # None: the model's default (A1111: 512)
    height: int | None = None
    denoising_strength: float | None = None
    override_settings: dict = Field(default_factory=dict)   # sd_model_checkpoint and CLIP_stop_at_last_layers act
    alwayson_scripts: dict = Field(default_factory=dict)    # accepted; we run no scripts (a warning names them)
    script_name: str | None = None

    def sampler(self) -> str | None:
        """sampler_name, else sampler_index when the client sent it."""
        if self.sampler_name:
            return self.sampler_name
        return self.sampler_index if "sampler_index" in self.model_fields_set else None


class Txt2Img(Generation):
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    refiner_checkpoint: str | None = None         # a checkpoint title / name; None or "None": no refiner
    refiner_switch_at: float | None = None        # None: 0.8 (A1111's default)


class Img2Img(Generation):
    init_images: list[str] | None = None          # base64 (a data: URL prefix is allowed); the first is used
    resize_mode: int = 0                          # 0 just resize, 1 crop and resize, 2 resize and fill
    mask: str | None = None                       # base64; white = repaint
    mask_blur: int | None = None                  # None: mask_blur_x (4)
    mask_blur_x: int = 4
    inpainting_fill: int = 0                      # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = True                 # True: "Only masked"
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0               # 1: black = repaint


class ExtrasSingleImage(Request):
    image: str = ""
    resize_mode: Literal[0, 1] = 0                # 0: by upscaling_resize, 1: to upscaling_resize_w x _h
    upscaling_resize: float = Field(default=2, gt=0)
    upscaling_resize_w: int = Field(default=512, ge=1)
    upscaling_resize_h: int = Field(default=512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1)
    show_extras_results: bool = True


class PNGInfo(Request):
    image: str


# A1111's inpainting_fill numbers -> core.pipelines.inpaint's masked_content.
INPAINTING_FILL = {0: "fill", 1: "original", 2: "latent_noise", 3: "latent_nothing"}


# A1111's alwayson script of soft inpainting (PR 14208): {"Soft inpainting": {"args": [enabled, ...]}}.
SOFT_INPAINTING = "soft inpainting"


def soft_inpainting_requested(scripts: dict) -> bool:
    """Whether an img2img body's alwayson_scripts turn soft inpainting on (its first argument, as
    A1111's script reads it; no arguments: its default, off). Its six tuning arguments (mask blend
    power and scale, detail preservation, the composite's mask influence, difference threshold and
    contrast) have no counterpart here: our soft inpainting weighs the blend by the mask alone."""
    for name, value in scripts.items():
        if name.lower() != SOFT_INPAINTING:
            continue
        args = value.get("args", []) if isinstance(value, dict) else None
        if not isinstance(args, list):
            raise ValueError('alwayson_scripts["Soft inpainting"] must be {"args": [true]} (or [false]).')
        if len(args) > 1:
            log.warning("soft inpainting: only its first argument (enabled) is used; the other %d are not",
                        len(args) - 1)
        return bool(args[0]) if args else False
    return False
