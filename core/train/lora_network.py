"""LoRA adapters around a frozen model's layers (Hu et al. 2021), named and saved as kohya's trainer does.

    W' = W + (alpha / rank) * up @ down      down (r, in[, kh, kw]) random, up (out, r[, 1, 1]) zero

so training starts from the base model exactly. Each adapted weight is a torch parametrization
(`torch.nn.utils.parametrize`): the layer's forward reads W' wherever it reads its weight, which is
also how the text encoder's fused `in_proj_weight` takes separate q / k / v adapters on its row blocks
(core/checkpoints/lora_keys.py). A Conv2d's adapter is LoCon's: a kh x kw `down`, a 1x1 `up`, the
same stride and padding, which is the same as the merged weight above.

The adapters are keyed by their kohya names (`lora_unet_down_blocks_0_..._attn1_to_q`,
`lora_te_text_model_encoder_layers_0_self_attn_q_proj`, from `kohya_layers`, the inverse of the
one mapping core/lora.py reads files with), and `kohya_state_dict()` is the file's content:
`NAME.lora_down.weight`, `NAME.lora_up.weight`, `NAME.alpha`. So `core.lora.apply_lora` of that file
at weight 1 merges exactly W' into the base model, and kohya / A1111 / diffusers read it too.
"""

import math
import re

import torch
from torch import nn
from torch.nn.utils import parametrize

from core.checkpoints.lora_keys import KohyaLayer, Target, kohya_layers

# Which layers a LoRA adapts, by group (kohya's defaults: attn + ff + proj; LoCon adds conv).
LAYER_GROUPS = {
    "attn": "attention projections to_q / to_k / to_v / to_out.0 (self- and cross-attention)",
    "ff": "the transformer blocks' feed-forward layers (ff.net.0.proj, ff.net.2)",
    "proj": "the spatial transformers' proj_in / proj_out",
    "conv": "resblock and resampler convolutions (LoCon: conv1, conv2, conv_shortcut, down/upsamplers)",
    "text": "the text encoder's attention and MLP layers (CLIP / OpenCLIP encoders)",
}
_GROUP_PATTERNS = {     # on the layer's diffusers / PEFT path (KohyaLayer.path)
    "attn": re.compile(r"^unet\..*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"),
    "ff": re.compile(r"^unet\..*\.ff\.net\.(0\.proj|2)$"),
    "proj": re.compile(r"^unet\..*\.attentions\.\d+\.proj_(in|out)$"),
    "conv": re.compile(r"^unet\..*\.(resnets\.\d+\.(conv1|conv2|conv_shortcut)|(down|up)samplers\.0\.conv)$"),
    "text": re.compile(r"^text_encoder(_\d)?\."),
}


def check_layer_groups(layers) -> tuple[str, ...]:
    """The layer groups as a tuple, each a key of LAYER_GROUPS (ValueError listing them otherwise)."""
    layers = (layers,) if isinstance(layers, str) else tuple(layers or ())
    unknown = [g for g in layers if g not in LAYER_GROUPS]
    if not layers or unknown:
        raise ValueError(f"lora.layers must name some of {list(LAYER_GROUPS)}, got {list(layers)}"
                         + "".join(f"\n  {k}: {v}" for k, v in LAYER_GROUPS.items()))
    return tuple(dict.fromkeys(layers))


def select_layers(m, groups) -> list[KohyaLayer]:
    """The layers of m in `groups`; text layers only of the blocks the encoder runs (SD2's OpenCLIP
    stops at the penultimate block, whose successor kohya's files do not have)."""
    groups = check_layer_groups(groups)
    chosen = []
    for group in groups:
        found = []
        for layer in kohya_layers(m):
            if not _GROUP_PATTERNS[group].match(layer.path):
                continue
            if layer.encoder is not None:
                n_blocks = getattr(m.get_submodule(layer.encoder), "n_blocks", None)
                if n_blocks is not None and layer.block >= n_blocks:
                    continue
            found.append(layer)
        if not found:
            if group == "text":
                raise ValueError("layer group 'text': this model's text encoder is not a CLIP / OpenCLIP "
                                 "encoder, which LoRA files name (kohya's lora_te_*); train the UNet groups only")
            raise ValueError(f"layer group {group!r} ({LAYER_GROUPS[group]}): this model has no such layer")
        chosen.extend(found)
    return chosen


class LoraAdapter(nn.Module):
    """The low-rank update of one weight block (out, in[, kh, kw]): scale * up @ down."""

    def __init__(self, shape: torch.Size, rank: int, alpha: float):
        super().__init__()
        conv = len(shape) == 4
        self.down = nn.Parameter(torch.empty(rank, *shape[1:]))                       # (r, in[, kh, kw])
        self.up = nn.Parameter(torch.zeros(shape[0], rank, *((1, 1) if conv else ())))  # (out, r[, 1, 1])
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))           # as nn.Linear / nn.Conv2d (and kohya)
        self.rank, self.alpha = rank, float(alpha)

    def delta(self) -> torch.Tensor:
        """(out, in[, kh, kw]) float32: alpha / rank * up @ down, as core.lora merges it."""
        up, down = self.up.float(), self.down.float()
        delta = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
        return (self.alpha / self.rank) * delta


class LoraWeight(nn.Module):
    """A parametrization: weight -> weight + the adapters' deltas, each on its row block (q/k/v of a
    fused in_proj_weight) or on the whole weight."""

    def __init__(self):
        super().__init__()
        self.adapters = nn.ModuleList()
        self.rows: list[tuple[int, int] | None] = []

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        for adapter, rows in zip(self.adapters, self.rows):
            if rows is None:
                weight = weight + adapter.delta().reshape(weight.shape).to(weight.dtype)
            else:
                a, b = rows
                weight = torch.cat([weight[:a], weight[a:b] + adapter.delta().to(weight.dtype), weight[b:]])
        return weight


def _weight(m, target: Target) -> torch.Tensor:
    return getattr(m.get_submodule(target.module), target.param)


class LoraNetwork(nn.Module):
    """Adapters for `layers` of m (select_layers), keyed by kohya name; attach() wraps m's weights."""

    def __init__(self, m, layers: list[KohyaLayer], rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"the LoRA rank must be at least 1, got {rank}")
        self.layers = {layer.name: layer for layer in layers}
        self.adapters = nn.ModuleDict()
        for layer in layers:
            w = _weight(m, layer.target)
            block = w[slice(*layer.target.rows)] if layer.target.rows else w
            if min(block.shape[:2]) < rank:
                raise ValueError(f"rank {rank} exceeds layer {layer.name}'s size {tuple(block.shape[:2])}; "
                                 "choose a smaller rank")
            self.adapters[layer.name] = LoraAdapter(block.shape, rank, alpha)
        self.rank, self.alpha = rank, float(alpha)
        self._attached: list[tuple[nn.Module, str]] = []

    def attach(self, m) -> None:
        """Make m's adapted weights W + delta (m's own weights are not changed; detach() undoes it)."""
        if self._attached:
            raise RuntimeError("the LoRA adapters are attached already")
        wrappers: dict[tuple[str, str], LoraWeight] = {}
        for name, adapter in self.adapters.items():
            t = self.layers[name].target
            wrapper = wrappers.setdefault((t.module, t.param), LoraWeight())
            wrapper.adapters.append(adapter)
            wrapper.rows.append(t.rows)
        for (module, param), wrapper in wrappers.items():
            owner = m.get_submodule(module)
            parametrize.register_parametrization(owner, param, wrapper)
            self._attached.append((owner, param))

    def detach(self, m) -> None:
        """Give m its own weights back, bit-exactly (the originals were never changed)."""
        for owner, param in self._attached:
            parametrize.remove_parametrizations(owner, param, leave_parametrized=False)
        self._attached.clear()

    def kohya_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The LoRA file's tensors: NAME.lora_down.weight, NAME.lora_up.weight, NAME.alpha (0-d)."""
        sd = {}
        for name, a in self.adapters.items():
            sd[f"{name}.lora_down.weight"] = a.down.detach().to("cpu", dtype).contiguous()
            sd[f"{name}.lora_up.weight"] = a.up.detach().to("cpu", dtype).contiguous()
            sd[f"{name}.alpha"] = torch.tensor(a.alpha, dtype=dtype)
        return sd

    @torch.no_grad()
    def load_kohya_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load what kohya_state_dict wrote (a resumed run); every adapter's tensors, same shapes."""
        expected = set(self.kohya_state_dict())
        if set(sd) != expected:
            raise ValueError(f"the LoRA weights do not match this network: {len(expected - set(sd))} missing "
                             f"(e.g. {sorted(expected - set(sd))[:2]}), {len(set(sd) - expected)} unexpected "
                             f"(e.g. {sorted(set(sd) - expected)[:2]})")
        for name, a in self.adapters.items():
            a.down.copy_(sd[f"{name}.lora_down.weight"])
            a.up.copy_(sd[f"{name}.lora_up.weight"])
