"""Exponential moving average of the trained weights (the `model_ema` of the CompVis code, LitEma).

shadow <- decay * shadow + (1 - decay) * param after every optimizer step, with the reference's
warm-up decay = min(decay, (1 + n) / (10 + n)) for the n-th update, so early averages are not
dominated by the random initialisation. The shadow is kept in float32 whatever the model's dtype.
Sample grids and exported weights use the shadow; training continues on the raw weights.
"""

from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        # Only the trained parameters: the frozen first stage needs no average.
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        params = dict(module.named_parameters())
        self.shadow = {n: params[n].detach().float().clone() for n in self.names}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        params = dict(module.named_parameters())
        shadow = [self.shadow[n] for n in self.names]
        current = [params[n].detach().float() for n in self.names]
        torch._foreach_lerp_(shadow, current, 1.0 - decay)        # shadow += (1 - decay)(param - shadow)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        params = dict(module.named_parameters())
        for n in self.names:
            params[n].copy_(self.shadow[n])

    @contextmanager
    def swapped_in(self, module: nn.Module):
        """Run a block with the EMA weights in `module`, then put the raw weights back."""
        params = dict(module.named_parameters())
        backup = {n: params[n].detach().clone() for n in self.names}
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(backup[n])

    def state_dict(self) -> dict:
        """Plain tensors and numbers only, so the checkpoint loads with weights_only=True."""
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.names) - set(state["shadow"])
        if missing:
            raise ValueError(f"the checkpoint's EMA lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}; "
                             "it was written by a different model config")
        self.num_updates = int(state["num_updates"])
        for n in self.names:
            self.shadow[n].copy_(state["shadow"][n])
