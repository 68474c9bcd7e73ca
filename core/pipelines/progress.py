"""Progress reports handed to a pipeline's `callback`, with a cheap preview image.

The preview is a linear map latent -> RGB (one matrix and a bias per model), the trick web UIs
call "approximate" previews: each latent pixel becomes one coloured pixel, no decoder pass. The map
is fitted once per model by least squares against the decoder itself on a small random latent, so
it works for any first stage (KL-f4, f8, VQ...) without a hand-made table.
"""

import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

_PREVIEW_MAPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@torch.no_grad()
def latent_rgb_map(m) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, 3) weights and (3,) bias with RGB in [-1, 1] ~ z @ W + b, per latent pixel (cached per model)."""
    if m in _PREVIEW_MAPS:
        return _PREVIEW_MAPS[m]
    f = m.config.first_stage.ddconfig.downsample_factor
    C = m.config.channels
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, C, 8, 8, generator=g)                                  # (2, C, 8, 8)
    param = next(m.first_stage_model.parameters())
    rgb = m.decode_first_stage(z.to(param.device, param.dtype)).float().cpu()  # (2, 3, 8f, 8f)
    rgb = F.avg_pool2d(rgb, f)                                                # (2, 3, 8, 8)
    X = torch.cat([z.permute(0, 2, 3, 1).reshape(-1, C), torch.ones(2 * 64, 1)], dim=1)   # (128, C+1)
    Y = rgb.permute(0, 2, 3, 1).reshape(-1, 3)                                # (128, 3)
    sol = torch.linalg.lstsq(X.double(), Y.double()).solution.float()         # (C+1, 3)
    _PREVIEW_MAPS[m] = (sol[:C], sol[C])
    return _PREVIEW_MAPS[m]


def latent_preview(m, z: torch.Tensor) -> Image.Image:
    """(B, C, h, w) latent -> a (h, w) RGB PIL preview of its first image."""
    weight, bias = latent_rgb_map(m)
    rgb = z[0].detach().float().cpu().permute(1, 2, 0) @ weight + bias        # (h, w, 3)
    a = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(a), mode="RGB")


@dataclass
class Progress:
    """One progress report. stage: "encode", "sample" or "decode". `step` of `total`: steps (or VAE
    passes) COMPLETED in this stage; `tile` of `tiles` (1-based): the tile just finished within the
    step in progress (None for untiled work and for end-of-step reports); `image` (0-based) of
    `images`: the picture being made."""
    stage: str
    step: int
    total: int
    image: int = 0
    images: int = 1
    tile: int | None = None
    tiles: int | None = None
    latent: torch.Tensor | None = field(default=None, repr=False)       # pred_x0 while sampling
    model: object = field(default=None, repr=False)

    @property
    def fraction(self) -> float:
        """Overall completion of the sampling work in [0, 1] (a progress bar's position)."""
        done = self.step + (self.tile / self.tiles if self.tile is not None and self.tiles else 0.0)
        within = done / max(self.total, 1)
        return min(1.0, (self.image + within) / max(self.images, 1))

    def preview(self) -> Image.Image | None:
        """A cheap RGB preview of the current estimate (None outside sampling)."""
        if self.latent is None or self.model is None:
            return None
        return latent_preview(self.model, self.latent)
