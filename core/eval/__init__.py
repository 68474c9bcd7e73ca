"""Evaluate the default models: does a text-to-image model draw what the caption asks, does a
layout model draw each object inside its box, does inpainting repaint what it is told, does a super-resolution model beat bicubic upscaling, and how
well does a first stage reconstruct?

    python -m core.eval shapes --model weights/shapes-txt2img.safetensors --n 200 [--objects 1|2|3|mixed]
                               [--seed 0] [--sampler ddim --steps 50 --guidance 5] [--out results.json]
    python -m core.eval layout --model weights/shapes-layout.safetensors --n 200 [--objects 1|2|3|mixed]
    python -m core.eval sr --model weights/shapes-sr4x.safetensors [--n-shapes 16] [--out results.json]
    python -m core.eval inpaint --model weights/shapes-txt2img.safetensors --n 64 [--out results.json]
    python -m core.eval autoencoder --model weights/shapes-kl-f4.safetensors [--n 64] [--out results.json]

Every image is made by core.pipelines (txt2img, inpaint, upscale) with the settings a user would
give, so an evaluated image for seed s is the image a user gets for seed s. Files, one evaluation
each: shapes.py (caption following, judged by core.world.judge), layout.py (layout following), inpaint.py (recolour one object),
sr.py (PSNR / SSIM against bicubic), autoencoder.py (reconstruction); metrics.py (PSNR, SSIM),
results.py (model info, JSON), __main__.py (the CLI).
"""
from core.eval.autoencoder import eval_autoencoder, reconstruct_uint8
from core.eval.inpaint import eval_inpaint, inpaint_cases
from core.eval.layout import eval_layout, judge_layout, layout_boxes
from core.eval.metrics import gaussian_window, psnr, ssim
from core.eval.results import write_json
from core.eval.shapes import (OBJECT_CHOICES, SCENE_STREAM, eval_scenes, eval_shapes, evaluate_shapes,
                              text_generator)
from core.eval.sr import (EVAL_PHOTOS, area_downsample, bicubic_upscale, center_crop, eval_sr, evaluate_sr,
                          evaluation_photos, sr_upscaler)

__all__ = ["eval_shapes", "eval_layout", "judge_layout", "layout_boxes", "eval_inpaint", "eval_sr", "eval_autoencoder", "evaluate_shapes", "evaluate_sr",
           "eval_scenes", "inpaint_cases", "text_generator", "sr_upscaler", "reconstruct_uint8", "psnr", "ssim",
           "gaussian_window", "area_downsample", "bicubic_upscale", "center_crop", "evaluation_photos",
           "write_json", "EVAL_PHOTOS", "OBJECT_CHOICES", "SCENE_STREAM"]
