"""An endless, seeded source of shapes-world samples.

Sample `index` of `ShapesWorld(seed=s)` draws its scene from numpy's PCG64 seeded with the pair
(s, index), so any index can be read in any order, by any worker, and gives the same sample every
time (no shared generator state between data-loader workers).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .caption import caption
from .render import render
from .scene import Scene, class_label, layout, random_scene


@dataclass(frozen=True)
class ShapesWorld:
    size: int = 64                                  # image side S in pixels
    seed: int = 0                                   # a different seed is a different world sample
    n_objects: int | tuple[int, ...] | None = None  # None: 1-3; 1: single objects (class labels)

    def __post_init__(self):
        if not isinstance(self.size, (int, np.integer)) or self.size < 8:
            raise ValueError(f"size must be an integer >= 8 (pixels), got {self.size!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        # Fails early, with random_scene's message, for a bad n_objects.
        random_scene(np.random.default_rng(0), self.n_objects)

    def scene(self, index: int) -> Scene:
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}")
        rng = np.random.default_rng([int(self.seed), int(index)])
        return random_scene(rng, self.n_objects)

    def sample(self, index: int) -> dict:
        """{image: uint8 (S, S, 3), caption: str, class_label: int | None, layout: list, scene}."""
        scene = self.scene(index)
        return {
            "image": render(scene, self.size),
            "caption": caption(scene),
            "class_label": class_label(scene),
            "layout": layout(scene),
            "scene": scene,
        }

    def __getitem__(self, index: int) -> dict:
        return self.sample(index)
