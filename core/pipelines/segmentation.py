"""Segmentation maps for semantic synthesis: a label map (class id per pixel) or a one-hot map ->
the (1, C, H, W) float one-hot tensor LDM's SpatialRescaler reads.

The reference encodes its maps as taming-transformers' `SegmentationBase` does (sflckr / the
landscapes data of `semantic_synthesis512`): a single-channel PNG of class ids (COCO-stuff: 182
classes, 0..181), `np.eye(n_labels)[segmentation]` -> (H, W, C) of 0 / 1, made float32
(`segmentation_to_float32`) and rearranged to (B, C, H, W) by `LatentDiffusion.get_input`.
"""

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.pipelines.images import read_image_file

LABEL_MODES = ("L", "P", "I", "I;16", "1")          # single-channel PIL modes: the pixel value is the class id


def _label_image(image: Image.Image, where: str) -> np.ndarray:
    if image.mode not in LABEL_MODES:
        raise ValueError(f"{where} is a {image.mode} image; a label map is a single-channel PNG (mode L, P or "
                         "I) whose pixel values are class ids, not colours.")
    return np.asarray(image)


def _as_array(segmentation) -> np.ndarray:
    if isinstance(segmentation, (str, Path)):
        return _label_image(read_image_file(segmentation), f"the segmentation {segmentation}")
    if isinstance(segmentation, Image.Image):
        return _label_image(segmentation, "the segmentation image")
    if isinstance(segmentation, torch.Tensor):
        return segmentation.detach().cpu().numpy()
    if isinstance(segmentation, np.ndarray):
        return segmentation
    raise ValueError(f"a segmentation is a label-map PNG (path or PIL image), an (H, W) array of class ids or a "
                     f"one-hot (C, H, W) array; got {type(segmentation).__name__}.")


def one_hot_segmentation(segmentation, n_classes: int) -> torch.Tensor:
    """(1, n_classes, H, W) float32 from a label map (H, W) of ids in [0, n_classes) or a one-hot /
    soft map (n_classes, H, W); ValueError naming what is wrong otherwise."""
    array = _as_array(segmentation)
    if array.ndim == 3:
        if array.shape[0] != n_classes:
            raise ValueError(f"the one-hot segmentation has {array.shape[0]} channels, but this model takes "
                             f"{n_classes} classes: give ({n_classes}, H, W), or an (H, W) map of class ids.")
        out = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if not torch.isfinite(out).all():
            raise ValueError("the one-hot segmentation holds NaN or infinite values.")
        return out[None]                                                        # (1, C, H, W)
    if array.ndim != 2:
        raise ValueError(f"a segmentation is an (H, W) map of class ids or a one-hot (C, H, W) map; got shape "
                         f"{tuple(array.shape)}.")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise ValueError("an (H, W) label map holds whole class ids; this one has fractions or NaN.")
    elif array.dtype.kind not in "iub":
        raise ValueError(f"an (H, W) label map holds integer class ids; got {array.dtype}.")
    labels = torch.from_numpy(array.astype(np.int64))                          # (H, W)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise ValueError(f"the label map holds class ids {low}..{high}, but this model knows {n_classes} "
                         f"classes (ids 0..{n_classes - 1}).")
    return torch.nn.functional.one_hot(labels, n_classes).permute(2, 0, 1)[None].float()   # (1, C, H, W)


def segmentation_record(one_hot: torch.Tensor) -> dict:
    """What an image records of its map: a hash of the one-hot tensor (a label map and its exact
    one-hot hash alike) and the classes present."""
    digest = hashlib.sha256(str(tuple(one_hot.shape)).encode() + one_hot.contiguous().numpy().tobytes())
    present = (one_hot[0] != 0).flatten(1).any(dim=1).nonzero().flatten().tolist()
    return {"segmentation_hash": digest.hexdigest()[:10], "segmentation_classes": present}
