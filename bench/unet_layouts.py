"""What bench/unet.py compares: the two UNet layouts (SD 2.1 base, SDXL base), their seeded random
weights in our layout and in diffusers' (made by diffusers' own converter), the models loaded from
those files, and the inputs of one classifier-free-guidance step.

    sd21  Stability's v2-inference.yaml `unet_config` (865M parameters), context 77x1024
    sdxl  Stability's sd_xl_base.yaml `network_config` (2.57B parameters), context 77x2048 and the
          ADM vector y (2816 = pooled OpenCLIP bigG 1280 ++ six size / crop numbers x 256 Fourier)

Both configs are the released YAMLs as data, read by our own translator
(core.checkpoints.config_from_yaml) for our UNet and by diffusers' single-file converter for theirs.
diffusers is only imported in the functions that need it (the bench venv, bench/README.md).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import torch
import yaml
from torch import nn

from core import speed
from core.checkpoints import config_from_yaml
from core.models.attention import GEGLU, CrossAttention, FeedForward
from core.models.sdxl_conditioner import ConcatTimestepEmbedderND, ConcatTimestepEmbedderNDConfig
from core.models.unet import UNetModel

ROOT = Path(__file__).resolve().parents[1]

# Stability-AI/stablediffusion configs/stable-diffusion/v2-inference.yaml (also used by load_memory.py);
# diffusers' config converter reads the unet_config and the first stage's ch_mult (the VAE factor).
V2_INFERENCE = {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
    "linear_start": 0.00085, "linear_end": 0.0120, "timesteps": 1000, "image_size": 64, "channels": 4,
    "cond_stage_key": "txt", "conditioning_key": "crossattn", "scale_factor": 0.18215, "use_ema": False,
    "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
        "use_checkpoint": True, "use_fp16": True, "image_size": 32, "in_channels": 4, "out_channels": 4,
        "model_channels": 320, "attention_resolutions": [4, 2, 1], "num_res_blocks": 2,
        "channel_mult": [1, 2, 4, 4], "num_head_channels": 64, "use_spatial_transformer": True,
        "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": 1024, "legacy": False}},
    "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
        "embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                     "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                     "attn_resolutions": [], "dropout": 0.0}}},
    "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                          "params": {"freeze": True, "layer": "penultimate"}}}}}
# Stability-AI/generative-models configs/inference/sd_xl_base.yaml, verbatim (tests/test_sdxl.py checks
# that our translation of it equals core.checkpoints.bundled_configs.sdxl_base).
SD_XL_BASE_YAML = ROOT / "tests" / "data" / "sgm" / "sd_xl_base.yaml"
PREFIX = "model.diffusion_model."  # the UNet's prefix in an original LDM / sgm checkpoint
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BATCH, CONTEXT_LEN, CONTEXT_DIM = 2, 77, 1024
# The SDXL step's size conditioning, one row per sample: (original h, w, crop top, left, target h, w),
# in the order of sd_xl_base.yaml's embedders (and of diffusers' add_time_ids).
TIME_IDS = ((1024, 1024, 0, 0, 1024, 1024), (768, 1024, 0, 0, 768, 1024))


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str                  # --layout
    title: str                 # the report's heading
    context_dim: int           # cross-attention width
    pooled_dim: int | None     # SDXL: the pooled text embedding at the head of y (None: no y)
    sizes: tuple[int, ...]     # default latent sides on the CPU
    cpu_dtypes: tuple[str, ...]  # default dtypes on the CPU
    cache_name: str            # folder under --cache, per seed

    def original(self) -> dict:
        """The released YAML as a dict: what diffusers' converter and our translator both read."""
        return V2_INFERENCE if self.name == "sd21" else yaml.safe_load(SD_XL_BASE_YAML.read_text())


LAYOUTS = {
    "sd21": Layout("sd21", "SD 2.1 UNet (v2-inference.yaml)", 1024, None, (32, 64), ("fp32", "bf16"), "seed{seed}"),
    # fp32 at 128x128 would hold two 10.3 GB copies in the timing process: bf16 only unless asked.
    "sdxl": Layout("sdxl", "SDXL base UNet (sd_xl_base.yaml)", 2048, 1280, (128,), ("bf16",), "sdxl-seed{seed}"),
}


def unet_config(layout: str = "sd21"):
    return config_from_yaml(LAYOUTS[layout].original()).unet


@functools.lru_cache(maxsize=None)
def weight_bytes(layout: str, dtype: torch.dtype) -> int:
    """Bytes of one UNet's parameters in `dtype` (counted on the meta device)."""
    with torch.device("meta"):
        model = UNetModel(unet_config(layout))
    return sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=dtype).element_size()


# ---------------------------------------------------------------------------------------------
# Weights: one seeded set, saved in both layouts
# ---------------------------------------------------------------------------------------------

def seeded_unet(seed: int, config=None, device="cpu") -> UNetModel:
    """Our UNet (`config`, default SD 2.1's) with deterministic, all non-zero float32 weights drawn
    from one torch.Generator on `device` (seeded_init_)."""
    with torch.device("meta"):
        model = UNetModel(config or unet_config())
    model = model.to_empty(device=device).eval()
    if any(True for _ in model.buffers()):
        raise RuntimeError("seeded_unet: the UNet gained buffers; initialise them here too")
    return seeded_init_(model, seed)


@torch.no_grad()
def seeded_init_(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter of `model` from one torch.Generator on the model's device, in
    module order (the same seed on the same device gives the same weights).

    Linear / conv weights ~ N(0, 1 / (3 fan_in)) (the spread of torch's default init); biases
    ~ N(0, 0.02^2); norm scales 1 + N(0, 0.1^2), norm shifts N(0, 0.1^2). The zero-initialised
    output layers get the same treatment, so every block contributes to the output. Any other
    parameter (embeddings, attention in-projections, positional embeddings: the text encoders)
    ~ N(0, 1 / (3 fan_in)) when it is a matrix, else N(0, 0.02^2).
    """
    g = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            if module.weight is not None:
                module.weight.normal_(1.0, 0.1, generator=g)
            if module.bias is not None:
                module.bias.normal_(0.0, 0.1, generator=g)
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            module.weight.normal_(0.0, (3 * fan_in) ** -0.5, generator=g)
            if module.bias is not None:
                module.bias.normal_(0.0, 0.02, generator=g)
        else:
            for p in module.parameters(recurse=False):
                p.normal_(0.0, (3 * p[0].numel()) ** -0.5 if p.dim() >= 2 else 0.02, generator=g)
    return model


def to_diffusers(state_dict: dict, layout: str = "sd21") -> tuple[dict, dict]:
    """(UNet2DConditionModel kwargs, its state dict) by diffusers' converter for original LDM / sgm
    files, fed the `model.diffusion_model.`-prefixed state dict and the released YAML as a dict (for
    SDXL it reads `network_config`: addition_embed_type "text_time", transformer depths 1-2-10)."""
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint,
                                                     create_unet_diffusers_config_from_ldm)
    ldm = {PREFIX + k: v for k, v in state_dict.items()}
    config = create_unet_diffusers_config_from_ldm(LAYOUTS[layout].original(), ldm)
    if layout == "sdxl":
        # The converter takes the image size from a conditioner key (a UNet-only dict has none, so it
        # guesses SD 1's 512 px); sample_size is only a default, it does not enter the forward.
        config["sample_size"] = unet_config(layout).image_size
    return config, convert_ldm_unet_checkpoint(ldm, config)


def prepare_weights(cache: Path, seed: int, with_diffusers: bool, layout: str = "sd21") -> None:
    """Write ours.safetensors (and diffusers.safetensors + diffusers.json) under cache, once per seed.
    One float32 model is held (safetensors writes from the tensors' memory, without a copy)."""
    from safetensors.torch import save_file
    ours, theirs = cache / "ours.safetensors", cache / "diffusers.safetensors"
    if ours.exists() and (theirs.exists() or not with_diffusers):
        return
    cache.mkdir(parents=True, exist_ok=True)
    gib = 2 * weight_bytes(layout, torch.float32) / 2**30
    print(f"writing seed-{seed} {layout} weights to {cache} (once, up to {gib:.1f} GiB) ...", flush=True)
    sd = {k: v.contiguous() for k, v in seeded_unet(seed, unet_config(layout)).state_dict().items()}
    if with_diffusers and not theirs.exists():
        config, dsd = to_diffusers(sd, layout)
        save_file({k: v.contiguous() for k, v in dsd.items()}, str(theirs) + ".tmp")
        (cache / "diffusers.json").write_text(json.dumps(config))
        os.replace(str(theirs) + ".tmp", theirs)
    if not ours.exists():
        save_file(sd, str(ours) + ".tmp")
        os.replace(str(ours) + ".tmp", ours)


def load(impl: str, cache: Path, device: str, dtype: torch.dtype, layout: str = "sd21", pack: bool = True):
    """Build on the meta device and assign the saved tensors, cast one by one: weights held once.
    Ours on the CPU is packed as core.load_model does (speed.pack_as_it_fits): only when the packed
    copies fit in a third of the memory available now (with Winograd's transformed kernels where those
    fit); otherwise only its blocked attention and feed-forwards are swapped in (they hold no copy).
    Returns (model, packed: whether the packed copies are used)."""
    from safetensors import safe_open
    if impl == "ours":
        with torch.device("meta"):
            model = UNetModel(unet_config(layout))
    else:
        from diffusers import UNet2DConditionModel
        with torch.device("meta"):
            model = UNet2DConditionModel(**json.loads((cache / "diffusers.json").read_text()))
    with safe_open(str(cache / f"{impl}.safetensors"), framework="pt", device="cpu") as f:
        # copy=True: a float32 tensor could otherwise stay backed by the file mapping and only become
        # resident when the first forward touches it, which would count the weights as forward memory.
        sd = {k: f.get_tensor(k).to(device=device, dtype=dtype, copy=True) for k in f.keys()}
    model.load_state_dict(sd, strict=True, assign=True)
    del sd
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise RuntimeError(f"{impl}: some tensors were not in the weights file")
    packed = pack and impl == "ours" and device == "cpu" and speed.pack_as_it_fits(model)
    return model.eval(), packed


# ---------------------------------------------------------------------------------------------
# Inputs and forwards
# ---------------------------------------------------------------------------------------------

def inputs(device: str, dtype: torch.dtype, size: int, seed: int = 1, context_dim: int = CONTEXT_DIM):
    """x_t (B, 4, size, size), t (B,) = [10, 900], context (B, 77, context_dim), from one torch.Generator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 4, size, size, generator=g)
    context = torch.randn(BATCH, CONTEXT_LEN, context_dim, generator=g)
    t = torch.tensor([10, 900])
    return x.to(device, dtype), t.to(device), context.to(device, dtype)


def step_inputs(layout: str, device: str, dtype: torch.dtype, size: int) -> dict:
    """One CFG step's inputs for both implementations: x, t, context and, for SDXL, the ADM vector in
    both forms. Ours takes y = pooled ++ Fourier(TIME_IDS) made by our ConcatTimestepEmbedderND (three
    embedders of two numbers, as sd_xl_base.yaml lists them); diffusers takes text_embeds = pooled and
    time_ids and makes the same Fourier features itself (add_time_proj, cos first, denominator half:
    child_numerics checks both against each other)."""
    lay = LAYOUTS[layout]
    x, t, context = inputs(device, dtype, size, context_dim=lay.context_dim)
    out = {"x": x, "t": t, "context": context}
    if lay.pooled_dim:
        pooled = torch.randn(BATCH, lay.pooled_dim, generator=torch.Generator().manual_seed(2))
        time_ids = torch.tensor(TIME_IDS, dtype=torch.float32)                      # (B, 6)
        sizes = ConcatTimestepEmbedderND(ConcatTimestepEmbedderNDConfig(outdim=256))
        fourier = [sizes(time_ids[:, i:i + 2]) for i in (0, 2, 4)]                # 3 x (B, 512)
        out["y"] = torch.cat([pooled, *fourier], dim=1).to(device, dtype)          # (B, 2816)
        out["text_embeds"], out["time_ids"] = pooled.to(device, dtype), time_ids.to(device)
    return out


def step_args(impl: str, inp: dict) -> tuple:
    """The positional tensors forward_fn(impl, ...) takes (a CUDA graph copies them in per replay)."""
    head = (inp["x"], inp["t"], inp["context"])
    if "y" not in inp:
        return head
    return head + ((inp["text_embeds"], inp["time_ids"]) if impl == "diffusers" else (inp["y"],))


# "ours" with one lever undone, as the classes it swaps: the transformers' GEGLU unfused (session 16); the
# long bf16 self-attention and feed-forwards in one piece, torch's SDPA and the plain FeedForward (session 17).
BASELINES = {"ours-unfused": {speed.PackedGEGLU: GEGLU},
             "ours-unblocked": {speed.BlockedCrossAttention: CrossAttention, speed.BlockedFeedForward: FeedForward},
             "ours-direct": {speed.WinogradConv2d: speed.PackedConv2d}}


def forward_fn(impl: str, model: nn.Module):
    """fn(*step_args(impl, inputs)) -> eps (B, 4, H, W)."""
    if impl == "ours":
        return lambda x, t, c, *y: model(x, t, c, *y)
    if impl in BASELINES:             # packed, with one lever undone (that lever's baseline)
        swapped = [(m, type(m)) for m in model.modules() if type(m) in BASELINES[impl]]

        def baseline(x, t, c, *y):
            for m, fast in swapped:
                m.__class__ = BASELINES[impl][fast]
            try:
                return model(x, t, c, *y)
            finally:
                for m, fast in swapped:
                    m.__class__ = fast
        return baseline
    if impl == "ours-plain":          # our model with torch's plain kernels (the packing lever's baseline)
        def plain(x, t, c, *y):
            with speed.plain_kernels():
                return model(x, t, c, *y)
        return plain

    def theirs(x, t, c, *added):
        kwargs = {"added_cond_kwargs": dict(zip(("text_embeds", "time_ids"), added))} if added else {}
        return model(x, t, encoder_hidden_states=c, return_dict=False, **kwargs)[0]
    return theirs
