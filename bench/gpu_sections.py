"""The sections of bench/gpu_check.py. Each takes (check, ctx) and records its items through
check.run, so one failing item is recorded and the next one runs.

ctx: device (torch.device), dtype (the inference dtype: float16 on CUDA, float32 on the CPU), plan
(bench/gpu_models.Plan), backend (torch.compile backend), variants (which of VARIANTS run for each
model, with the reasons for those that do not).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from bench.gpu_models import (PROMPT, ROOT, SHIPPED_SR4X, SHIPPED_TXT2IMG, describe, parameters_m,
                              random_model, random_unet, sd21_config, sdxl_config, unet_inputs)
from bench.gpu_tools import VARIANTS, Variants, allocated_mib, rel_error, synchronize, timed

# Rough seconds an item needs on an H100 (compile included), so that it is skipped, not cut off, near
# the end of the budget. A --quick run on a CPU needs far less; the guard then only rarely applies.
NEEDS = {"compile": 60, "build_sdxl": 20, "upscale": 30, "image": 20}


# ---------------------------------------------------------------------------------------------
# Correctness
# ---------------------------------------------------------------------------------------------

def tests(check, ctx) -> None:
    """The suite's CUDA-marked tests (tests/test_cuda.py, marker `cuda`): without a GPU they skip."""
    def run():
        with tempfile.TemporaryDirectory() as tmp:
            xml = Path(tmp) / "junit.xml"
            cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider",
                   f"--junitxml={xml}"]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(check.left() - 5, 5))
            out = {"command": " ".join(cmd[1:-1]), "exit_code": proc.returncode,
                   "output_tail": (proc.stdout + proc.stderr).strip().splitlines()[-15:]}
            if xml.exists():
                suite = ET.parse(xml).getroot()
                suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
                counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
                failed = [f"{case.get('name')}: {(bad.get('message') or '')[:300]}" for case in suite.iter("testcase")
                          for bad in list(case) if bad.tag in ("failure", "error")]
                out.update(counts, passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
                           failed=failed)
        if proc.returncode not in (0, 5):       # 5: nothing collected / all deselected
            raise RuntimeError(f"pytest exited {proc.returncode}: {out.get('failed') or out['output_tail'][-3:]}")
        return out
    check.run(("correctness", "cuda_tests"), run, needs_s=15)


def cpu_vs_device(check, ctx) -> None:
    """CPU-seeded noise gives the same image on the CPU and on the device: the shipped tiny text-to-
    image model, float32 on both (and the device's inference dtype), max / mean pixel difference."""
    from core import load_model, pipelines

    def run():
        kw = {"seed": 1, "steps": ctx.plan.txt2img_steps}
        ref_model = load_model(SHIPPED_TXT2IMG, device="cpu", dtype=torch.float32)
        ref = np.asarray(pipelines.txt2img(ref_model, "a large red circle in the center", **kw)[0], np.int16)
        ref_z = pipelines.txt2img(ref_model, "a large red circle in the center", output="latent", **kw)
        out = {"model": SHIPPED_TXT2IMG.name, "image": list(ref.shape), "steps": ctx.plan.txt2img_steps or "defaults"}
        for dtype in dict.fromkeys([torch.float32, ctx.dtype]):
            m = load_model(SHIPPED_TXT2IMG, device=ctx.device, dtype=dtype)
            img = np.asarray(pipelines.txt2img(m, "a large red circle in the center", **kw)[0], np.int16)
            z = pipelines.txt2img(m, "a large red circle in the center", output="latent", **kw)
            name = str(dtype).removeprefix("torch.")
            diff = np.abs(img - ref)
            out[name] = {"max_pixel_diff": int(diff.max()), "mean_pixel_diff": round(float(diff.mean()), 4),
                         "latent_rel_error": rel_error(z.float().cpu(), ref_z.float())}
        return out
    check.run(("correctness", "cpu_vs_device_image"), run, needs_s=10)


def precision(check, ctx) -> None:
    """SD 2.1 and SDXL UNets (random weights) in float16 and bfloat16 against float32 on the same
    device: ||low - fp32|| / ||fp32|| of one CFG step's output. The float32 reference runs with TF32
    off (cuDNN convolutions use TF32 by default)."""
    for name, cfg_of, latent in (("sd21_unet", sd21_config, ctx.plan.sd_latent),
                                 ("sdxl_unet", sdxl_config, ctx.plan.sdxl_latent)):
        check.run(("correctness", f"{name}_fp16_bf16_vs_fp32"),
                  lambda cfg_of=cfg_of, latent=latent: _precision_one(cfg_of(ctx.plan), latent, ctx.device),
                  needs_s=NEEDS["build_sdxl"])


def _precision_one(cfg, latent: int, device: torch.device) -> dict:
    unet = random_unet(cfg, device)
    args, kwargs = unet_inputs(cfg.unet, latent, device, torch.float32)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = unet(*args, **kwargs).float()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    out = {"latent": latent, "params_m": parameters_m(unet), **describe(cfg),
           "fp32_output_rms": ref.pow(2).mean().sqrt().item()}
    for dtype in (torch.float16, torch.bfloat16):
        low = copy.deepcopy(unet).to(dtype)
        cast = [a.to(dtype) if a.is_floating_point() else a for a in args]
        y = low(*cast, **{k: v.to(dtype) for k, v in kwargs.items()}).float()
        name = str(dtype).removeprefix("torch.")
        out[f"{name}_rel_error"] = rel_error(y, ref)
        out[f"{name}_finite"] = bool(torch.isfinite(y).all())
        del low, y
    return out


# ---------------------------------------------------------------------------------------------
# Speed and memory
# ---------------------------------------------------------------------------------------------

def _first_and_timed(fn, ctx, repeats=None, warmup=None) -> dict:
    """The first call (compile and graph capture happen there) timed apart, then timed()."""
    t0 = time.perf_counter()
    out = fn()
    synchronize(ctx.device)
    first = time.perf_counter() - t0
    finite = bool(torch.isfinite(out).all()) if isinstance(out, torch.Tensor) else None
    figures = timed(fn, ctx.device, ctx.plan.warmup if warmup is None else warmup,
                    ctx.plan.repeats if repeats is None else repeats)
    return {"first_call_s": round(first, 2), **figures, **({"finite": finite} if finite is not None else {})}


def skip_reason(ctx, keys: tuple, variant: str) -> str | None:
    """Why `variant` of item `keys` does not run here (None: it runs)."""
    if variant in ctx.skip_variants:
        return ctx.skip_variants[variant]
    chosen = ctx.compile_only is None or any(keys[0] == section and keys[1].startswith(item)
                                             for section, item in ctx.compile_only)
    return None if variant == "eager" or chosen else ctx.compile_only_reason


def _each_variant(check, ctx, keys: tuple, modules: list, measure, needs_s: float = 5) -> None:
    """measure() under every variant of `modules` (Variants) the device allows; a skipped one says why."""
    for variant in VARIANTS:
        reason = skip_reason(ctx, keys, variant)
        if reason:
            check.skip((*keys, variant), reason)
            continue

        def run(variant=variant):
            for module in modules:
                module.use(variant)
            return measure()
        check.run((*keys, variant), run, needs_s=max(needs_s, NEEDS["compile"] if variant == "compile" else 0))
    for module in modules:
        module.use("eager")


def sd21(check, ctx) -> None:
    """SD 2.1 base, random weights, inference dtype: the UNet's CFG step (batch 2), the VAE decode,
    and a whole image through core.pipelines.txt2img (text encoder, sampler, UNet, VAE)."""
    plan, box = ctx.plan, {}

    def build():
        cfg = sd21_config(plan)
        box["m"] = random_model(cfg, ctx.device, ctx.dtype)
        return {"params_m": parameters_m(box["m"]), **describe(cfg), "allocated_mib": allocated_mib(ctx.device)}
    if check.run(("sd21", "build"), build, needs_s=10) is None:
        return
    m = box["m"]
    unet, decoder = Variants(m.model.diffusion_model, ctx.backend), Variants(m.first_stage_model.decoder, ctx.backend)
    args, kwargs = unet_inputs(m.config.unet, plan.sd_latent, ctx.device, ctx.dtype)
    _each_variant(check, ctx, ("sd21", f"cfg_step_{plan.sd_latent}x{plan.sd_latent}"), [unet],
                  lambda: {"batch": 2, **_first_and_timed(lambda: m.model.diffusion_model(*args, **kwargs), ctx)})
    _vae(check, ctx, m, decoder, plan.vae_sizes[0])

    def image():                                      # the UNet and the decoder both compiled / graphed
        pipelines_txt2img(m, 2, plan.image_px)        # warm-up: compile and capture happen here
        return {"sampler": "ddim", "steps": plan.image_steps, "guidance_scale": 7.5,
                **timed(lambda: pipelines_txt2img(m, plan.image_steps, plan.image_px), ctx.device, warmup=0,
                        repeats=plan.image_repeats)}
    _each_variant(check, ctx, ("sd21", f"image_{plan.image_px}_{plan.image_steps}_steps"), [unet, decoder], image,
                  NEEDS["image"])
    for px in plan.vae_sizes[1:]:
        _vae(check, ctx, m, decoder, px)


def pipelines_txt2img(m, steps: int, px: int):
    from core import pipelines
    return pipelines.txt2img(m, PROMPT, steps=steps, width=px, height=px, seed=1, sampler="ddim", guidance_scale=7.5)


def _vae(check, ctx, m, decoder: Variants, px: int) -> None:
    f = 2 ** (len(m.config.first_stage.ddconfig.ch_mult) - 1)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, m.config.first_stage.embed_dim, px // f, px // f, generator=g).to(ctx.device, ctx.dtype)
    _each_variant(check, ctx, ("sd21", f"vae_decode_{px}"), [decoder],
                  lambda: _first_and_timed(lambda: m.first_stage_model.decode(z), ctx))


def sdxl(check, ctx) -> None:
    """SDXL base, random weights, inference dtype: the UNet's CFG step (batch 2, ADM vector y), and
    the peak memory of an image with everything resident against the same work staged so that only
    the part at work is on the device (text encoders, then UNet, then VAE)."""
    plan, box = ctx.plan, {}

    def build():
        cfg = sdxl_config(plan)
        box["m"] = random_model(cfg, ctx.device, ctx.dtype)
        return {"params_m": parameters_m(box["m"]), **describe(cfg), "allocated_mib": allocated_mib(ctx.device)}
    if check.run(("sdxl", "build"), build, needs_s=NEEDS["build_sdxl"]) is None:
        return
    m = box["m"]
    args, kwargs = unet_inputs(m.config.unet, plan.sdxl_latent, ctx.device, ctx.dtype)
    _each_variant(check, ctx, ("sdxl", f"cfg_step_{plan.sdxl_latent}x{plan.sdxl_latent}"),
                  [Variants(m.model.diffusion_model, ctx.backend)],
                  lambda: {"batch": 2, **_first_and_timed(lambda: m.model.diffusion_model(*args, **kwargs), ctx)})
    check.run(("sdxl", "memory_resident_vs_offloaded"), lambda: _offload(m, ctx), needs_s=NEEDS["image"])


def _peak(ctx, fn):
    """(fn's result, the peak MiB allocated while it ran) on CUDA; (result, None) elsewhere."""
    if ctx.device.type != "cuda":
        return fn(), None
    synchronize(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    out = fn()
    synchronize(ctx.device)
    return out, round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1)


def _offload(m, ctx) -> dict:
    """core.pipelines has no offloading option yet: the staged run moves modules by hand between
    the phases (conditioner -> UNet -> VAE), which is what such an option would do."""
    from core.pipelines import SamplingSettings, model_defaults
    from core.pipelines.conditioning import sdxl_conditioning
    from core.pipelines.denoise import denoise
    from core.pipelines.generation import decode
    from core.samplers.noise import cpu_generator
    px, steps = ctx.plan.sdxl_latent * 8, 2
    _, resident = _peak(ctx, lambda: pipelines_txt2img(m, steps, px))
    settings = SamplingSettings.resolve(model_defaults(m), "ddim", None, steps, 7.5, None)
    parts = {"text encoders": m.conditioner, "unet": m.model, "vae": m.first_stage_model}
    cpu, moves = torch.device("cpu"), {}

    def only(name):                      # the part at work on the device, the others on the CPU
        t0 = time.perf_counter()
        for other, module in parts.items():
            module.to(ctx.device if other == name else cpu)
        synchronize(ctx.device)
        moves[name] = round(time.perf_counter() - t0, 3)
    try:
        only("text encoders")
        (c, u), text_peak = _peak(ctx, lambda: sdxl_conditioning(m, PROMPT, "", (px, px)))
        only("unet")
        shape = (1, m.config.channels, ctx.plan.sdxl_latent, ctx.plan.sdxl_latent)
        z, unet_peak = _peak(ctx, lambda: denoise(m, c, u, settings, shape, [cpu_generator(1)]))
        only("vae")
        image, vae_peak = _peak(ctx, lambda: decode(m, z)[0])
    finally:
        for module in parts.values():
            module.to(ctx.device)
    staged = [p for p in (text_peak, unet_peak, vae_peak) if p is not None]
    return {"image_px": px, "steps": steps, "resident_peak_mib": resident,
            "offloaded_peak_mib": max(staged) if staged else None,
            "offloaded_phase_peaks_mib": {"text encoders": text_peak, "unet": unet_peak, "vae": vae_peak},
            "seconds_to_move_parts_in": moves, "decoded_finite": bool(torch.isfinite(image).all()),
            "note": "core.pipelines has no offload option yet: phases staged by hand here (module.to between them)"}


def upscale(check, ctx) -> None:
    """The tiled 4x upscaler (the shipped shapes-sr4x, real weights) to plan.upscale_out per side
    through core.pipelines.upscale at its defaults; the UNet eager / compiled / graphed."""
    from core import load_model, pipelines
    from PIL import Image
    plan, box = ctx.plan, {}
    side = plan.upscale_out // 4

    def build():
        m = box["m"] = load_model(SHIPPED_SR4X, device=ctx.device, dtype=ctx.dtype)
        settings = pipelines.SamplingSettings.resolve(pipelines.model_defaults(m), None, None, plan.upscale_steps,
                                                      None, None)
        up = pipelines.plan_upscale(m, side, side, settings, tile=plan.upscale_tile, dtype=m.dtype, device=m.device)
        box["tile"] = up.tile
        return {"model": SHIPPED_SR4X.name, "input": side, "output": side * 4, "tile": up.tile, "overlap": up.overlap,
                "tiles": up.tiles, "steps": up.steps, "sampler": settings.sampler}
    if check.run(("upscale", "plan"), build, needs_s=5) is None:
        return
    m, tile = box["m"], box["tile"]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    picture = np.stack([xx, yy, (xx + yy) / 2], -1) * 200 + rng.normal(0, 20, (side, side, 3))
    picture = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))
    small = picture.resize((tile, tile))           # one tile of the same shape: compile / capture there
    unet = Variants(m.model.diffusion_model, ctx.backend)

    def measure():
        pipelines.upscale(m, small, tile=tile, steps=1, seed=1)     # warm-up: compile and capture happen here
        return timed(lambda: pipelines.upscale(m, picture, tile=tile, steps=plan.upscale_steps, seed=1), ctx.device,
                     warmup=0, repeats=plan.upscale_repeats)
    _each_variant(check, ctx, ("upscale", f"upscale_to_{plan.upscale_out}"), [unet], measure, NEEDS["upscale"])
