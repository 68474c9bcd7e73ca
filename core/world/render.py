"""Render a shapes-world scene to an RGB image.

Spec: shared/shapes_world.md: "draw at 4x and downsample with a box/area filter". We compute that
exactly without the 4x canvas: each output pixel takes 4x4 sub-samples at the centres of the 4x
canvas's pixels, tests them against the shape, and averages, so an edge pixel is the mix of object and
background in proportion to its coverage (multiples of 1/16) -- the same numbers as filling at 4x
and box-filtering down, but only over each object's bounding box, and with an exact inside test
(cv2.fillPoly's rule grows shapes by half a canvas pixel, 10% of a small star's area at S=32).

Geometry (pixel j covers [j, j+1), y points down): a shape of circumscribed radius R about (cx, cy)
has its vertices on that circle. At rotation 0 the square is axis-aligned and the triangle and the
star point up; a positive rotation turns the shape clockwise on screen.
"""
from __future__ import annotations

import numpy as np

from .scene import BACKGROUNDS, PALETTE, STAR_INNER_RATIO, Scene

SUPERSAMPLE = 4  # sub-samples per pixel and axis: the spec's 4x canvas


# k-fold symmetry and the angle of the first vertex at rotation 0 (radians, y down, so -pi/2 is up).
_FOLD = {"square": 4, "triangle": 3, "star": 5}
_FIRST_VERTEX = {"square": np.pi / 4,     # corners at 45 deg: axis-aligned
                 "triangle": -np.pi / 2,  # first vertex straight up
                 "star": -np.pi / 2}      # first point straight up


def shape_vertices(shape: str, radius: float, rotation: float) -> np.ndarray:
    """Vertices (N, 2) as (x, y) about the centre, in order around the shape: the k corners on the
    circumscribed circle of `radius`; for the star, tips and inner vertices (0.45 R) alternate."""
    if shape not in _FOLD:
        raise ValueError(f"{shape!r} has no vertices; the polygonal shapes are {list(_FOLD)}")
    k = _FOLD[shape]
    angles = _FIRST_VERTEX[shape] + np.deg2rad(rotation) + np.arange(k) * (2 * np.pi / k)  # (k,)
    radii = np.full(k, float(radius))
    if shape == "star":                          # an inner vertex half-way between two tips
        angles = np.stack([angles, angles + np.pi / k], axis=1).reshape(-1)            # (2k,)
        radii = np.tile([radius, STAR_INNER_RATIO * radius], k)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _sides(dx: np.ndarray, dy: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean (M, H, W): is (dx[None, :], dy[:, None]) on the centre's side of the line through
    a[m] and b[m] (each (M, 2))? The centre, the origin, never lies on one of our edge lines."""
    n = np.stack([b[:, 1] - a[:, 1], a[:, 0] - b[:, 0]], axis=1)        # (M, 2) edge normals
    c = (a * n).sum(axis=1)                                             # (M,)
    n, c = n * np.sign(c)[:, None], np.abs(c)                           # normals point outwards
    return (n[:, None, None, 0] * dx[None, None, :] + n[:, None, None, 1] * dy[None, :, None]
            <= c[:, None, None])


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float, rotation: float) -> np.ndarray:
    """Boolean (H, W): is the point (dx[None, :], dy[:, None]) from the centre inside the shape?"""
    if shape == "circle":
        return (dx * dx)[None, :] + (dy * dy)[:, None] <= radius * radius
    v = shape_vertices(shape, radius, rotation)
    if shape != "star":                          # convex: inside every edge
        return _sides(dx, dy, v, np.roll(v, -1, axis=0)).all(axis=0)
    # The star is the pentagon of its inner vertices plus five tip triangles; tip triangle j lies
    # inside both edges that meet at tip j and outside the pentagon edge facing it.
    tips, inner = v[0::2], v[1::2]                                      # (5, 2) each
    facing = _sides(dx, dy, np.roll(inner, 1, axis=0), inner)           # (5, H, W)
    left = _sides(dx, dy, np.roll(inner, 1, axis=0), tips)              # (5, H, W)
    right = _sides(dx, dy, tips, inner)                                 # (5, H, W)
    return facing.all(axis=0) | (left & right & ~facing).any(axis=0)


def _coverage_window(shape: str, cx: float, cy: float, radius: float, rotation: float,
                     x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """Coverage (height, width) of the pixels [x0, x0+width) x [y0, y0+height), float32 in [0, 1]."""
    n = SUPERSAMPLE
    xs = x0 + (np.arange(width * n) + 0.5) / n - cx                       # (W*n,) sub-sample centres
    ys = y0 + (np.arange(height * n) + 0.5) / n - cy                      # (H*n,)
    hit = _inside(shape, xs, ys, radius, rotation)                        # (H*n, W*n)
    return hit.reshape(height, n, width, n).mean(axis=(1, 3), dtype=np.float32)  # (H, W)


def coverage(shape: str, cx: float, cy: float, radius: float, rotation: float,
             height: int, width: int) -> np.ndarray:
    """Fraction of each pixel (height, width) covered by one shape, float32 in [0, 1].

    Centre and circumscribed radius in pixels. The same numbers `render` uses, so the checker can
    compare an image with the ideal shape."""
    return _coverage_window(shape, cx, cy, radius, rotation, 0, 0, width, height)


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as a uint8 RGB image (size, size, 3); deterministic."""
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8 (the image side in pixels), got {size!r}")
    background = np.array(BACKGROUNDS[scene.background], np.float32)
    image = np.empty((size, size, 3), np.float32)                         # (S, S, 3)
    image[:] = background
    for o in scene.objects:
        cx, cy, r = o.cx * size, o.cy * size, o.diameter / 2 * size      # pixels
        x0, y0 = max(int(np.floor(cx - r)), 0), max(int(np.floor(cy - r)), 0)
        x1, y1 = min(int(np.ceil(cx + r)), size), min(int(np.ceil(cy + r)), size)
        alpha = _coverage_window(o.shape, cx, cy, r, o.rotation, x0, y0, x1 - x0, y1 - y0)
        # A box filter of the 4x canvas: background plus each object's coverage times its offset
        # (objects never share a sub-sample, so the sum is exact).
        image[y0:y1, x0:x1] += alpha[..., None] * (np.array(PALETTE[o.colour], np.float32) - background)
    return np.floor(image + 0.5).clip(0, 255).astype(np.uint8)
