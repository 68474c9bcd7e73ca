"""Vector quantiser of the VQ autoencoders (VQ-GAN, Esser et al. 2021; van den Oord et al. 2017).

Facts from CompVis taming-transformers `taming/modules/vqvae/quantize.py` (VectorQuantizer2, which
latent-diffusion's VQModel uses with legacy=True, no remap, beta 0.25):
* the codebook is `embedding`, an nn.Embedding(n_embed, embed_dim) -> key `quantize.embedding.weight`;
* the nearest code minimises ||z - e||^2, written ||z||^2 + ||e||^2 - 2 z.e;
* the loss is the codebook + commitment pair, with the "legacy" weighting that taming keeps for
  backwards compatibility (its comment: beta ended up on the wrong term):
      legacy:     mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2)
      non-legacy: beta * mean((sg[z_q] - z)^2) + mean((z_q - sg[z])^2)
  Every released LDM VQ model was trained with legacy=True;
* the straight-through estimator lets the decoder's gradient reach the encoder.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# Rows of the (N, n_embed) distance matrix computed at once. A 1024x1024 image through VQ-f4 has
# N = 65536 latent vectors; with 8192 codes the full matrix would take 2 GiB in float32.
_DISTANCE_CHUNK = 4096


class VectorQuantizer(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25, legacy: bool = True):
        super().__init__()
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.beta = beta
        self.legacy = legacy
        self.embedding = nn.Embedding(n_embed, embed_dim)      # codebook e: (n_embed, embed_dim)
        # taming's init: uniform in [-1/n_embed, 1/n_embed]
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    @torch.no_grad()
    def nearest_codes(self, z: Tensor) -> Tensor:
        """Index of the nearest codebook row for every vector: (B, C, H, W) -> (B, H, W) int64."""
        if z.dim() != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(
                f"VectorQuantizer expects (B, {self.embed_dim}, H, W) latents, "
                f"got {tuple(z.shape)}"
            )
        b, c, h, w = z.shape
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, c)          # (N, C), N = B*H*W
        e = self.embedding.weight.to(z_flat.dtype)             # (n_embed, C)
        e_sq = e.pow(2).sum(dim=1)                             # (n_embed,)
        indices = torch.empty(z_flat.shape[0], dtype=torch.long, device=z.device)
        for start in range(0, z_flat.shape[0], _DISTANCE_CHUNK):
            zc = z_flat[start:start + _DISTANCE_CHUNK]         # (n, C)
            # ||z - e||^2 = ||z||^2 + ||e||^2 - 2 z.e, as in the reference (same rounding)
            d = zc.pow(2).sum(dim=1, keepdim=True) + e_sq - 2.0 * (zc @ e.t())   # (n, n_embed)
            indices[start:start + _DISTANCE_CHUNK] = d.argmin(dim=1)
        return indices.view(b, h, w)

    def embed_code(self, indices: Tensor) -> Tensor:
        """Codebook rows for integer codes: (B, H, W) -> (B, C, H, W)."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Quantise z: (B, C, H, W) -> (z_q (B, C, H, W), loss (scalar), indices (B, H, W))."""
        indices = self.nearest_codes(z)                        # (B, H, W)
        z_q = self.embed_code(indices).to(z.dtype)             # (B, C, H, W)

        commitment = F.mse_loss(z_q.detach(), z)               # pulls the encoder to its code
        codebook = F.mse_loss(z_q, z.detach())                 # pulls the code to the encoder
        if self.legacy:
            loss = commitment + self.beta * codebook
        else:
            loss = self.beta * commitment + codebook

        # Straight-through estimator: the value is z_q, the gradient w.r.t. z is the identity and
        # the codebook gets none (it learns only from `loss`). Written sg[z_q] + (z - sg[z])
        # rather than taming's z + sg[z_q - z]: same gradients, but the value is exactly the
        # codebook row (taming's form is off by rounding, ~1 ulp).
        z_q = z_q.detach() + (z - z.detach())
        return z_q, loss, indices
