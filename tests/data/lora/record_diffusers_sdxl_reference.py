"""Record diffusers' own SDXL LoRA loading on the tiny SDXL base (run once, outside the product).

    python -m venv --system-site-packages .bench-venv
    .bench-venv/bin/pip install diffusers transformers peft
    .bench-venv/bin/python tests/data/lora/record_diffusers_sdxl_reference.py

diffusers' UNet2DConditionModel is built from the same sgm YAML and weights (its single-file
converter; the tiny context width makes it read y as a "projection" class embedding, the same
label_emb MLP), transformers' CLIPTextModel (te1, CLIP ViT-L layout) and CLIPTextModelWithProjection
(te2, the OpenCLIP bigG tower in HF layout) from the same text weights. The LoRA that
tests/test_sdxl_lora.py `sdxl_lora` makes (kohya: sgm-named UNet layers + lora_te1_ / lora_te2_;
PEFT: unet. / text_encoder. / text_encoder_2.) is loaded with StableDiffusionXLLoraLoaderMixin and
the UNet output and both towers' hidden states (te1 at its layer_idx, te2 penultimate) are written to
tests/data/lora/diffusers_sdxl_<fmt>.safetensors.
"""
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin  # noqa: E402
from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint,  # noqa: E402
                                                 create_unet_diffusers_config_from_ldm)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from core.checkpoints.clip_keys import ours_to_hf_clip_text  # noqa: E402
from tests.data.lora.record_diffusers_reference import save_reference  # noqa: E402
from tests.test_sdxl_lora import sdxl_inputs, sdxl_lora  # noqa: E402
from tests.tiny_models import FAMILIES, original_state_dict, tiny_model  # noqa: E402


def _load(model, text):
    missing, unexpected = model.load_state_dict(text, strict=False)
    if missing:                                                   # transformers >= 5 drops `text_model.`
        text = {k.replace("text_model.", "", 1): v for k, v in text.items()}
        missing, unexpected = model.load_state_dict(text, strict=False)
    assert not missing and all("position_ids" in k for k in unexpected), (missing, unexpected)
    return model.eval()


def diffusers_models():
    m = tiny_model("sdxl")
    ckpt = original_state_dict(m, "sdxl")
    config = create_unet_diffusers_config_from_ldm(yaml.safe_load(FAMILIES["sdxl"]), ckpt)
    unet = UNet2DConditionModel(**config)
    unet.load_state_dict(convert_ldm_unet_checkpoint(ckpt, config), strict=True)
    te1 = {k[len("conditioner.embedders.0.transformer."):]: v for k, v in ckpt.items()
           if k.startswith("conditioner.embedders.0.transformer.")}
    te1_model = _load(CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                   num_attention_heads=2, max_position_embeddings=77,
                                                   hidden_act="quick_gelu", vocab_size=49408)), te1)
    prefix = "conditioner.embedders.1.model."
    te2 = ours_to_hf_clip_text({"transformer." + k[len(prefix):]: v for k, v in ckpt.items()
                                if k.startswith(prefix) and not k.endswith(("logit_scale", "text_projection"))})
    te2 = {k[len("transformer."):]: v for k, v in te2.items()}
    te2["text_projection.weight"] = ckpt[prefix + "text_projection"].t()
    te2_model = _load(CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=32, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=77,
        hidden_act="gelu", vocab_size=49408, projection_dim=24)), te2)
    return m, unet.eval(), te1_model, te2_model


@torch.no_grad()
def run(unet, te1, te2, tokens_l, tokens_g, x, t, ctx, y):
    eps = unet(x, t, encoder_hidden_states=ctx, class_labels=y).sample
    return eps, te1(tokens_l, output_hidden_states=True).hidden_states[2], \
        te2(tokens_g, output_hidden_states=True).hidden_states[-2]


def main():
    for fmt in ("kohya", "peft"):
        m, unet, te1, te2 = diffusers_models()
        inputs = sdxl_inputs(m)
        base = run(unet, te1, te2, *inputs)
        sd = sdxl_lora(m, fmt)
        state_dict, alphas = StableDiffusionXLLoraLoaderMixin.lora_state_dict(dict(sd), unet_config=unet.config)
        StableDiffusionXLLoraLoaderMixin.load_lora_into_unet(state_dict, alphas, unet)
        StableDiffusionXLLoraLoaderMixin.load_lora_into_text_encoder(state_dict, alphas, te1, prefix="text_encoder")
        StableDiffusionXLLoraLoaderMixin.load_lora_into_text_encoder(state_dict, alphas, te2, prefix="text_encoder_2")
        out = run(unet, te1, te2, *inputs)
        names = ("eps", "text_l", "text_g")
        for name, a, b in zip(names, out, base):
            print(fmt, name, "changed by", float((a - b).norm() / b.norm()))
        save_reference({**dict(zip(names, out)), **{n + "_base": v for n, v in zip(names, base)}},
                       f"diffusers_sdxl_{fmt}")


if __name__ == "__main__":
    main()
