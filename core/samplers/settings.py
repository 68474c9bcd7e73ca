"""The sampling settings, checked once: a frozen `SamplingSettings` is valid by construction, so
everything after it (pipelines, samplers, the UI's estimate, evaluation, benches) trusts it.

Also the one place that reads a sampler name (our key or AUTOMATIC1111's display name, "DPM++ 2M
Karras" included) and checks a number.
"""
import math
from dataclasses import dataclass

from core.samplers.registry import SAMPLER_DISPLAY_NAMES, SAMPLERS, SIGMA_SAMPLERS


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
    """Our sampler key for a key or a display name ("DPM++ 2M", "Euler a", "DPM++ 2M Karras");
    the second value is True when the name itself asks for Karras sigmas."""
    if not isinstance(name, str):
        raise ValueError(f"sampler must be a name such as 'ddim'; got {name!r}.")
    key = name.strip()
    if key in SAMPLERS:
        return key, None
    by_display = {v.lower(): k for k, v in SAMPLER_DISPLAY_NAMES.items()}
    lowered = key.lower()
    if lowered in by_display:
        return by_display[lowered], None
    if lowered.endswith(" karras") and lowered[:-7] in by_display:
        return by_display[lowered[:-7]], True
    valid = ", ".join(f"{k} ({SAMPLER_DISPLAY_NAMES[k]})" for k in SAMPLERS)
    raise ValueError(f"unknown sampler {name!r}; choose one of: {valid}.")


@dataclass(frozen=True)
class SamplingSettings:
    sampler: str = "ddim"             # a key of SAMPLERS
    karras: bool = False              # Karras sigmas (sigma-space samplers only)
    steps: int = 50
    guidance_scale: float = 1.0       # classifier-free guidance; 1 = one network pass
    eta: float = 0.0                  # DDIM's eta; 0 for every other sampler
    ancestral_eta: float = 1.0        # Euler a's noise scale

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            sampler_name(self.sampler)                          # raises with the valid names
        whole_number("steps", self.steps, minimum=1)
        finite_number("guidance_scale", self.guidance_scale, minimum=0.0)
        finite_number("eta", self.eta, minimum=0.0)
        finite_number("ancestral_eta", self.ancestral_eta, minimum=0.0)
        if self.karras not in (True, False):
            raise ValueError(f"karras must be True or False; got {self.karras!r}.")
        if self.karras and self.sampler not in SIGMA_SAMPLERS:
            raise ValueError(f"Karras sigmas apply to the samplers {', '.join(SIGMA_SAMPLERS)}, "
                             f"not to {self.sampler!r}.")
        if self.eta and self.sampler != "ddim":
            raise ValueError(f"eta applies to the 'ddim' sampler only (got sampler {self.sampler!r}); "
                             "leave eta at 0 (Euler a's noise scale is ancestral_eta).")

    @classmethod
    def resolve(cls, defaults, sampler=None, karras=None, steps=None, guidance_scale=None,
                eta=None) -> "SamplingSettings":
        """The caller's values (None: not given) over `defaults` (anything with sampler, karras,
        steps, guidance_scale and eta), checked. A sampler other than the default's starts without
        Karras sigmas unless its name asks for them ("DPM++ 2M Karras")."""
        explicit = sampler is not None
        name, named_karras = sampler_name(sampler if explicit else defaults.sampler)
        if karras is None:
            karras = named_karras if named_karras is not None else (
                defaults.karras if not explicit or name == defaults.sampler else False)
            karras = bool(karras) and name in SIGMA_SAMPLERS
        if eta is None:
            eta = defaults.eta if name == "ddim" else 0.0
        return cls(name, karras, defaults.steps if steps is None else steps,
                   defaults.guidance_scale if guidance_scale is None else guidance_scale, eta)

    @property
    def display_name(self) -> str:
        """AUTOMATIC1111's name, e.g. "DPM++ 2M Karras"."""
        return SAMPLER_DISPLAY_NAMES[self.sampler] + (" Karras" if self.karras else "")
