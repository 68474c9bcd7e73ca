"""Tiled denoising as a denoiser wrapper: `wrap=tiled(...)` runs the network tile by tile.

Because the UNet is convolutional, a latent of any size can be denoised in overlapping tiles. The
tiles must AGREE, or seams appear: every network evaluation runs all tiles and blends their
outputs (eps or v) in the overlaps with linear ramps, so the sampler steps one consistent latent
(the MultiDiffusion idea, Bar-Tal et al. 2023; CompVis' LDM-SR notebook folds its tiles with a
border weighting the same way, FACTS.md section 9). Peak memory is one tile batch's. Out of memory
inside an evaluation halves the tile and redoes that evaluation (earlier steps stay valid).

Larger than trained (`native_tiling`, off by default): text, class, layout and unconditional models
asked for a size above their training size can denoise the WHOLE latent with tiles of the training size, overlapping by
half a tile and blended every step, so each UNet call sees the scale it learned while the sampler
steps one image (the paper's Sec. 4.3.2 samples larger-than-trained images convolutionally, in one
piece; MultiDiffusion's overlapping windows keep the objects at their trained scale). A text
prompt is repeated in every tile; a layout is not: each tile is conditioned on the boxes inside it,
in its own frame (core/pipelines/conditioning.py layout_encoder), so the tiles draw one scene.
"""
import torch

from core.capabilities import capabilities
from core.pipelines.memory import run_with_oom_retry
from core.pipelines.tiles import blend_weights, overlapping_tiles


class TileState:
    """What the wrapper did, for progress, tests and benches: the tile size in use (after any
    out-of-memory retry) and the largest (h, w) the network was given."""

    def __init__(self, tile: int):
        self.tile, self.max_tile = tile, (0, 0)
        self.weights = {}                    # (tile box, H, W, overlap, device) -> blend ramp, made once

    def weight(self, tl, H: int, W: int, overlap: int, device) -> torch.Tensor:
        key = (tl, H, W, overlap, device)
        if key not in self.weights:
            self.weights[key] = blend_weights(tl, H, W, overlap, device=device)   # (th, tw)
        return self.weights[key]


def tiled(tile: int, overlap: int, align: int, state: TileState | None = None, tile_batch: int = 1,
          on_tile=None, tile_cond=None):
    """wrap(model_fn) -> model_fn over tiles of `tile` latent pixels overlapping by `overlap` (both
    multiples of `align`); c_concat tensors are cut like x, other conditioning is repeated, unless
    tile_cond(cond, tile, H, W) gives each tile its own (a layout's boxes in the tile's frame).
    on_tile(done, total) after each tile batch; `state` records the tile size and the largest tile."""
    state = state or TileState(tile)

    def wrap(model_fn):
        def tiled_fn(x, t, cond):                                             # x (B, C, H, W)
            def one_pass(size):
                state.tile = size
                return _blend(model_fn, x, t, cond, size, min(overlap, max(0, size - align)), align,
                              tile_batch, state, on_tile, tile_cond)
            return run_with_oom_retry(one_pass, state.tile, align, what="UNet tile", device=x.device)
        return tiled_fn
    return wrap


def native_tiling(m, width: int, height: int, enabled: bool = False, tile_cond=None):
    """(wrap, recorded) for noise-to-image sampling at width x height px: (None, None) up to the
    model's native size (nothing changes there) and when not enabled (one piece, as the
    convolutional UNet allows and AUTOMATIC1111 does: a text model tiled draws its prompt in every
    tile); enabled above the native size, a tiling wrapper with tiles of the native latent size
    overlapping by half a tile and the parameter recorded ("64 px tiles overlapping 32 px");
    tile_cond: as tiled()'s."""
    if not isinstance(enabled, bool):
        raise ValueError(f"native_tiling must be True (tile above the model's native size) or False; got {enabled!r}.")
    caps = capabilities(m)
    if not enabled or max(width, height) <= caps.native_size:
        return None, None
    align = caps.grid // caps.factor                                          # the UNet's down-sampling
    tile = max(align, caps.native_size // caps.factor // align * align)       # latent pixels
    overlap = tile // 2 // align * align
    h, w = height // caps.factor, width // caps.factor
    tile_batch = max(1, h * w // (tile * tile))           # a UNet call holds about the untiled latent's area
    recorded = f"{tile * caps.factor} px tiles overlapping {overlap * caps.factor} px"
    return tiled(tile, overlap, align, TileState(tile), tile_batch, tile_cond=tile_cond), recorded


def _blend(model_fn, x, t, cond, tile, overlap, align, tile_batch, state, on_tile, tile_cond=None):
    B, _, H, W = x.shape
    tiles = overlapping_tiles(H, W, tile, overlap, align)
    out = torch.zeros_like(x, dtype=torch.float32)
    weight_sum = torch.zeros(1, 1, H, W, device=x.device)
    for k in range(0, len(tiles), tile_batch):
        group = tiles[k:k + tile_batch]
        xs = torch.cat([x[..., tl.y0:tl.y1, tl.x0:tl.x1] for tl in group])          # (g*B, C, th, tw)
        c = _slice_cond(cond, group, H, W) if tile_cond is None else \
            torch.cat([tile_cond(cond, tl, H, W) for tl in group])
        o = model_fn(xs, torch.cat([t] * len(group)), c)
        state.max_tile = max(state.max_tile, tuple(xs.shape[-2:]))
        for j, tl in enumerate(group):
            w = state.weight(tl, H, W, overlap, x.device)                          # (th, tw)
            out[..., tl.y0:tl.y1, tl.x0:tl.x1] += o[j * B:(j + 1) * B].float() * w
            weight_sum[..., tl.y0:tl.y1, tl.x0:tl.x1] += w
        if on_tile is not None:
            on_tile(min(k + len(group), len(tiles)), len(tiles))
    return (out / weight_sum).to(x.dtype)


def _slice_cond(cond, group, H: int, W: int):
    """c_concat tensors (B, c, H, W) are cut like x; the rest (text, noise level) is repeated. A
    conditioning that is not a dict (m.apply_model puts it under the model's one key): None stays
    None (unconditional), a (B, c, H, W) tensor at latent size is cut, anything else is repeated."""
    if cond is None:
        return None
    if not isinstance(cond, dict):
        items = cond if isinstance(cond, (list, tuple)) else [cond]
        sliced = [_cut(c, group, H, W) if c.dim() == 4 and tuple(c.shape[-2:]) == (H, W) else _repeat(c, len(group))
                  for c in items]
        return sliced if isinstance(cond, (list, tuple)) else sliced[0]
    return {key: [_cut(c, group, H, W) for c in value] if key == "c_concat" else _repeat(value, len(group))
            for key, value in cond.items()}


def _cut(c, group, H: int, W: int):
    if tuple(c.shape[-2:]) != (H, W):
        raise ValueError(f"c_concat is {tuple(c.shape[-2:])} but the latent is {(H, W)}; "
                         "concatenated conditions must be at latent resolution.")
    return torch.cat([c[..., tl.y0:tl.y1, tl.x0:tl.x1] for tl in group])


def _repeat(value, n: int):
    if isinstance(value, (list, tuple)):
        return [_repeat(v, n) for v in value]
    return None if value is None else torch.cat([value] * n)
