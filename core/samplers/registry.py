"""The samplers by name (STYLE habit 1: chosen from a dict; an unknown name lists the valid ones)."""
from core.samplers.sigma_samplers import (sample_dpm_2, sample_dpm_2_ancestral, sample_dpmpp_2m,
                                          sample_dpmpp_2m_sde, sample_dpmpp_2s_ancestral, sample_dpmpp_sde,
                                          sample_euler, sample_euler_ancestral, sample_heun, sample_lms)
from core.samplers.timestep_samplers import sample_ddim, sample_ddpm, sample_plms
from core.samplers.unipc import sample_unipc

# Samplers over the model's discrete timesteps: denoiser(x, t) -> eps.
TIMESTEP_SAMPLERS = {"ddim": sample_ddim, "plms": sample_plms, "ddpm": sample_ddpm}
# Samplers over noise levels: denoiser(x, sigma) -> pred_x0; each takes any schedule type.
SIGMA_SAMPLERS = {"euler": sample_euler, "euler_a": sample_euler_ancestral, "heun": sample_heun,
                  "dpmpp_2m": sample_dpmpp_2m, "unipc": sample_unipc, "lms": sample_lms, "dpm2": sample_dpm_2,
                  "dpm2_a": sample_dpm_2_ancestral, "dpmpp_2s_a": sample_dpmpp_2s_ancestral,
                  "dpmpp_sde": sample_dpmpp_sde, "dpmpp_2m_sde": sample_dpmpp_2m_sde}
SAMPLERS = {**TIMESTEP_SAMPLERS, **SIGMA_SAMPLERS}
# Those that inject noise with a scale `eta` (SamplingSettings.ancestral_eta; A1111's "Eta").
ANCESTRAL_SAMPLERS = ("euler_a", "dpm2_a", "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m_sde")
# A1111 runs these on steps + 1 sigmas with the next-to-last one dropped (its
# discard_next_to_last_sigma), so the last second-order step does not land very close to 0.
DISCARD_NEXT_TO_LAST_SIGMA = ("dpm2", "dpm2_a")

# AUTOMATIC1111's names, as written in its PNG "parameters" ("Sampler: DPM++ 2M, Schedule type:
# Karras") and sent by its API clients; and the old k-diffusion aliases its API also accepts.
SAMPLER_DISPLAY_NAMES = {"ddim": "DDIM", "plms": "PLMS", "ddpm": "DDPM", "euler": "Euler",
                         "euler_a": "Euler a", "heun": "Heun", "dpmpp_2m": "DPM++ 2M",
                         "unipc": "UniPC", "lms": "LMS", "dpm2": "DPM2", "dpm2_a": "DPM2 a",
                         "dpmpp_2s_a": "DPM++ 2S a", "dpmpp_sde": "DPM++ SDE", "dpmpp_2m_sde": "DPM++ 2M SDE"}
SAMPLER_ALIASES = {"k_euler": "euler", "k_euler_a": "euler_a", "k_euler_ancestral": "euler_a", "k_heun": "heun",
                   "k_lms": "lms", "k_dpm_2": "dpm2", "k_dpm_2_a": "dpm2_a", "k_dpmpp_2s_a": "dpmpp_2s_a",
                   "k_dpmpp_2m": "dpmpp_2m", "k_dpmpp_sde": "dpmpp_sde", "k_dpmpp_2m_sde": "dpmpp_2m_sde"}

# Schedule types (the sigmas a sigma-space sampler walks), by A1111's names. "Automatic" is our
# default discretisation (k-diffusion's, uniform in t), which A1111 calls "Normal"/"Uniform".
SCHEDULE_DISPLAY_NAMES = {"automatic": "Automatic", "karras": "Karras", "exponential": "Exponential",
                          "sgm_uniform": "SGM Uniform", "simple": "Simple", "normal": "Normal"}
KARRAS_SCHEDULE_NAME = SCHEDULE_DISPLAY_NAMES["karras"]
DEFAULT_SCHEDULE_NAME = SCHEDULE_DISPLAY_NAMES["automatic"]
