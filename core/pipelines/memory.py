"""Memory planning for tiled work: predict the peak memory of one tile, pick the largest tile that
fits, and retry with smaller tiles when the device runs out anyway.

The predictions count activation bytes from the model's config (the weights are already resident
and not counted):
* UNet, per evaluation of a (B, C, h, w) tile: the skip connections the encoder half keeps for the
  decoder half (sum over levels of (blocks + 1) * channels * pixels), plus a working set of about
  WORK_FACTOR times the largest level's activation (ResBlock temporaries, the concatenated skip,
  the transformer's GEGLU feed-forward at 8x width), plus the self-attention matrices of the
  largest attention level: B * heads * tokens^2, twice (scores and softmax).
* VAE decoder / encoder: about VAE_WORK_FACTOR full activations of its widest full-size level, plus
  the mid-block attention over ALL latent pixels of the tile: 2 * tokens^2. This term is quadratic
  in the tile area and dominates beyond ~64x64 latents (measured on CPU, where SDPA takes the math
  path for the VAE's single 512-wide head: a 90x90 latent decode of the default f=4 VAE peaks at
  +616 MB, of which 525 MB are the two 8100^2 matrices).
Attention is counted as the math path materialises it; fused CUDA kernels need less, so the
predictions are on the safe side there. `run_with_oom_retry` covers what they miss.
"""

import math
import warnings

import torch

WORK_FACTOR = 16            # UNet working set, in units of the largest level activation
VAE_WORK_FACTOR = 5         # VAE working set, in units of the largest activation
SAFETY = 0.6                # use at most this fraction of the free memory


def available_memory(device) -> int:
    """Free bytes on `device`: cudaMemGetInfo for CUDA (plus what torch's cache could give back),
    MemAvailable from /proc/meminfo for the CPU (a fixed 8 GiB when that cannot be read)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def _element_size(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _attention_bytes(batch: int, heads: int, tokens: int, elem: int) -> int:
    """Scores and softmax of one self-attention, as the math path materialises them."""
    return 2 * batch * heads * tokens * tokens * elem


def unet_peak_bytes(m, height: int, width: int, batch: int, dtype=None) -> int:
    """Predicted activation peak of one UNet forward on a (batch, C, height, width) latent tile, for a
    model or its LatentDiffusionConfig (then give dtype)."""
    cfg = getattr(m, "config", m).unet
    elem = _element_size(dtype or m.dtype)
    nrb = cfg.num_res_blocks
    nrb = list(nrb) if isinstance(nrb, (list, tuple)) else [nrb] * len(cfg.channel_mult)
    skips, widest, attention = cfg.model_channels * height * width, 0, 0
    for level, mult in enumerate(cfg.channel_mult):
        pixels = math.ceil(height / 2 ** level) * math.ceil(width / 2 ** level)
        channels = cfg.model_channels * mult
        skips += (nrb[level] + 1) * channels * pixels
        widest = max(widest, channels * pixels)
        if 2 ** level in cfg.attention_resolutions:
            heads = cfg.num_heads if cfg.num_heads > 0 else max(1, channels // cfg.num_head_channels)
            attention = max(attention, _attention_bytes(batch, heads, pixels, elem))
    return int(elem * batch * (skips + WORK_FACTOR * widest) + attention)


def unet_macs(m, height: int, width: int) -> int:
    """Multiply-accumulates of one UNet forward on a (1, C, height, width) latent tile, from the
    config (a model or its LatentDiffusionConfig): per level, its ResBlocks' 3x3 convolutions (about
    18 ch^2 per pixel in the encoder half, 29 ch^2 in the decoder half, whose input carries the
    skip) and the down/up-sampling convs; per attention block 4 ch^2 (legacy) or 20 ch^2
    (transformer) per token for the projections and feed-forward, plus the 2 tokens^2 ch of the
    products, which make large tiles dear. A plan's relative cost, not a precise count."""
    cfg = getattr(m, "config", m).unet
    nrb = cfg.num_res_blocks
    nrb = list(nrb) if isinstance(nrb, (list, tuple)) else [nrb] * len(cfg.channel_mult)
    last = len(cfg.channel_mult) - 1
    macs = 9 * (cfg.in_channels + cfg.out_channels) * cfg.model_channels * height * width
    for level, mult in enumerate(cfg.channel_mult):
        px, ch = math.ceil(height / 2 ** level) * math.ceil(width / 2 ** level), cfg.model_channels * mult
        convs = 18 * nrb[level] + 29 * (nrb[level] + 1) + (18 if level < last else 18 * 2)   # last: middle
        macs += convs * ch * ch * px
        blocks = (2 * nrb[level] + 1) * (2 ** level in cfg.attention_resolutions) + (level == last)
        projections = 20 if cfg.use_spatial_transformer else 4
        macs += blocks * (projections * ch * ch * px + 2 * px * px * ch)
    return int(macs)


def tile_cost(m, height: int, width: int, tiles: int, batch: int = 1) -> int:
    """Relative time (MACs) of one network evaluation over `tiles` tiles of height x width, `batch`
    tiles per UNet call: their work plus a fixed cost per call as large as a 32x32 tile's work
    (measured on a 2-core CPU, one thread: a 32x32 tile takes 40 ms, a 64x64 one 100 ms)."""
    return tiles * unet_macs(m, height, width) + -(-tiles // batch) * unet_macs(m, 32, 32)


def _vae_widest(ddconfig, height_px: int, width_px: int) -> int:
    """Largest channels x pixels of any VAE level, the up-sampled input of each level included."""
    widest, mults = 0, ddconfig.ch_mult
    for level, mult in enumerate(mults):
        pixels = math.ceil(height_px / 2 ** level) * math.ceil(width_px / 2 ** level)
        wider = max(mult, mults[level + 1] if level + 1 < len(mults) else mult)
        widest = max(widest, ddconfig.ch * wider * pixels)
    return widest


def _vae_attention(ddconfig, height_px: int, width_px: int, batch: int, elem: int, box: int | None = None) -> int:
    """The mid block's attention over every latent pixel (and any attn_resolutions level); with
    attention windows, over one window's box of at most box x box pixels of its level."""
    if ddconfig.attn_type == "none":
        return 0
    f = ddconfig.downsample_factor
    sides = [(math.ceil(height_px / f), math.ceil(width_px / f))]
    for level in range(len(ddconfig.ch_mult)):
        if ddconfig.resolution // 2 ** level in ddconfig.attn_resolutions:
            sides.append((math.ceil(height_px / 2 ** level), math.ceil(width_px / 2 ** level)))
    tokens = max(min(h, box or h) * min(w, box or w) for h, w in sides)
    return _attention_bytes(batch, 1, tokens, elem)


def vae_decode_peak_bytes(m, height: int, width: int, batch: int, dtype=None, window_box: int | None = None) -> int:
    """Predicted activation peak of decoding a (batch, C, height, width) latent tile; window_box:
    the side of an attention window's box (window + 2 margin), None = attention over the tile.
    m: a model, or its LatentDiffusionConfig (then give dtype)."""
    dd = getattr(m, "config", m).first_stage.ddconfig
    f = dd.downsample_factor
    elem = _element_size(dtype or m.dtype)
    return int(elem * batch * VAE_WORK_FACTOR * _vae_widest(dd, height * f, width * f)
               + _vae_attention(dd, height * f, width * f, batch, elem, window_box))


def vae_encode_peak_bytes(m, height_px: int, width_px: int, batch: int, dtype=None) -> int:
    """Predicted activation peak of encoding a (batch, 3, height_px, width_px) image tile."""
    dd = m.config.first_stage.ddconfig
    elem = _element_size(dtype or m.dtype)
    return int(elem * batch * VAE_WORK_FACTOR * _vae_widest(dd, height_px, width_px)
               + _vae_attention(dd, height_px, width_px, batch, elem))


def plan_tile(predict, budget: int, align: int, largest: int, smallest: int | None = None) -> int:
    """The largest tile side t (a multiple of `align`, <= `largest`) with predict(t) <= budget.

    predict(t) -> bytes for a t x t tile. Returns `smallest` (default align) when nothing fits, and
    lets the out-of-memory retry have the last word.
    """
    smallest = smallest or align
    t = max(smallest, largest // align * align)
    while t > smallest and predict(t) > budget:
        t -= align
    return t


def budget_bytes(device, budget: int | None = None) -> int:
    """The memory a tile may use: `budget` if given, else SAFETY x the free memory."""
    if budget is not None:
        return int(budget)
    return int(SAFETY * available_memory(device))


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA), or a RuntimeError saying so (CPU allocator, MPS, older torch)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)


def release_memory(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def run_with_oom_retry(fn, tile: int, align: int, smallest: int | None = None, what: str = "tile",
                       device="cpu"):
    """fn(tile) -> result; on out-of-memory, halve the tile (on the `align` lattice) and try again,
    down to `smallest`, then raise a MemoryError saying what to do."""
    smallest = smallest or align
    while True:
        try:
            return fn(tile)
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            release_memory(device)
            if tile <= smallest:
                raise MemoryError(f"out of memory even with {what} size {tile}; free memory (close other "
                                  "programs, use a smaller dtype such as float16) or use a smaller image."
                                  ) from exc
            smaller = max(smallest, tile // 2 // align * align)
            warnings.warn(f"out of memory with {what} size {tile}; retrying with {smaller}", stacklevel=2)
            tile = smaller
