"""Tiled denoising: a stand-in for the model whose `apply_model` runs the UNet tile by tile.

Because the UNet is convolutional, a latent of any size can be denoised in overlapping tiles. The
tiles must AGREE, or seams appear: here every network evaluation of the sampler runs all tiles and
blends their outputs (eps or v) in the overlaps with linear ramps, so the sampler steps one
consistent latent (the MultiDiffusion idea, Bar-Tal et al. 2023; CompVis' LDM-SR notebook folds
its tiles with a border weighting the same way, FACTS.md section 9). `core.samplers.sample` never
knows: it is given this object instead of the model.

Peak memory is that of one tile batch, whatever the latent size. Out of memory inside an
evaluation halves the tile size and redoes that evaluation (earlier steps stay valid).
"""

import torch

from core.pipelines.defaults import unet_factor
from core.pipelines.memory import run_with_oom_retry
from core.pipelines.tiles import blend_weights, overlapping_tiles


class TiledModel:
    """Looks like a LatentDiffusion to the sampler (apply_model, alphas_cumprod, parameterization,
    parameters()); apply_model splits x (B, C, H, W) into tiles of `tile` x `tile` latent pixels
    overlapping by `overlap`, with c_concat sliced alike.

    on_tile(done, total): called after each tile batch of an evaluation.
    max_tile: the largest (h, w) ever given to the UNet (for tests and benchmarks).
    """

    def __init__(self, m, tile: int, overlap: int, tile_batch: int = 1, on_tile=None):
        self.m = m
        self.alphas_cumprod = m.alphas_cumprod
        self.parameterization = m.parameterization
        self.align = unet_factor(m)
        if tile % self.align or tile <= 0:
            raise ValueError(f"tile must be a positive multiple of {self.align} latent pixels for this "
                             f"UNet; got {tile}.")
        self.tile = tile
        self.overlap = overlap
        self.tile_batch = max(1, int(tile_batch))
        self.on_tile = on_tile
        self.max_tile = (0, 0)
        self._weights = {}

    @property
    def num_timesteps(self) -> int:
        return self.m.num_timesteps

    def parameters(self):
        return self.m.parameters()

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        return run_with_oom_retry(lambda tile: self._apply(x, t, cond, tile), self.tile, self.align,
                                  what="UNet tile", device=x.device)

    # ---------------------------------------------------------------------------------------------
    def _as_dict(self, cond) -> dict:
        if isinstance(cond, dict):
            return cond
        key = "c_concat" if self.m.conditioning_key == "concat" else "c_crossattn"
        return {key: cond if isinstance(cond, list) else [cond]} if cond is not None else {}

    @staticmethod
    def _slice_cond(cond: dict, group, H: int, W: int) -> dict:
        """c_concat tensors (B, c, H, W) are cut like x; the rest (text, noise level) is repeated."""
        out = {}
        for key, value in cond.items():
            items = value if isinstance(value, list) else [value]
            sliced = []
            for c in items:
                if c is None:
                    sliced.append(None)
                elif key == "c_concat":
                    if tuple(c.shape[-2:]) != (H, W):
                        raise ValueError(f"c_concat is {tuple(c.shape[-2:])} but the latent is {(H, W)}; "
                                         "concatenated conditions must be at latent resolution.")
                    sliced.append(torch.cat([c[..., tl.y0:tl.y1, tl.x0:tl.x1] for tl in group]))
                else:
                    sliced.append(torch.cat([c] * len(group)))
            out[key] = sliced if isinstance(value, list) else sliced[0]
        return out

    def _tile_weight(self, tl, H, W, overlap, device):
        key = (tl, H, W, overlap, device)
        if key not in self._weights:
            self._weights[key] = blend_weights(tl, H, W, overlap, device=device)
        return self._weights[key]

    def _apply(self, x, t, cond, tile):
        self.tile = tile
        B, _, H, W = x.shape
        cond = self._as_dict(cond)
        overlap = min(self.overlap, max(0, tile - self.align))
        tiles = overlapping_tiles(H, W, tile, overlap, self.align)
        out = weight_sum = None
        for k in range(0, len(tiles), self.tile_batch):
            group = tiles[k:k + self.tile_batch]
            xs = torch.cat([x[..., tl.y0:tl.y1, tl.x0:tl.x1] for tl in group])    # (g*B, C, th, tw)
            o = self.m.apply_model(xs, torch.cat([t] * len(group)), self._slice_cond(cond, group, H, W))
            self.max_tile = max(self.max_tile, tuple(xs.shape[-2:]))
            if len(tiles) == 1:
                out = o
            else:
                if out is None:
                    out = torch.zeros(B, o.shape[1], H, W, device=x.device, dtype=torch.float32)
                    weight_sum = torch.zeros(1, 1, H, W, device=x.device, dtype=torch.float32)
                for j, tl in enumerate(group):
                    w = self._tile_weight(tl, H, W, overlap, x.device)               # (th, tw)
                    out[..., tl.y0:tl.y1, tl.x0:tl.x1] += o[j * B:(j + 1) * B].float() * w
                    weight_sum[..., tl.y0:tl.y1, tl.x0:tl.x1] += w
            if self.on_tile is not None:
                self.on_tile(min(k + len(group), len(tiles)), len(tiles))
        if len(tiles) == 1:
            return out
        return (out / weight_sum).to(x.dtype)
