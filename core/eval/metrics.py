"""Image quality metrics: PSNR (the one in the project: evaluations and training logs) and SSIM, on RGB
images (0-255, all three channels, no border shaved), as the super-resolution literature reports them.

SSIM is Wang, Bovik, Sheikh & Simoncelli 2004 with an 11-tap Gaussian window, sigma 1.5,
K1 = 0.01, K2 = 0.03, over 'valid' windows only (as their reference MATLAB code), averaged over
channels.
"""

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a, b, data_range: float = 255.0, dim=None):
    """PSNR in dB, 10 log10(L^2 / MSE), of two images of the same shape: numpy arrays (uint8, L = 255)
    or torch tensors (e.g. decoder output in [-1, 1], L = 2), in float64; inf where they are identical.

    dim None: one float over every value; dims such as (1, 2, 3) for a (B, C, H, W) batch: a tensor
    holding one PSNR per image (what training logs).
    """
    a, b = _pair(a, b)
    squared = (a - b) ** 2
    mse = squared.mean() if dim is None else squared.mean(dim=dim)
    value = 10 * torch.log10(data_range ** 2 / mse)                  # mse 0 -> inf
    return float(value) if dim is None else value


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The 1-D normalised Gaussian (size,); SSIM's 2-D window is its outer product."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean SSIM (Wang et al. 2004, eq. 13) of two images (H, W) or (H, W, C).

    Local statistics are Gaussian-weighted (population moments) over every window that lies fully
    inside the image; per-channel maps are averaged. Computed in float64.
    """
    a, b = _pair(a, b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if min(a.shape[:2]) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size} pixels, got {a.shape[:2]}")
    x = torch.stack([a, b]).permute(0, 3, 1, 2)                      # (2, C, H, W) float64
    c = x.shape[1]
    g = torch.from_numpy(gaussian_window(size, sigma))
    kh = g.view(1, 1, size, 1).expand(c, 1, size, 1)
    kw = g.view(1, 1, 1, size).expand(c, 1, 1, size)

    def filt(t):                                                     # (N, C, H, W) -> valid windows
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu = filt(x)                                                     # (2, C, H-10, W-10)
    mu_a, mu_b = mu[0], mu[1]
    var_a = filt(x[:1] ** 2)[0] - mu_a ** 2
    var_b = filt(x[1:] ** 2)[0] - mu_b ** 2
    cov = filt(x[:1] * x[1:])[0] - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Two arrays or tensors of the same shape -> float64 tensors (on the tensors' device)."""
    a, b = (t.to(torch.float64) if isinstance(t, torch.Tensor) else torch.from_numpy(np.array(t, np.float64))
            for t in (a, b))                                         # np.array: a writable copy
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def seam_ratio(image, edges_x, edges_y, step: int) -> float:
    """How visible tile edges are: the mean jump between neighbouring pixels across the tile edges
    (pixel positions, multiples of `step`, e.g. the decoder's factor), over the mean jump across the
    other edges of the `step` lattice; the larger of the two axes'. About 1 for a picture without
    seams (the tiled-upscale tests' no-grid check), well above 1 where tiles meet visibly."""
    a = np.asarray(image, np.float32)                                      # (H, W, 3)
    ratios = []
    for axis, edges in ((1, edges_x), (0, edges_y)):
        jumps = np.abs(np.diff(a, axis=axis)).mean(axis=(1 - axis, 2))      # jumps[j]: pixel j -> j + 1
        at = sorted({e - 1 for e in edges if 0 < e < a.shape[axis]})
        others = [j for j in range(step - 1, len(jumps), step) if j not in at]
        if at and others:
            ratios.append(float(jumps[at].mean() / max(jumps[others].mean(), 1e-6)))
    if not ratios:
        raise ValueError("seam_ratio needs tile edges inside the image and other lattice edges to compare with.")
    return max(ratios)
