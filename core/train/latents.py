"""Training samples in latent space, for the LDM loop: the frozen first stage's posterior (mean, std)
and the conditioning inputs, computed from a data batch, and optionally kept in memory.

The first stage is frozen while the diffusion model trains (Rombach et al. 2022, Sec. 3), so a
sample's posterior never changes: for synthetic data (the shapes world, photo crops) a pool of
`pool_size` samples is encoded once, on first use, and read back every epoch after, which removes
the renderer and the encoder from all later steps. z_0 = scale_factor * (mean + std * eps) is still
drawn afresh at every step, as the reference's get_first_stage_encoding does.

An entry (every tensor per sample):
    mean, std      (C, h, w) the posterior; VQ models: mean = pre-quantisation h, std = 0
    tokens         (L,) int64 caption tokens      (jointly trained text encoder)
    class_label    () int64                       (class-conditional)
    layout         (4, 5) (class_id, x0, y0, x1, y1), class_id -1 = no object
    lr             (3, h, w) the low-res image at latent resolution, in [-1, 1]   (super-resolution)
    mask, masked   (1, h, w) mask at latent resolution (1 = repaint; nearest, binarised at 0.5) and
                   (C, h, w) the masked image's latent mean, unscaled                (SD2 inpainting)
"""

import numpy as np
import torch
import torch.nn.functional as F

from core.models.autoencoder import DiagonalGaussianDistribution
from core.capabilities import capabilities
from core.models.diffusion import LatentDiffusion
from core.train.data import TrainData


def _posterior(model: LatentDiffusion, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = model.first_stage_model.encode(x)
    if isinstance(h, DiagonalGaussianDistribution):
        return h.mean.float(), h.std.float()                       # (B, C, h, w) each
    return h.float(), torch.zeros_like(h, dtype=torch.float32)


@torch.no_grad()
def encode_batch(model: LatentDiffusion, batch: dict, device: torch.device, autocast) -> dict:
    """A data batch (data.TrainData.batch) -> latent-space entries (module docstring), on `device`."""
    x = batch["image"].to(device)                                  # (B, 3, H, W)
    with autocast():
        mean, std = _posterior(model, x)
    out = {"mean": mean, "std": std}
    caps, h = capabilities(model), mean.shape[-1]
    task = caps.family
    if caps.conditioner == "transformer":
        out["tokens"] = model.cond_stage_model.tokenize(batch["caption"]).to(device)
    out["class_label"] = batch["class_label"].to(device)
    out["layout"] = batch["layout"].to(device)
    if task == "upscale-ldm":
        lr = batch["lr"].to(device)
        if lr.shape[-1] != h:
            raise ValueError(f"the low-res image is {lr.shape[-1]} px but the latent is {h}: "
                             "data.sr_factor must equal the first stage's downsampling factor")
        out["lr"] = lr
    if task == "inpaint-sd":
        mask = batch["mask"].to(device)                            # (B, 1, H, W), 1 = repaint
        masked_image = x * (mask < 0.5)                            # the hole is 0 (grey), SD2's layout
        with autocast():
            masked, _ = _posterior(model, masked_image)
        out["mask"] = (F.interpolate(mask, size=mean.shape[-2:], mode="nearest") >= 0.5).float()
        out["masked"] = masked
    return out


class LatentSource:
    """get(counters) -> entries for the sample counters 0, 1, 2, ... a process consumes.

    With a cache, counter c reads pool entry perm_e[c % pool_size] (a new permutation every epoch e),
    encoding it the first time; without one, counter c is data sample c, encoded every time."""

    def __init__(self, data: TrainData, model: LatentDiffusion, device: torch.device, autocast,
                 cache: bool, pool_size: int, seed: int):
        self.data, self.model, self.device, self.autocast = data, model, device, autocast
        self.cache = cache
        self.pool_size, self.seed = pool_size, seed
        self.store: dict[str, torch.Tensor] = {}
        self.filled = torch.zeros(pool_size, dtype=torch.bool)
        self._perm: tuple[int, np.ndarray] | None = None

    def _pool_index(self, counter: int) -> int:
        epoch, i = divmod(counter, self.pool_size)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch, 11]).permutation(self.pool_size))
        return int(self._perm[1][i])

    def get(self, counters) -> dict:
        if not self.cache:
            return encode_batch(self.model, self.data.batch(counters), self.device, self.autocast)
        index = torch.tensor([self._pool_index(c) for c in counters])
        missing = sorted(set(index[~self.filled[index]].tolist()))
        if missing:
            fresh = encode_batch(self.model, self.data.batch(missing), self.device, self.autocast)
            for key, value in fresh.items():
                if key not in self.store:                          # allocate the pool on first use
                    dtype = torch.float16 if value.is_floating_point() and key != "layout" else value.dtype
                    self.store[key] = torch.zeros((self.pool_size, *value.shape[1:]), dtype=dtype, device=self.device)
                self.store[key][missing] = value.to(self.store[key].dtype)
            self.filled[missing] = True
        where = index.to(self.device)
        return {key: (v[where].float() if v.is_floating_point() else v[where]) for key, v in self.store.items()}

    @property
    def cached(self) -> int:
        return int(self.filled.sum())
