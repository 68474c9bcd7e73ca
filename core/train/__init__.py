"""Training both stages of Latent Diffusion: datasets, losses, the two loops, EMA, checkpoints, export.

    from core.train import make_config, train, export_run
    cfg = make_config("txt2img", "shapes", "small", steps=20000, batch_size=64, lr=2e-4,
                      first_stage="weights/shapes-kl-f4.safetensors")
    train("ldm", cfg, name="shapes-txt2img")           # writes runs/shapes-txt2img/
    export_run("runs/shapes-txt2img", "weights/shapes-txt2img.safetensors")
    train("lora", make_lora_config("weights/shapes-txt2img.safetensors", "data/pics", rank=4), name="pics")
    export_lora("runs/pics", "weights/lora/pics.safetensors")   # kohya format; <lora:pics:1> in a prompt

Files: config.py (RunConfig, make_config; YAML only stores it), data.py (image folders, shapes world, photos, SR
pairs, masks), latents.py (the latent cache), losses.py, ema.py, checkpoint.py, run_folder.py (what a
run writes), runtime.py (device, precision, DDP, SIGTERM), autoencoder.py and ldm.py (the loops),
session.py (one run from start to outcome), export.py, __main__.py (the CLI); lora.py and lora_network.py
(LoRA adapters for a frozen text-to-image model, exported in kohya's format).
"""

from core.train.config import RunConfig, TrainConfig, config_dict, dump_config, load_config, make_config
from core.train.data import DataConfig, DegradationConfig, TrainData, degrade, random_mask
from core.train.export import export_run, reexport_file
from core.train.lora import LoraConfig, LoraRunConfig, export_lora, make_lora_config
from core.train.run_folder import RunFolder, RunLockedError
from core.train.session import train

__all__ = ["DataConfig", "DegradationConfig", "LoraConfig", "LoraRunConfig", "RunConfig", "RunFolder", "RunLockedError", "TrainConfig",
           "TrainData", "config_dict", "degrade", "dump_config", "export_lora", "export_run", "load_config", "make_config",
           "make_lora_config", "random_mask",
           "reexport_file", "train"]
