"""Training both stages of Latent Diffusion: datasets, losses, the two loops, EMA, checkpoints, export.

    from core.train import make_config, train, export_run
    cfg = make_config("txt2img", "shapes", "small", steps=20000, batch_size=64, lr=2e-4,
                      first_stage="weights/shapes-kl-f4.safetensors")
    train("ldm", cfg, name="shapes-txt2img")           # writes runs/shapes-txt2img/
    export_run("runs/shapes-txt2img", "weights/shapes-txt2img.safetensors")

Files: config.py (RunConfig, make_config; YAML only stores it), data.py (image folders, shapes world, photos, SR
pairs, masks), latents.py (the latent cache), losses.py, ema.py, checkpoint.py, run_folder.py (what a
run writes), runtime.py (device, precision, DDP, SIGTERM), autoencoder.py and ldm.py (the loops),
session.py (one run from start to outcome), export.py, __main__.py (the CLI).
"""

from core.train.config import RunConfig, TrainConfig, config_dict, dump_config, load_config, make_config
from core.train.data import DataConfig, DegradationConfig, TrainData, degrade, random_mask
from core.train.export import export_run, reexport_file
from core.train.run_folder import RunFolder, RunLockedError
from core.train.session import train

__all__ = ["DataConfig", "DegradationConfig", "RunConfig", "RunFolder", "RunLockedError", "TrainConfig",
           "TrainData", "config_dict", "degrade", "dump_config", "export_run", "load_config", "make_config", "random_mask",
           "reexport_file", "train"]
