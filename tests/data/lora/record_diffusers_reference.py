"""Record diffusers' own LoRA loading on the tiny SD1 / SD2 models (run once, outside the product).

    python -m venv --system-site-packages /tmp/diffusers-venv
    /tmp/diffusers-venv/bin/pip install diffusers transformers peft
    /tmp/diffusers-venv/bin/python tests/data/lora/record_diffusers_reference.py

For each family and format (kohya, PEFT) it builds diffusers' UNet2DConditionModel from the same
CompVis YAML and weights (diffusers' single-file converter), transformers' CLIPTextModel from the same
text weights, loads the LoRA that tests/test_lora.py `random_lora` makes with
`StableDiffusionLoraLoaderMixin.lora_state_dict / load_lora_into_unet / load_lora_into_text_encoder`,
and writes the UNet output and the text context to tests/data/lora/diffusers_<family>_<fmt>.safetensors.
The LoRA itself is not stored: random_lora regenerates it from its seed.
"""
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from diffusers import UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config_from_ldm,
)
from transformers import CLIPTextConfig, CLIPTextModel

from core.checkpoints.clip_keys import ours_to_hf_clip_text
from tests.test_lora import random_lora, reference_inputs
from tests.tiny_models import FAMILIES, original_state_dict, tiny_model


def diffusers_models(family):
    m = tiny_model(family)
    ckpt = original_state_dict(m, family)
    original_config = yaml.safe_load(FAMILIES[family])
    config = create_unet_diffusers_config_from_ldm(original_config, ckpt)
    unet = UNet2DConditionModel(**config)
    unet.load_state_dict(convert_ldm_unet_checkpoint(ckpt, config), strict=True)
    if family == "sd1":
        text = {k[len("cond_stage_model."):]: v for k, v in ckpt.items() if k.startswith("cond_stage_model.")}
        cfg = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=77, hidden_act="quick_gelu", vocab_size=49408)
    else:                                  # OpenCLIP's tower has CLIPTextModel's structure, exact GELU
        text = ours_to_hf_clip_text({"transformer." + k[len("cond_stage_model.model."):]: v
                                     for k, v in ckpt.items() if k.startswith("cond_stage_model.model.")
                                     and not k.endswith(("logit_scale", "text_projection"))})
        cfg = CLIPTextConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=77, hidden_act="gelu", vocab_size=49408)
    encoder = CLIPTextModel(cfg)
    text = {k[len("transformer."):]: v for k, v in text.items()}
    missing, unexpected = encoder.load_state_dict(text, strict=False)
    if missing or unexpected:                                     # transformers >= 5 drops `text_model.`
        text = {k.replace("text_model.", "", 1): v for k, v in text.items()}
        missing, unexpected = encoder.load_state_dict(text, strict=False)
    assert not missing and all("position_ids" in k for k in unexpected), (missing, unexpected)
    return m, unet.eval(), encoder.eval()


@torch.no_grad()
def run(family, unet, encoder, tokens, x, t, ctx):
    eps = unet(x, t, encoder_hidden_states=ctx).sample
    out = encoder(tokens, output_hidden_states=True)
    if family == "sd1":
        text = out.last_hidden_state
    else:                                  # SD2: penultimate layer, then the final LayerNorm
        text = getattr(encoder, "text_model", encoder).final_layer_norm(out.hidden_states[-2])
    return eps, text


def main():
    for family in ("sd1", "sd2"):
        for fmt in ("kohya", "peft"):
            m, unet, encoder = diffusers_models(family)
            tokens, x, t, ctx = reference_inputs(m)
            eps0, text0 = run(family, unet, encoder, tokens, x, t, ctx)
            sd = random_lora(m, fmt)
            state_dict, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(dict(sd))
            StableDiffusionLoraLoaderMixin.load_lora_into_unet(state_dict, alphas, unet)
            StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(state_dict, alphas, encoder)
            eps, text = run(family, unet, encoder, tokens, x, t, ctx)
            print(family, fmt, "lora changed eps by", float((eps - eps0).norm() / eps0.norm()),
                  "text by", float((text - text0).norm() / text0.norm()))
            save_reference({"eps": eps, "text": text, "eps_base": eps0, "text_base": text0},
                           f"diffusers_{family}_{fmt}")


def save_reference(tensors: dict, name: str) -> None:
    """tensors -> tests/data/lora/<name>.safetensors, with the versions of the libraries that made them."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, Path(__file__).parent / f"{name}.safetensors",
              metadata={lib: __import__(lib).__version__ for lib in ("diffusers", "transformers", "peft")})


if __name__ == "__main__":
    main()
