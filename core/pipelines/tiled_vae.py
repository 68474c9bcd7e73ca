"""Tiled VAE encode/decode whose GroupNorm statistics are those of the WHOLE image.

Cutting an image into tiles and running the VAE on each is not enough: every GroupNorm would
normalise each tile by that tile's own mean and variance, so a dark tile and a bright tile come out
in different tones and the grid shows. Here all tiles share one set of statistics, gathered in
two kinds of passes:

1. statistics passes, one per GroupNorm, in execution order: every statistics tile runs up to the
   next GroupNorm whose statistics are still unknown (earlier ones already use the shared values),
   adds the per-(image, group) count, mean and M2 of the part of its input inside the tile's core,
   and stops there (an early exit, so a pass costs only the layers before that norm). The sums are
   combined with Chan et al.'s parallel variance into that norm's shared mean and variance;
2. the final pass: every tile runs through, all GroupNorms using the shared statistics, and writes
   its core into the output.
Every gathered statistic is computed from exactly the activations the final pass will see, so the
scheme is self-consistent. (A cheaper "gather everything in one pass with tile-local norms, then
normalise" is NOT: deep norms then receive inputs that differ from those their statistics were
measured on, and on badly conditioned networks the mismatch compounds layer by layer.)
When the statistics tiles are all the tiles and the context margin covers the receptive field,
the result equals the untiled one to float error (tests check this). For many tiles, an evenly
spread subset (`stat_tiles`) estimates the statistics, bounding the extra cost. Peak memory is that
of one padded tile; the mid-block attention sees only its tile plus the margin.
"""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from core.models.autoencoder import AttnBlock
from core.pipelines.tiles import core_tiles


class _Gathered(Exception):
    """Raised by the GroupNorm being measured, to skip the rest of the forward pass."""


class SharedGroupNorms:
    """While entered, the nn.GroupNorms in `module` normalise with `stats` once they have them; in
    gathering mode the first one without statistics measures its input's core region and stops.

    window: the VAE's self-attention blocks (AttnBlock) attend within windows of `window` pixels
    of their own resolution, each seeing `margin` more on every side (None: over the whole input).
    Full attention over a 256x256 latent is 65536^2 products; windows make it linear in the area.
    The block's GroupNorm still normalises with the statistics of its WHOLE input (no seams)."""

    def __init__(self, module: nn.Module, window: int | None = None, margin: int = 0):
        self.norms = [mod for mod in module.modules() if isinstance(mod, nn.GroupNorm)]
        self.attentions = [mod for mod in module.modules() if isinstance(mod, AttnBlock)] if window else []
        self.window, self.margin = window, margin
        self.stats: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}   # (B, G) mean, var
        self.gathering = False
        self.target: nn.GroupNorm | None = None
        self._acc = None
        self.core = None            # (cy0, cy1, cx0, cx1, TH, TW): the core inside the current tile

    def __enter__(self):
        for norm in self.norms:
            norm.forward = partial(self._forward, norm)          # instance attribute shadows the class's
        for block in self.attentions:
            block.forward = partial(self._attend, block)
        return self

    def __exit__(self, *exc):
        for mod in self.norms + self.attentions:
            if "forward" in mod.__dict__:
                del mod.forward
        return False

    def _attend(self, block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
        """block(x) with attention inside windows: each window's box runs the block, its core is kept."""
        H, W = x.shape[-2:]
        if max(H, W) <= self.window + 2 * self.margin:
            return AttnBlock.forward(block, x)
        own = block.norm not in self.stats            # untiled: the norm's statistics from this input
        if own:
            if self.gathering:
                return block.norm(x)                   # the norm being measured: raises _Gathered
            var, mean = torch.var_mean(x.float().reshape(x.shape[0], block.norm.num_groups, -1), dim=-1,
                                       correction=0)
            self.stats[block.norm] = (mean, var)                                       # (B, G)
        try:
            out = torch.empty_like(x)
            for t in core_tiles(H, W, self.window, self.margin):
                o = AttnBlock.forward(block, x[..., t.y0:t.y1, t.x0:t.x1])
                oy, ox = t.cy0 - t.y0, t.cx0 - t.x0
                out[..., t.cy0:t.cy1, t.cx0:t.cx1] = o[..., oy:oy + t.cy1 - t.cy0, ox:ox + t.cx1 - t.cx0]
            return out
        finally:
            if own:
                del self.stats[block.norm]

    def fix_target(self) -> None:
        """The measured norm's gathered (count, mean, M2) become its shared mean and variance."""
        n, mean, m2 = self._acc
        self.stats[self.target] = (mean, m2 / n)
        self.target, self._acc = None, None

    def _gather(self, norm: nn.GroupNorm, x: torch.Tensor) -> None:
        B = x.shape[0]
        h, w = x.shape[-2:]
        cy0, cy1, cx0, cx1, TH, TW = self.core
        region = x[:, :, cy0 * h // TH:cy1 * h // TH, cx0 * w // TW:cx1 * w // TW]
        region = region.float().reshape(B, norm.num_groups, -1)               # (B, G, n)
        var, mean = torch.var_mean(region, dim=-1, correction=0)             # (B, G)
        n_b, mean_b = float(region.shape[-1]), mean.double()
        m2_b = var.double() * n_b
        if self._acc is None:
            self._acc = [n_b, mean_b, m2_b]
            return
        n_a, mean_a, m2_a = self._acc
        n = n_a + n_b                                                        # Chan et al. 1979
        delta = mean_b - mean_a
        self._acc = [n, mean_a + delta * n_b / n, m2_a + m2_b + delta ** 2 * n_a * n_b / n]

    def _forward(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if norm not in self.stats:
            if self.gathering and self.target in (None, norm):
                self.target = norm
                self._gather(norm, x)
                raise _Gathered
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        B, C, h, w = x.shape
        mean, var = self.stats[norm]
        mean = mean.to(x.device, torch.float32)[..., None]                  # (B, G, 1)
        rstd = torch.rsqrt(var.to(x.device, torch.float32) + norm.eps)[..., None]
        y = ((x.float().reshape(B, norm.num_groups, -1) - mean) * rstd).reshape(B, C, h, w)
        if norm.affine:
            y = y * norm.weight.float()[None, :, None, None] + norm.bias.float()[None, :, None, None]
        return y.to(x.dtype)


def spread(items: list, k: int | None) -> list:
    """k items evenly spread over the list (all of them when k is None or >= len)."""
    if k is None or k >= len(items):
        return list(items)
    k = max(1, k)
    return [items[round(i * (len(items) - 1) / max(k - 1, 1))] for i in range(k)]


@torch.no_grad()
def tiled_apply(fn, module: nn.Module, x: torch.Tensor, scale: tuple[int, int], tile: int, pad: int,
                align: int = 1, stat_tiles: int | None = None, on_tile=None, window: int | None = None,
                margin: int = 0) -> torch.Tensor:
    """Apply fn (a VAE encoder or decoder whose GroupNorms live in `module`) to x (B, C, H, W) tile
    by tile; the output is scale = (num, den) times the input's size (decoder (f, 1), encoder (1, f)).

    tile, pad: core size and context margin in input pixels (multiples of `align`, which must make
    every tile boundary land on whole output pixels). stat_tiles: how many tiles (evenly spread)
    measure the statistics; None = all (exact). on_tile(done, total): after each tile run.
    window, margin: attention windows inside each tile (SharedGroupNorms).
    """
    num, den = scale
    B, _, H, W = x.shape
    tiles = core_tiles(H, W, tile, pad, align)
    measured = spread(tiles, stat_tiles) if len(tiles) > 1 else []
    n_norms = sum(isinstance(mod, nn.GroupNorm) for mod in module.modules())
    total, done = len(measured) * n_norms + len(tiles), 0

    def run(tl):
        norms.core = (tl.cy0 - tl.y0, tl.cy1 - tl.y0, tl.cx0 - tl.x0, tl.cx1 - tl.x0, tl.height, tl.width)
        return fn(x[..., tl.y0:tl.y1, tl.x0:tl.x1])                           # (B, C', h*s, w*s)

    out = None
    with SharedGroupNorms(module, window, margin) as norms:
        # 1. One statistics pass per GroupNorm, each stopping at that norm.
        norms.gathering = bool(measured)
        while norms.gathering:
            for tl in measured:
                try:
                    run(tl)
                    norms.gathering = False                # ran to the end: every norm has statistics
                    break
                except _Gathered:
                    done += 1
                    if on_tile is not None:
                        on_tile(done, total)
            if norms.gathering:
                norms.fix_target()
        # 2. The final pass with the shared statistics.
        for tl in tiles:
            o = run(tl)
            if out is None:
                out = torch.empty(B, o.shape[1], H * num // den, W * num // den, device=o.device,
                                  dtype=torch.float32)
            oy, ox = (tl.cy0 - tl.y0) * num // den, (tl.cx0 - tl.x0) * num // den
            hh, ww = (tl.cy1 - tl.cy0) * num // den, (tl.cx1 - tl.cx0) * num // den
            y0, x0 = tl.cy0 * num // den, tl.cx0 * num // den
            out[..., y0:y0 + hh, x0:x0 + ww] = o[..., oy:oy + hh, ox:ox + ww].float()
            done += 1
            if on_tile is not None:
                on_tile(min(done, total), total)
    return out
