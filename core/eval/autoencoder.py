"""Autoencoder: reconstruction PSNR and SSIM of a first stage, and what the checker sees in D(E(x)).

Held-out shapes-world scenes and the four evaluation photos (core.eval.sr) are encoded (posterior
mean for KL, the pre-quantisation h for VQ) and decoded; per set: mean, median and worst PSNR and
SSIM (core.eval.metrics). On the scenes, core.world.judge reads the reconstructions as it reads
generated images: the accuracy a perfect LDM on this first stage could reach at best.
"""

import time

import numpy as np
import torch

from core.eval.metrics import psnr, ssim
from core.eval.results import model_info
from core.eval.shapes import SCENE_STREAM, accuracy, judged_record
from core.eval.sr import center_crop, evaluation_photos
from core.models.distributions import DiagonalGaussianDistribution
from core.pipelines.images import tensor_to_images
from core.world import ShapesWorld, caption, judge


@torch.no_grad()
def reconstruct_uint8(ae, image: np.ndarray) -> np.ndarray:
    """D(E(x)) of a uint8 (H, W, 3) image with the posterior mean (KL) or the quantised latent (VQ)."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    param = next(ae.parameters())
    h = ae.encode(x.to(param.device, param.dtype))
    z = h.mode() if isinstance(h, DiagonalGaussianDistribution) else h     # VQ: h (a Tensor has .mode too)
    return np.asarray(tensor_to_images(ae.decode(z))[0])


def eval_autoencoder(ae, n_shapes: int = 64, seed: int = 0, size: int = 64, photos: bool = True,
                     max_side: int | None = 256, log=print) -> dict:
    """Reconstruction PSNR and SSIM of a first stage on n_shapes held-out shapes-world scenes and on the
    four evaluation photos (centre crops of at most max_side): mean, median and worst per set."""
    if not hasattr(ae, "decoder") or not hasattr(ae, "cfg"):
        raise ValueError(f"the autoencoder evaluation needs a first-stage model file; this is a "
                         f"{type(ae).__name__} (for an LDM, evaluate its task: shapes, sr or inpaint)")
    factor = ae.cfg.ddconfig.downsample_factor
    world = ShapesWorld(size=size, seed=SCENE_STREAM + seed)
    samples = [world[i] for i in range(n_shapes)]
    sets = {"shapes": {f"scene_{i}": s["image"] for i, s in enumerate(samples)}}
    if photos:
        sets["photos"] = {k: center_crop(v, factor, max_side) for k, v in evaluation_photos().items()}
    start = time.perf_counter()
    out = {"task": "autoencoder", **model_info(ae), "settings": {"n_shapes": n_shapes, "size": size, "seed": seed,
                                                                 "max_side": max_side}}
    for name, images in sets.items():
        scores, records = {}, []
        for i, (key, image) in enumerate(images.items()):
            rec = reconstruct_uint8(ae, image)
            scores[key] = {"psnr": psnr(rec, image), "ssim": ssim(rec, image)}
            if name == "shapes":        # the checker on D(E(x)): what a perfect LDM could reach at best
                records.append(judged_record(i, 0, caption(samples[i]["scene"]), judge(rec, samples[i]["scene"])))
        values = {m: [v[m] for v in scores.values()] for m in ("psnr", "ssim")}
        out[name] = {"images": scores, **{f"{stat}_{m}": float(fn(values[m])) for m in values
                                          for stat, fn in (("mean", np.mean), ("median", np.median),
                                                           ("min", np.min))}}
        if records:
            out[name]["checker"] = accuracy(records)
        if log:
            log(_log_line(name, out[name]))
    out["wall_time_s"] = round(time.perf_counter() - start, 2)
    return out


def _log_line(name: str, part: dict) -> str:
    line = f"{name}: PSNR median {part['median_psnr']:.2f} dB (min {part['min_psnr']:.2f})"
    if "checker" in part:
        c = part["checker"]
        line += (f"; the checker finds {c['scene_accuracy']:.0%} of the reconstructed scenes entirely right "
                 f"(colour {c['colour']:.0%}, shape {c['shape']:.0%})")
    return line


def summary_lines(result: dict) -> list[str]:
    return [f"{part}: reconstruction PSNR mean {result[part]['mean_psnr']:.2f} dB, median "
            f"{result[part]['median_psnr']:.2f}, worst {result[part]['min_psnr']:.2f}; SSIM mean "
            f"{result[part]['mean_ssim']:.4f}" for part in ("shapes", "photos") if part in result]
