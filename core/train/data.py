"""Training data: image folders with captions, the shapes world, natural-image crops, super-resolution
pairs and inpainting masks.

Every sample is a pure function of (seed, index): the loops ask for sample indices 0, 1, 2, ... (each
process of a multi-GPU run its own share), so a resumed run reads exactly the data it would have
read, and any worker can produce any sample. A batch is a dict:

    image        (B, 3, S, S) float in [-1, 1]
    caption      list of B strings ("" where there is none)
    class_label  (B,) int64, -1 where there is none (shapes world: single-object scenes only)
    layout       (B, 4, 5) float: (class_id, x0, y0, x1, y1) per object, class_id -1 for no object
                 (with data.layout_background the first is the background: the whole image)
    lr           (B, 3, S/f, S/f) float in [-1, 1]   with sr_factor f: the degraded down-sample
    mask         (B, 1, S, S) float in {0, 1}         with masks: 1 = the region to repaint

Natural images come from the photos scikit-image ships (`skimage.data`); chelsea (= cat), coffee,
rocket and the stereo motorcycle pair are never used for training: they are the evaluation set.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from core.world import PALETTE, SHAPES, ShapesWorld, background_class

log = logging.getLogger("core.train")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SOURCES = ("shapes", "folder", "photos")
MAX_LAYOUT_OBJECTS = 4                   # the shapes world has 1 to 3 objects, + its background token
# With data.layout_background, a layout starts with the scene's background (core.world.background_class),
# box the whole image (core/pipelines/layout_text.py reads it back).
# skimage.data photos usable for training (all ship inside the wheel), and the held-out evaluation set.
TRAIN_PHOTOS = ("astronaut", "brick", "camera", "cell", "clock", "coins", "colorwheel", "grass", "gravel",
                "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "text")
EVAL_PHOTOS = ("chelsea", "coffee", "rocket", "motorcycle_left")


DOWN_FILTERS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


@dataclass(frozen=True)
class DegradationConfig:
    """The BSR-style degradation of an SR pair's low-res image (Rombach et al. 2022, App. D.6; BSRGAN's
    pipeline, reduced): each step happens with its probability, the down-sampling filter is drawn."""
    blur: float = 0.3                    # probability of a Gaussian blur (sigma 0.3-1.5 px, high-res)
    noise: float = 0.2                   # probability of Gaussian noise (sigma 1-8 / 255, low-res)
    jpeg: float = 0.2                    # probability of JPEG compression (quality 50-95, low-res)
    filters: tuple[str, ...] = tuple(DOWN_FILTERS)   # the down-sampling filter is drawn from these

    def __post_init__(self):
        for name in ("blur", "noise", "jpeg"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.degradation.{name} is a probability in [0, 1], got {getattr(self, name)}")
        filters = (self.filters,) if isinstance(self.filters, str) else tuple(self.filters)
        if not filters or set(filters) - set(DOWN_FILTERS):
            raise ValueError(f"data.degradation.filters must name some of {list(DOWN_FILTERS)}, got {self.filters!r}")
        object.__setattr__(self, "filters", filters)


@dataclass(frozen=True)
class DataConfig:
    source: str = "shapes"               # "shapes" (the shapes world), "folder" (path) or "photos"
    size: int = 64                       # side S of the training images
    seed: int = 0                        # a different seed is a different stream of samples
    n_objects: int | tuple[int, ...] | None = None   # shapes: None = 1-3; 1 for class-conditional
    render_size: int | None = None       # shapes: render at this side, then crop S (SR: 256)
    photo_fraction: float = 0.0          # share of samples that are natural-image crops instead
    path: str | None = None              # folder: the image folder
    flip: bool = True                    # folder/photos: random horizontal flips (never the shapes
                                         # world: a flip would contradict "left" in its captions)
    sr_factor: int | None = None         # adds "lr", the image down-sampled by this factor
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    masks: bool = False                  # adds "mask": random strokes and boxes
    cache_latents: bool = True           # LDM: keep encoded latents in memory (synthetic sources)
    pool_size: int = 20000               # LDM: samples in the latent cache (reused every epoch)
    layout_background: bool = False      # shapes layouts: the background as the first token (24 + index)

    def __post_init__(self):
        if isinstance(self.degradation, dict):
            object.__setattr__(self, "degradation", DegradationConfig(**self.degradation))
        if isinstance(self.n_objects, list):
            object.__setattr__(self, "n_objects", tuple(self.n_objects))
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "folder" and not self.path:
            raise ValueError("data.source 'folder' needs data.path, the folder holding the images")
        if self.size < 8 or self.size % 8:
            raise ValueError(f"data.size must be a multiple of 8 (>= 8), got {self.size}")
        if self.render_size is not None and self.render_size < self.size:
            raise ValueError(f"data.render_size ({self.render_size}) must be >= data.size ({self.size})")
        if not 0.0 <= self.photo_fraction <= 1.0:
            raise ValueError(f"data.photo_fraction must be in [0, 1], got {self.photo_fraction}")
        if self.sr_factor is not None and (self.sr_factor < 1 or self.size % self.sr_factor):
            raise ValueError(f"data.sr_factor must divide data.size ({self.size}), got {self.sr_factor}")
        if self.pool_size < 1:
            raise ValueError(f"data.pool_size must be >= 1, got {self.pool_size}")


# --------------------------------------------------------------------------------------------
# Image helpers (numpy uint8 (H, W, 3) throughout)
# --------------------------------------------------------------------------------------------

def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div(127.5).sub(1.0)


def resize_crop(image: np.ndarray, size: int, rng: np.random.Generator | None) -> np.ndarray:
    """Scale the shorter side to `size` (area filter down, bicubic up), then crop a size x size square:
    at a random place with `rng`, centred without."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    if scale != 1.0:
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        image = cv2.resize(image, new, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    return random_crop(image, size, rng)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator | None) -> np.ndarray:
    h, w = image.shape[:2]
    y = int(rng.integers(h - size + 1)) if rng is not None else (h - size) // 2
    x = int(rng.integers(w - size + 1)) if rng is not None else (w - size) // 2
    return image[y:y + size, x:x + size]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Grey, RGBA (composited on white) or boolean images -> uint8 (H, W, 3)."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255
        image = (image[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def degrade(hr: np.ndarray, factor: int, rng: np.random.Generator, cfg: DegradationConfig) -> np.ndarray:
    """High-res uint8 (H, W, 3) -> its degraded 1/factor down-sample (H/f, W/f, 3)."""
    x = hr
    if rng.random() < cfg.blur:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.3, 1.5)))
    h, w = x.shape[:2]
    interpolation = DOWN_FILTERS[cfg.filters[int(rng.integers(len(cfg.filters)))]]
    x = cv2.resize(x, (w // factor, h // factor), interpolation=interpolation)
    if rng.random() < cfg.noise:
        noisy = x.astype(np.float32) + rng.normal(0.0, rng.uniform(1.0, 8.0), x.shape)
        x = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < cfg.jpeg:
        quality = int(rng.integers(50, 96))
        ok, encoded = cv2.imencode(".jpg", x[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        x = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(x)


def random_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (size, size) in {0, 1}, 1 = repaint: 1-2 boxes, 1-3 thick strokes, or both."""
    canvas = np.zeros((size, size), np.uint8)
    kind = int(rng.integers(3))                                  # 0 boxes, 1 strokes, 2 both
    if kind in (0, 2):
        for _ in range(int(rng.integers(1, 3))):
            bw, bh = (rng.uniform(0.2, 0.6, 2) * size).astype(int)
            x0, y0 = int(rng.integers(size - bw + 1)), int(rng.integers(size - bh + 1))
            canvas[y0:y0 + bh, x0:x0 + bw] = 1
    if kind in (1, 2):
        for _ in range(int(rng.integers(1, 4))):
            points = (rng.uniform(0, 1, (int(rng.integers(2, 6)), 2)) * size).astype(np.int32)
            width = max(1, int(rng.uniform(0.05, 0.15) * size))
            cv2.polylines(canvas, [points], isClosed=False, color=1, thickness=width)
    if canvas.sum() == 0:
        canvas[size // 4:3 * size // 4, size // 4:3 * size // 4] = 1
    return canvas.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

def _read_captions(root: Path) -> dict[str, str]:
    """captions.jsonl lines {"file": name, "text": caption} (also "image"/"file_name", "caption")."""
    path = root / "captions.jsonl"
    captions = {}
    if path.exists():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name = row.get("file") or row.get("image") or row.get("file_name")
                text = row.get("text", row.get("caption"))
                if name is None or text is None:
                    raise ValueError("needs 'file' and 'text'")
            except (ValueError, AttributeError) as err:
                log.warning("captions.jsonl line %d skipped: %s", n, err)
                continue
            captions[str(name)] = str(text)
    return captions


class ImageFolder:
    """Images under `root` (recursively), each with an optional caption from `name.txt` beside it or
    from `root/captions.jsonl`. Unreadable files are skipped with a warning and counted in `bad_files`."""

    def __init__(self, root: str | Path, size: int, flip: bool = True, seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {self.root} does not exist")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")
        self.size, self.flip, self.seed = size, flip, seed
        self.jsonl = _read_captions(self.root)
        self.bad_files: set[Path] = set()
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def caption(self, path: Path) -> str:
        txt = path.with_suffix(".txt")
        if txt.exists():
            return txt.read_text(encoding="utf-8", errors="replace").strip()
        rel = path.relative_to(self.root).as_posix()
        return self.jsonl.get(rel, self.jsonl.get(path.name, ""))

    def _file_at(self, index: int) -> int:
        """Sample index -> file number: a fresh permutation every epoch, seeded by (seed, epoch)."""
        epoch, i = divmod(index, len(self.files))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.files)))
        return int(self._order[1][i])

    def load(self, path: Path) -> np.ndarray:
        with Image.open(path) as im:
            im.load()
            return as_rgb(np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB")))

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        for attempt in range(len(self.files)):
            path = self.files[self._file_at(index + attempt)]
            if path in self.bad_files:
                continue
            try:
                image = self.load(path)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                self.bad_files.add(path)
                log.warning("skipping unreadable image %s (%s); %d skipped so far", path, err, len(self.bad_files))
                continue
            image = resize_crop(image, self.size, rng)
            if self.flip and rng.random() < 0.5:
                image = image[:, ::-1]
            return {"image": image, "caption": self.caption(path)}
        raise ValueError(f"none of the {len(self.files)} images under {self.root} could be read")


class Photos:
    """Random crops of scikit-image's bundled photos (TRAIN_PHOTOS only), at a random scale, flipped."""

    _cache: dict = {}

    def __init__(self, size: int, flip: bool = True):
        self.size, self.flip = size, flip
        if not Photos._cache:
            try:
                import skimage.data
            except ImportError as err:
                raise ImportError("natural-image crops need scikit-image, which requirements.txt installs: "
                                  "pip install -r requirements.txt") from err
            Photos._cache.update({name: as_rgb(getattr(skimage.data, name)()) for name in TRAIN_PHOTOS})
        self.photos = [Photos._cache[name] for name in TRAIN_PHOTOS]

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        photo = self.photos[int(rng.integers(len(self.photos)))]
        h, w = photo.shape[:2]
        scale = rng.uniform(max(self.size / min(h, w), 0.25), 1.0)     # zoomed out at most 4x
        if scale < 1.0:
            photo = cv2.resize(photo, (max(self.size, round(w * scale)), max(self.size, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
        image = resize_crop(photo, self.size, rng) if min(photo.shape[:2]) < self.size else \
            random_crop(photo, self.size, rng)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": image, "caption": ""}


class Shapes:
    """The shapes world (core.world) with class labels and layouts; rendered at render_size and cropped
    to `size` when they differ (crops keep no caption: they are for super-resolution)."""

    def __init__(self, size: int, seed: int, n_objects=None, render_size: int | None = None,
                 background_token: bool = False):
        self.size = size
        self.background_token = background_token
        self.world = ShapesWorld(size=render_size or size, seed=seed, n_objects=n_objects)

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        s = self.world.sample(index)
        if s["image"].shape[0] != self.size:
            return {"image": random_crop(s["image"], self.size, rng), "caption": ""}
        # boxes clipped to the image, as a user draws them (a large object at an edge overhangs it)
        layout = [(SHAPES.index(shape) * len(PALETTE) + list(PALETTE).index(colour),
                   *(min(max(v, 0.0), 1.0) for v in box)) for shape, colour, *box in s["layout"]]
        if self.background_token:
            layout.insert(0, (background_class(s["scene"].background), 0.0, 0.0, 1.0, 1.0))
        label = -1 if s["class_label"] is None else s["class_label"]
        return {"image": s["image"], "caption": s["caption"], "class_label": label, "layout": layout}


# --------------------------------------------------------------------------------------------
# The dataset the loops use
# --------------------------------------------------------------------------------------------

def describe_data(c: DataConfig) -> str:
    """One line saying what a run trains on (for the model file's training record)."""
    what = {"shapes": f"shapes world (seed {c.seed}, {c.n_objects or '1-3'} objects"
                      + (f", rendered at {c.render_size}" if c.render_size else "") + ")",
            "folder": f"image folder {c.path}", "photos": "skimage.data photo crops"}[c.source]
    if c.photo_fraction > 0 and c.source != "photos":
        what += f" + {c.photo_fraction:.0%} skimage.data photo crops (evaluation photos excluded)"
    extra = (f", SR pairs x{c.sr_factor}" if c.sr_factor else "") + (", inpainting masks" if c.masks else "")
    return f"{what} at {c.size}x{c.size}{extra}"


class TrainData:
    """sample(index) -> dict of numpy/plain values; batch(indices) -> dict of tensors (module docstring)."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        if cfg.source == "shapes":
            self.main = Shapes(cfg.size, cfg.seed, cfg.n_objects, cfg.render_size, cfg.layout_background)
        elif cfg.source == "folder":
            self.main = ImageFolder(cfg.path, cfg.size, cfg.flip, cfg.seed)
        else:
            self.main = Photos(cfg.size, cfg.flip)
        self.photos = Photos(cfg.size, cfg.flip) if 0 < cfg.photo_fraction and cfg.source != "photos" else None

    @property
    def bad_files(self) -> int:
        return len(getattr(self.main, "bad_files", ()))

    @property
    def synthetic(self) -> bool:
        """Whether samples come from the shapes world / photo crops (cheap to cache by index)."""
        return self.cfg.source != "folder"

    def sample(self, index: int) -> dict:
        c = self.cfg
        rng = np.random.default_rng([c.seed, index, 7])             # this sample's own random stream
        use_photo = self.photos is not None and rng.random() < c.photo_fraction
        s = (self.photos if use_photo else self.main).sample(index, rng)
        out = {"image": s["image"], "caption": s.get("caption", ""), "class_label": s.get("class_label", -1),
               "layout": s.get("layout", [])}
        if c.sr_factor:
            out["lr"] = degrade(s["image"], c.sr_factor, rng, c.degradation)
        if c.masks:
            out["mask"] = random_mask(c.size, rng)
        return out

    def batch(self, indices) -> dict:
        samples = [self.sample(int(i)) for i in indices]
        layout = torch.zeros(len(samples), MAX_LAYOUT_OBJECTS, 5)
        layout[:, :, 0] = -1
        for b, s in enumerate(samples):
            for k, obj in enumerate(s["layout"][:MAX_LAYOUT_OBJECTS]):
                layout[b, k] = torch.tensor(obj, dtype=torch.float32)
        out = {"image": torch.stack([to_tensor(s["image"]) for s in samples]),        # (B, 3, S, S)
               "caption": [s["caption"] for s in samples],
               "class_label": torch.tensor([s["class_label"] for s in samples], dtype=torch.long),
               "layout": layout}                                                      # (B, 4, 5)
        if self.cfg.sr_factor:
            out["lr"] = torch.stack([to_tensor(s["lr"]) for s in samples])            # (B, 3, S/f, S/f)
        if self.cfg.masks:
            out["mask"] = torch.stack([torch.from_numpy(s["mask"])[None] for s in samples])  # (B, 1, S, S)
        return out

