"""Which model family a state dict holds, read from its keys and a few shapes (no config, no weights read).

Most `.safetensors` people have carry no config. The families differ in their top-level prefixes and
in the UNet's input channels (FACTS.md sections 1, 4 and 9):

    conditioner.embedders.0.transformer.* + .1.model.*   SDXL base (in 4) / SDXL inpainting (in 9)
    conditioner.embedders.0.model.*                       SDXL refiner
    cond_stage_model.transformer.(text_model.)encoder.*  SD 1.x (in 4) / SD 1.5 inpainting (in 9)
    cond_stage_model.model.*                              SD 2.x (in 4: eps or v, the file cannot tell),
                                                          SD 2 inpainting (in 9), x4 upscaler (low_scale_model)
    cond_stage_model.transformer.token_emb / .embedding   LDM text / layout (BERT-style) / class models
    cond_stage_model.channel_mapper                       LDM semantic synthesis (SpatialRescaler)
    no cond stage                                         LDM unconditional / super-resolution / inpainting

`detect_family(sd)` returns a Detection: the family name, and the name of a bundled config
(bundled_configs.py) when the family has one fixed architecture; otherwise `config` is None and
`message` says what to pass.
"""
from collections.abc import Mapping
from dataclasses import dataclass

UNET = "model.diffusion_model."


@dataclass(frozen=True)
class Detection:
    family: str                 # a tests/tiny_models.py family name, or "sdxl_inpaint" / "sd1_inpaint" / "unknown"
    config: str | None          # a key of BUNDLED_CONFIGS, or None: the file alone does not fix the architecture
    message: str = ""           # what the user should do when config is None (or what was assumed)


def _shape(value) -> tuple:
    return tuple(getattr(value, "shape", value))


def detect_family(sd: Mapping) -> Detection:
    """sd: key -> tensor (or shape). The family, from key prefixes and the UNet's channel counts."""
    keys = list(sd)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)          # noqa: E731
    conv_in = sd.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        if has("encoder.") and has("decoder."):
            return Detection("autoencoder", None, "this is a first stage (autoencoder) alone: pass its "
                             "config.yaml, or load it as the VAE of a model")
        return Detection("unknown", None, "no UNet (model.diffusion_model.*) in this file: it is not an LDM / "
                         "Stable Diffusion checkpoint in the original layout (LoRA, diffusers folders and "
                         "VAE-only files load elsewhere)")
    in_ch = _shape(conv_in)[1]
    out_w = sd.get(UNET + "out.2.weight")
    out_ch = _shape(out_w)[0] if out_w is not None else in_ch
    yaml_hint = "pass the YAML it was released with: load_model(path, config='....yaml')"

    if has("conditioner.embedders."):
        if has("conditioner.embedders.0.transformer.") and has("conditioner.embedders.1.model."):
            if in_ch == 9:
                return Detection("sdxl_inpaint", "sdxl_inpaint")
            return Detection("sdxl", "sdxl_base")
        if has("conditioner.embedders.0.model.") and not has("conditioner.embedders.1.model."):
            return Detection("sdxl_refiner", "sdxl_refiner")
        return Detection("unknown", None, f"an sgm (SDXL-style) file with an unknown set of embedders: {yaml_hint}")
    if has("cond_stage_model.transformer.token_emb."):
        family = "ldm_layout" if has("first_stage_model.quantize.") else "ldm_txt2img"
        return Detection(family, None, f"an LDM text/layout model (its sizes vary): {yaml_hint}")
    if has("cond_stage_model.transformer."):
        if in_ch == 9:
            return Detection("sd1_inpaint", "sd1_inpaint")
        return Detection("sd1", "sd1")
    if has("cond_stage_model.model."):
        if has("low_scale_model."):
            return Detection("sd_x4", None, f"the SD x4 upscaler: {yaml_hint} (x4-upscaling.yaml)")
        if in_ch == 9:
            return Detection("sd2_inpaint", "sd2_inpaint")
        return Detection("sd2", None, "Stable Diffusion 2.x: the file does not say whether it predicts eps (512 px "
                         "base models) or v (768-v models); say which: load_model(path, config='sd2') or "
                         "config='sd2_v' (or the YAML: v2-inference.yaml / v2-inference-v.yaml)")
    if has("cond_stage_model.channel_mapper."):
        return Detection("ldm_semantic", None, f"an LDM semantic-synthesis model (its class count and sizes vary): "
                         f"{yaml_hint}")
    if has("cond_stage_model.embedding."):
        return Detection("ldm_class", None, f"a class-conditional LDM: {yaml_hint}")
    if "scale_factor" in sd:
        return Detection("ldm_churches", None, f"an unconditional LDM with a learned scale: {yaml_hint}")
    if in_ch == 2 * out_ch:
        return Detection("ldm_sr", None, f"an LDM super-resolution model: {yaml_hint}")
    if in_ch == 2 * out_ch + 1:
        return Detection("ldm_inpaint", None, f"an LDM inpainting model: {yaml_hint}")
    return Detection("ldm_uncond", None, f"an unconditional LDM: {yaml_hint}")
