"""Tile layouts over an image or latent, and the blending weights of overlapping tiles.

Two layouts:
* `overlapping_tiles`: equal-size tiles that overlap by at least `overlap`, for the UNet; their
  outputs are blended with `blend_weights` (linear ramps across the overlaps) at every sampling step.
* `core_tiles`: a partition of the image into cores, each grown by a context margin `pad`, for the
  VAE; each tile writes only its core, cut out of a decode that saw `pad` pixels of context.
Tile starts are multiples of `align` (the UNet's or VAE's down-sampling factor), so every tile sits
on the same pixel lattice as the whole image and strided convolutions see the same neighbourhoods.
"""

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    y0: int      # the box the network sees: rows y0:y1, columns x0:x1 (end-exclusive)
    x0: int
    y1: int
    x1: int
    cy0: int     # the core this tile owns (cores partition the image); equals the box for UNet tiles
    cx0: int
    cy1: int
    cx1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def _starts(length: int, tile: int, overlap: int, align: int) -> list[int]:
    """Starts of equal tiles covering [0, length), overlapping by >= overlap, spread evenly."""
    if length <= tile:
        return [0]
    stride = max(align, tile - overlap)
    n = math.ceil((length - tile) / stride) + 1
    last = length - tile
    starts = sorted({min(last, round(i * last / (n - 1) / align) * align) for i in range(n)})
    return starts


def overlapping_tiles(height: int, width: int, tile: int, overlap: int, align: int = 1) -> list[Tile]:
    """Equal tiles of min(tile, side) covering (height, width), each pair of neighbours overlapping by
    at least `overlap`. tile and the sides must be multiples of `align`."""
    if tile <= 0 or tile % align:
        raise ValueError(f"tile size must be a positive multiple of {align}; got {tile}.")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile size {tile}); got {overlap}.")
    th, tw = min(tile, height), min(tile, width)
    return [Tile(y, x, y + th, x + tw, y, x, y + th, x + tw)
            for y in _starts(height, th, overlap, align) for x in _starts(width, tw, overlap, align)]


def tile_count(height: int, width: int, tile: int, overlap: int, align: int = 1) -> int:
    """len(overlapping_tiles(...)) without making them (the planner weighs many tile sizes)."""
    th, tw = min(tile, height), min(tile, width)
    return len(_starts(height, th, overlap, align)) * len(_starts(width, tw, overlap, align))


def _cores(length: int, core: int, align: int) -> list[tuple[int, int]]:
    """Split [0, length) into n = ceil(length / core) nearly equal pieces on the `align` lattice."""
    n = max(1, math.ceil(length / core))
    cuts = [min(length, round(i * length / n / align) * align) for i in range(n)] + [length]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def core_tiles(height: int, width: int, core: int, pad: int, align: int = 1) -> list[Tile]:
    """A partition of (height, width) into cores of about `core` (multiples of `align`), each tile
    being its core grown by `pad` (rounded up to `align`) on every side, clipped to the image."""
    if core <= 0:
        raise ValueError(f"tile size must be positive; got {core}.")
    if pad < 0:
        raise ValueError(f"tile padding must be >= 0; got {pad}.")
    pad = math.ceil(pad / align) * align
    tiles = []
    for cy0, cy1 in _cores(height, core, align):
        for cx0, cx1 in _cores(width, core, align):
            tiles.append(Tile(max(0, cy0 - pad), max(0, cx0 - pad), min(height, cy1 + pad),
                              min(width, cx1 + pad), cy0, cx0, cy1, cx1))
    return tiles


def blend_weights(t: Tile, height: int, width: int, overlap: int, device=None,
                  dtype=torch.float32) -> torch.Tensor:
    """(h, w) weights of one overlapping tile: linear ramps from 1/(overlap+1) up to 1 across the
    `overlap` pixels of each side that borders another tile; 1 along the image's own border."""
    def ramp(n: int, start_inner: bool, end_inner: bool) -> torch.Tensor:
        r = torch.ones(n, dtype=dtype, device=device)
        k = min(overlap, n // 2)
        if k > 0:
            up = torch.arange(1, k + 1, dtype=dtype, device=device) / (k + 1)
            if start_inner:
                r[:k] = up
            if end_inner:
                r[n - k:] = torch.minimum(r[n - k:], up.flip(0))
        return r

    wy = ramp(t.height, t.y0 > 0, t.y1 < height)
    wx = ramp(t.width, t.x0 > 0, t.x1 < width)
    return wy[:, None] * wx[None, :]                                          # (h, w)
