"""LoRA layer names (kohya / A1111, diffusers / PEFT) -> the weights they patch in our module tree.

LoRA files name layers after the diffusers module tree (`UNet2DConditionModel`, HF `CLIPTextModel`),
ours mirrors the CompVis checkpoint. `lora_targets(m)` builds, from the model's own config, one table
{LoRA layer name: Target} holding every name a trainer can write for a layer of THIS model:

    kohya, SD1/SD2   lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q
    kohya, SDXL      lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q   (sgm = CompVis names)
    PEFT/diffusers   unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
    text (kohya)     lora_te_text_model_encoder_layers_0_self_attn_q_proj   (lora_te1_ / lora_te2_: SDXL)
    text (PEFT)      text_encoder.text_model.encoder.layers.0.self_attn.q_proj   (text_encoder_2.: SDXL)

The diffusers <-> CompVis block walk is diffusers' own `convert_ldm_unet_checkpoint`
(diffusers/loaders/single_file_utils.py), written per level so that per-level block counts and
levels without attention (SDXL) come out right:

    conv_in                              input_blocks.0.0
    down_blocks.L.resnets.i              input_blocks.k.0      (k counts up from 1 over levels)
    down_blocks.L.attentions.i           input_blocks.k.1      (only at levels with attention)
    down_blocks.L.downsamplers.0.conv    input_blocks.k.0.op   (every level but the last)
    mid_block.resnets.0 / attentions.0 / resnets.1     middle_block.0 / 1 / 2
    up_blocks.U.resnets.i                output_blocks.k.0     (U = levels - 1 - L: deepest first)
    up_blocks.U.attentions.i             output_blocks.k.1
    up_blocks.U.upsamplers.0.conv        output_blocks.k.{1|2}.conv  (last entry of a level but level 0)
    time_embedding.linear_1 / linear_2   time_embed.0 / 2;   add_embedding.linear_1 / 2: label_emb.0.0 / 2
    conv_norm_out / conv_out             out.0 / out.2
    inside a resnet: norm1 in_layers.0, conv1 in_layers.2, time_emb_proj emb_layers.1, norm2 out_layers.0,
                     conv2 out_layers.3, conv_shortcut skip_connection
    inside a transformer: the same names (norm, proj_in, transformer_blocks.N.attn1.to_q, ff.net.0.proj, ...)

Text encoders: HF `text_model.encoder.layers.N.self_attn.{q,k,v}_proj` are row blocks [0:W], [W:2W],
[2W:3W] of our open_clip tower's fused `resblocks.N.attn.in_proj_weight` (core/checkpoints/clip_keys.py);
`out_proj` -> `attn.out_proj`, `mlp.fc1 / fc2` -> `mlp.c_fc / c_proj`. SD2's OpenCLIP tower is named
the same way by the trainers (diffusers converts it to a CLIPTextModel).
"""

from dataclasses import dataclass

from torch import nn

from core.models.attention import SpatialTransformer
from core.models.unet import Downsample, ResBlock, UNetModel, Upsample

# diffusers ResnetBlock2D name -> our ResBlock name
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
# HF CLIPTextModel encoder-layer name -> (our resblock name, q/k/v row block of in_proj_weight or None)
_TEXT_LAYER = {"self_attn.q_proj": ("attn", 0), "self_attn.k_proj": ("attn", 1), "self_attn.v_proj": ("attn", 2),
               "self_attn.out_proj": ("attn.out_proj", None), "mlp.fc1": ("mlp.c_fc", None),
               "mlp.fc2": ("mlp.c_proj", None)}
_LAYER_TYPES = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class Target:
    """One weight a LoRA layer patches: `module.param` of the model (rows: a q/k/v block of a fused
    in_proj_weight, as (start, stop))."""
    module: str
    param: str = "weight"
    rows: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        rows = "" if self.rows is None else f"[{self.rows[0]}:{self.rows[1]}]"
        return f"{self.module}.{self.param}{rows}"


def unet_blocks(unet: UNetModel) -> dict[str, str]:
    """diffusers block path -> our block path (relative to the UNet), walked from the UNet's config
    exactly as UNetModel.__init__ builds input_blocks, middle_block and output_blocks."""
    cfg = unet.cfg
    nrb, levels = cfg.res_blocks_per_level, len(cfg.channel_mult)
    blocks = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    if cfg.num_classes == "sequential":
        blocks.update({"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"})
    k = 1
    for level in range(levels):
        for i in range(nrb[level]):
            blocks[f"down_blocks.{level}.resnets.{i}"] = f"input_blocks.{k}.0"
            if len(unet.input_blocks[k]) > 1:
                blocks[f"down_blocks.{level}.attentions.{i}"] = f"input_blocks.{k}.1"
            k += 1
        if level != levels - 1:
            blocks[f"down_blocks.{level}.downsamplers.0"] = f"input_blocks.{k}.0"
            k += 1
    blocks.update({"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
                   "mid_block.resnets.1": "middle_block.2"})
    k = 0
    for up, level in enumerate(reversed(range(levels))):
        for i in range(nrb[level] + 1):
            entry = unet.output_blocks[k]
            blocks[f"up_blocks.{up}.resnets.{i}"] = f"output_blocks.{k}.0"
            if len(entry) > 1 and isinstance(entry[1], nn.Module) and not isinstance(entry[1], (Upsample, ResBlock)):
                blocks[f"up_blocks.{up}.attentions.{i}"] = f"output_blocks.{k}.1"
            if level and i == nrb[level]:
                blocks[f"up_blocks.{up}.upsamplers.0"] = f"output_blocks.{k}.{len(entry) - 1}"
            k += 1
    return blocks


def _inner_name(block: nn.Module, ours: str) -> str | None:
    """The diffusers name, inside a block, of our layer `ours` (None: diffusers has no such layer)."""
    if isinstance(block, ResBlock):
        for theirs, mine in _RESNET.items():
            if ours == mine:
                return theirs
        return None
    if isinstance(block, Downsample):
        return "conv" if ours == "op" else None
    if isinstance(block, (SpatialTransformer, Upsample)):
        return ours                                   # same names in both trees
    return None                                       # legacy AttentionBlock: no LoRA trainer targets it


def unet_layers(unet: UNetModel) -> dict[str, str]:
    """diffusers layer path -> our layer path (relative to the UNet), for every Linear and Conv2d."""
    layers = {}
    for theirs, ours in unet_blocks(unet).items():
        block = unet.get_submodule(ours)
        if isinstance(block, _LAYER_TYPES):
            layers[theirs] = ours
            continue
        for name, module in block.named_modules():
            inner = _inner_name(block, name) if isinstance(module, _LAYER_TYPES) else None
            if inner is not None:
                layers[f"{theirs}.{inner}"] = f"{ours}.{name}"
    return layers


def text_layers(tower: nn.Module, prefix: str) -> dict[str, Target]:
    """HF CLIPTextModel layer path -> Target, for an open_clip text tower at `prefix`."""
    layers = {}
    for n, block in enumerate(tower.transformer.resblocks):
        width = block.attn.embed_dim
        for theirs, (ours, qkv) in _TEXT_LAYER.items():
            if qkv is None:
                target = Target(f"{prefix}.transformer.resblocks.{n}.{ours}")
            else:
                target = Target(f"{prefix}.transformer.resblocks.{n}.{ours}", "in_proj_weight",
                                (qkv * width, (qkv + 1) * width))
            layers[f"text_model.encoder.layers.{n}.{theirs}"] = target
    return layers


def _text_encoders(m) -> list[tuple[str, str, nn.Module, str]]:
    """(kohya prefix, PEFT prefix, text tower, its module path) for each CLIP text encoder of m."""
    def tower(encoder, path):
        if hasattr(encoder, "transformer") and hasattr(encoder.transformer, "transformer"):
            return encoder.transformer, f"{path}.transformer"          # FrozenCLIPEmbedder (HF math)
        if hasattr(encoder, "model") and hasattr(encoder.model, "transformer"):
            return encoder.model, f"{path}.model"                      # FrozenOpenCLIPEmbedder
        return None, None

    if getattr(m, "conditioner", None) is not None:                     # SDXL: te1 = CLIP-L, te2 = bigG
        out, n = [], 0
        for i, encoder in enumerate(m.conditioner.embedders):
            t, path = tower(encoder, f"conditioner.embedders.{i}")
            if t is not None:
                n += 1
                out.append((f"lora_te{n}_", "text_encoder." if n == 1 else f"text_encoder_{n}.", t, path))
        return out
    encoder = getattr(m, "cond_stage_model", None)
    t, path = tower(encoder, "cond_stage_model") if encoder is not None else (None, None)
    return [] if t is None else [("lora_te_", "text_encoder.", t, path)]


@dataclass(frozen=True)
class KohyaLayer:
    """One layer of m under the name kohya's trainer writes for it (what a LoRA trained here exports)."""
    name: str                      # lora_unet_down_blocks_0_..._to_q / lora_te_text_model_encoder_layers_0_...
    path: str                      # the PEFT / diffusers spelling: unet.down_blocks.0.....to_q, text_encoder....
    target: Target
    encoder: str | None = None     # text layers: the encoder's module path (cond_stage_model, ...)
    block: int | None = None       # text layers: the resblock index


def kohya_layers(m) -> list[KohyaLayer]:
    """Every LoRA-able layer of m with its kohya name: on SD1/SD2-style UNets the diffusers path
    (kohya converts the checkpoint to diffusers first), on sgm UNets (SDXL) the CompVis path, as
    kohya's sdxl_train_network writes them; text encoders lora_te_ (lora_te1_ / lora_te2_ on SDXL).
    The same walk as lora_targets, which reads every spelling back."""
    sgm = getattr(m, "conditioner", None) is not None
    layers = []
    unet, unet_path = m.model.diffusion_model, "model.diffusion_model"
    for theirs, ours in unet_layers(unet).items():
        name = "lora_unet_" + (ours if sgm else theirs).replace(".", "_")
        layers.append(KohyaLayer(name, "unet." + theirs, Target(f"{unet_path}.{ours}")))
    for kohya, peft, tower, path in _text_encoders(m):
        encoder = path.rsplit(".", 1)[0]                              # the tower's embedder module
        for n, (theirs, target) in enumerate(text_layers(tower, path).items()):
            layers.append(KohyaLayer(kohya + theirs.replace(".", "_"), peft + theirs, target, encoder,
                                     n // len(_TEXT_LAYER)))
    return layers


def lora_targets(m) -> dict[str, Target]:
    """Every LoRA layer name (kohya and PEFT spellings) -> the weight it patches in m."""
    table: dict[str, Target] = {}
    unet, unet_path = m.model.diffusion_model, "model.diffusion_model"
    for theirs, ours in unet_layers(unet).items():
        target = Target(f"{unet_path}.{ours}")
        table["lora_unet_" + theirs.replace(".", "_")] = target      # kohya on a diffusers UNet (SD1/SD2)
        table["lora_unet_" + ours.replace(".", "_")] = target        # kohya on sgm's UNet (SDXL)
        table["unet." + theirs] = target                             # PEFT / diffusers
    for layer in kohya_layers(m):
        if layer.encoder is not None:
            table[layer.name] = layer.target
            table[layer.path] = layer.target
    return table
