"""The samplers by name (STYLE habit 1: chosen from a dict; an unknown name lists the valid ones)."""
from core.samplers.sigma_samplers import (sample_dpmpp_2m, sample_euler, sample_euler_ancestral,
                                          sample_heun)
from core.samplers.timestep_samplers import sample_ddim, sample_ddpm, sample_plms
from core.samplers.unipc import sample_unipc

# Samplers over the model's discrete timesteps: denoiser(x, t) -> eps.
TIMESTEP_SAMPLERS = {"ddim": sample_ddim, "plms": sample_plms, "ddpm": sample_ddpm}
# Samplers over noise levels: denoiser(x, sigma) -> pred_x0; each takes karras=True.
SIGMA_SAMPLERS = {"euler": sample_euler, "euler_a": sample_euler_ancestral, "heun": sample_heun,
                  "dpmpp_2m": sample_dpmpp_2m, "unipc": sample_unipc}
SAMPLERS = {**TIMESTEP_SAMPLERS, **SIGMA_SAMPLERS}

# AUTOMATIC1111's names, as written in its PNG "parameters" ("Sampler: DPM++ 2M, Schedule type:
# Karras"); `karras=True` is the schedule type KARRAS_SCHEDULE_NAME, otherwise "Automatic".
SAMPLER_DISPLAY_NAMES = {"ddim": "DDIM", "plms": "PLMS", "ddpm": "DDPM", "euler": "Euler",
                         "euler_a": "Euler a", "heun": "Heun", "dpmpp_2m": "DPM++ 2M",
                         "unipc": "UniPC"}
KARRAS_SCHEDULE_NAME = "Karras"
DEFAULT_SCHEDULE_NAME = "Automatic"
