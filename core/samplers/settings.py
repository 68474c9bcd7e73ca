"""The sampling settings, checked once: a frozen `SamplingSettings` is valid by construction, so
everything after it (pipelines, samplers, the UI's estimate, evaluation, benches) trusts it.

Also the one place that reads a sampler name (our key or AUTOMATIC1111's display name, "DPM++ 2M
Karras" included) and checks a number.
"""
import math
import warnings
from dataclasses import dataclass

from core.samplers.registry import (SAMPLER_ALIASES, SAMPLER_DISPLAY_NAMES, SAMPLERS, SCHEDULE_DISPLAY_NAMES,
                                    SIGMA_SAMPLERS)


def finite_number(name: str, value, minimum: float | None = None, maximum: float | None = None) -> float:
    """value as a float, or a ValueError naming `name` and the valid range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}.")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bounds}; got {value!r}.")
    return float(value)


def whole_number(name: str, value, minimum: int = 0, maximum: int | None = None) -> int:
    """value as an int (bools refused), or a ValueError naming `name` and the valid range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or \
            (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be a whole number {bounds}; got {value!r}.")
    return value


def check_strength(strength) -> float:
    """img2img / inpainting strength: the fraction of the schedule re-run, in (0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1] (the fraction of the schedule re-run); "
                         f"got {strength!r}.")
    return float(strength)


def sampler_name(name) -> tuple[str, bool | None]:
    """Our sampler key for a key, a display name ("DPM++ 2M", "Euler a", "DPM++ 2M Karras") or an
    old k-diffusion alias ("k_lms"); the second value is True when the name itself asks for Karras
    sigmas."""
    if not isinstance(name, str):
        raise ValueError(f"sampler must be a name such as 'ddim'; got {name!r}.")
    key = name.strip()
    if key in SAMPLERS:
        return key, None
    if key in SAMPLER_ALIASES:
        return SAMPLER_ALIASES[key], None
    by_display = {v.lower(): k for k, v in SAMPLER_DISPLAY_NAMES.items()}
    lowered = key.lower()
    if lowered in by_display:
        return by_display[lowered], None
    if lowered.endswith(" karras") and lowered[:-7] in by_display:
        return by_display[lowered[:-7]], True
    valid = ", ".join(f"{k} ({SAMPLER_DISPLAY_NAMES[k]})" for k in SAMPLERS)
    raise ValueError(f"unknown sampler {name!r}; choose one of: {valid}.")


def scheduler_name(name) -> str:
    """Our schedule-type key for a key or A1111's name ("Karras", "SGM Uniform"); None = automatic."""
    if name is None:
        return "automatic"
    by_display = {v.lower(): k for k, v in SCHEDULE_DISPLAY_NAMES.items()}
    key = name.strip().lower() if isinstance(name, str) else name
    if key in SCHEDULE_DISPLAY_NAMES:
        return key
    if key in by_display:
        return by_display[key]
    valid = ", ".join(f"{k} ({v})" for k, v in SCHEDULE_DISPLAY_NAMES.items())
    raise ValueError(f"unknown schedule type {name!r}; choose one of: {valid}.")


@dataclass(frozen=True)
class SamplingSettings:
    sampler: str = "ddim"             # a key of SAMPLERS
    karras: bool = False              # Karras sigmas: the same as scheduler="karras" (kept for old callers)
    steps: int = 50
    guidance_scale: float = 1.0       # classifier-free guidance; 1 = one network pass
    eta: float = 0.0                  # DDIM's eta; 0 for every other sampler
    ancestral_eta: float = 1.0        # the noise scale of Euler a, DPM2 a, DPM++ 2S a / SDE / 2M SDE
    scheduler: str = "automatic"      # schedule type, a key of SCHEDULE_DISPLAY_NAMES (sigma samplers)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            sampler_name(self.sampler)                          # raises with the valid names
        whole_number("steps", self.steps, minimum=1)
        finite_number("guidance_scale", self.guidance_scale, minimum=0.0)
        finite_number("eta", self.eta, minimum=0.0)
        finite_number("ancestral_eta", self.ancestral_eta, minimum=0.0)
        if self.karras not in (True, False):
            raise ValueError(f"karras must be True or False; got {self.karras!r}.")
        if self.scheduler not in SCHEDULE_DISPLAY_NAMES:
            scheduler_name(self.scheduler)                      # raises with the valid names
        if self.karras and self.scheduler not in ("automatic", "karras"):
            raise ValueError(f"karras=True asks for the Karras schedule but scheduler is {self.scheduler!r}; "
                             "give one of them.")
        if self.karras or self.scheduler == "karras":           # the two spellings agree from here on
            object.__setattr__(self, "karras", True)
            object.__setattr__(self, "scheduler", "karras")
        if self.scheduler != "automatic" and self.sampler not in SIGMA_SAMPLERS:
            what = "Karras sigmas apply" if self.karras else \
                f"schedule types ({SCHEDULE_DISPLAY_NAMES[self.scheduler]}) apply"
            raise ValueError(f"{what} to the samplers {', '.join(SIGMA_SAMPLERS)}, not to {self.sampler!r}.")
        if self.eta and self.sampler != "ddim":
            raise ValueError(f"eta applies to the 'ddim' sampler only (got sampler {self.sampler!r}); "
                             "leave eta at 0 (the ancestral samplers' noise scale is ancestral_eta).")

    @classmethod
    def resolve(cls, defaults, sampler=None, karras=None, steps=None, guidance_scale=None,
                eta=None, scheduler=None) -> "SamplingSettings":
        """The caller's values (None: not given) over `defaults` (anything with sampler, karras,
        steps, guidance_scale and eta), checked. A sampler other than the default's starts without
        Karras sigmas unless its name or the schedule type asks for them ("DPM++ 2M Karras").
        A sampler name we do not have (from a PNG or an API call) falls back to the default's
        sampler with a warning naming it; a schedule type is ignored (with a warning) by the
        timestep samplers (DDIM, PLMS, DDPM), which walk the model's own steps."""
        explicit = sampler is not None
        try:
            name, named_karras = sampler_name(sampler if explicit else defaults.sampler)
        except ValueError:
            if not explicit or not isinstance(sampler, str):
                raise
            name, named_karras = sampler_name(defaults.sampler)
            warnings.warn(f"sampler {sampler!r} is not available here; using the model's default, "
                          f"{SAMPLER_DISPLAY_NAMES[name]}", stacklevel=3)
            explicit = False
        scheduler = scheduler_name(scheduler) if scheduler is not None else None
        if karras is None and scheduler is None:
            karras = named_karras if named_karras is not None else (
                defaults.karras if not explicit or name == defaults.sampler else False)
        if karras and name not in SIGMA_SAMPLERS:
            warnings.warn(f"Karras sigmas do not apply to {SAMPLER_DISPLAY_NAMES[name]}, which walks the "
                          "model's own timesteps; ignored", stacklevel=3)
        karras = bool(karras) and name in SIGMA_SAMPLERS
        if scheduler is not None and scheduler != "automatic" and name not in SIGMA_SAMPLERS:
            warnings.warn(f"the schedule type {SCHEDULE_DISPLAY_NAMES[scheduler]} does not apply to "
                          f"{SAMPLER_DISPLAY_NAMES[name]}, which walks the model's own timesteps", stacklevel=3)
            scheduler = None
        if scheduler is not None and scheduler != "karras" and karras:
            karras = False                                      # an explicit schedule type wins
        if eta is None:
            eta = defaults.eta if name == "ddim" else 0.0
        return cls(name, karras, defaults.steps if steps is None else steps,
                   defaults.guidance_scale if guidance_scale is None else guidance_scale, eta,
                   scheduler=scheduler or "automatic")

    @property
    def display_name(self) -> str:
        """AUTOMATIC1111's name, e.g. "DPM++ 2M Karras"."""
        return SAMPLER_DISPLAY_NAMES[self.sampler] + (" Karras" if self.karras else "")

    @property
    def schedule_display_name(self) -> str:
        """A1111's "Schedule type", e.g. "Karras"."""
        return SCHEDULE_DISPLAY_NAMES[self.scheduler]
