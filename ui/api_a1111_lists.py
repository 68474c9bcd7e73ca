"""The /sdapi/v1 listings (A1111's `SDModelItem`, `SamplerItem`, `UpscalerItem` ... lists): what
clients read to fill their pickers. They read weights/ afresh each time, so `refresh-checkpoints`
has nothing to do."""
from pathlib import Path

from fastapi import APIRouter
from safetensors import safe_open

from core.pipelines.hires import LATENT_UPSCALERS
from core.pipelines.infotext import cached_model_hash
from core.samplers import SAMPLER_DISPLAY_NAMES, SCHEDULE_DISPLAY_NAMES
from core.samplers.registry import SAMPLER_ALIASES

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


def sd_models(api) -> list[dict]:
    out = []
    for e in api.checkpoints():
        sha = cached_model_hash(e.path)
        out.append({"title": api.title(e), "model_name": str(Path(e.name).with_suffix("")).replace("/", "_"),
                    "hash": sha, "sha256": None, "filename": str(e.path.resolve()), "config": e.config})
    return out


def samplers() -> list[dict]:
    aliases = {}
    for alias, key in SAMPLER_ALIASES.items():
        aliases.setdefault(key, []).append(alias)
    return [{"name": label, "aliases": [key, *aliases.get(key, [])], "options": {}}
            for key, label in SAMPLER_DISPLAY_NAMES.items()]


def schedulers() -> list[dict]:
    return [{"name": key, "label": label, "aliases": None, "default_rho": 7.0 if key == "karras" else None,
             "need_inner_model": False} for key, label in SCHEDULE_DISPLAY_NAMES.items()]


def upscalers(api) -> list[dict]:
    """A1111's fixed three, then each super-resolution model in weights/ (by its label)."""
    fixed = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
             for name in ("None", "Lanczos", "Nearest")]
    return fixed + [{"name": e.label, "model_name": e.name, "model_path": str(e.path.resolve()), "model_url": None,
                     "scale": e.caps.factor} for e in api.upscaler_models()]


def latent_upscale_modes() -> list[dict]:
    return [{"name": name} for name in LATENT_UPSCALERS]


def loras(api) -> list[dict]:
    """weights/lora/*.safetensors, as A1111's Lora extension lists them."""
    folder = Path(api.studio.settings.weights_dir) / "lora"
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return [{"name": p.stem, "alias": p.stem, "path": str(p.resolve()), "metadata": {}} for p in files]


def embeddings(api) -> dict:
    """weights/embeddings/: A1111's {loaded: {name: EmbeddingItem}, skipped: {}}; the vector
    count and width read from a .safetensors header (0 for other formats, which are not opened)."""
    folder = Path(api.studio.settings.weights_dir) / "embeddings"
    loaded = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.suffix not in EMBEDDING_SUFFIXES:
            continue
        vectors = shape = 0
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as f:
                    dims = [tuple(f.get_slice(k).get_shape()) for k in f.keys()]
                vectors, shape = (dims[0] if dims and len(dims[0]) == 2 else (0, 0))
            except Exception:           # safetensors raises its own types for broken headers
                pass
        loaded[path.stem] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                             "shape": shape, "vectors": vectors}
    return {"loaded": loaded, "skipped": {}}


def memory() -> dict:
    """A1111's GET memory: RAM from /proc/meminfo, CUDA from torch when there is a GPU."""
    import torch
    ram = {}
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        kib = {k: int(v.split()[0]) * 1024 for k, v in info.items() if v.strip().endswith("kB")}
        ram = {"free": kib.get("MemAvailable", 0), "total": kib.get("MemTotal", 0)}
        ram["used"] = ram["total"] - ram["free"]
    except (OSError, ValueError):
        ram = {"error": "unavailable on this system"}
    if not torch.cuda.is_available():
        return {"ram": ram, "cuda": {"error": "no CUDA device"}}
    free, total = torch.cuda.mem_get_info()
    return {"ram": ram, "cuda": {"system": {"free": free, "used": total - free, "total": total},
                                 "active": {"current": torch.cuda.memory_allocated(),
                                            "peak": torch.cuda.max_memory_allocated()},
                                 "reserved": {"current": torch.cuda.memory_reserved(),
                                              "peak": torch.cuda.max_memory_reserved()}}}


def add_list_routes(router: APIRouter, api) -> None:
    router.add_api_route("/sd-models", lambda: sd_models(api), methods=["GET"])
    router.add_api_route("/samplers", samplers, methods=["GET"])
    router.add_api_route("/schedulers", schedulers, methods=["GET"])
    router.add_api_route("/upscalers", lambda: upscalers(api), methods=["GET"])
    router.add_api_route("/latent-upscale-modes", latent_upscale_modes, methods=["GET"])
    router.add_api_route("/sd-vae", lambda: [], methods=["GET"])         # the VAE is inside each model file
    router.add_api_route("/loras", lambda: loras(api), methods=["GET"])
    router.add_api_route("/embeddings", lambda: embeddings(api), methods=["GET"])
    router.add_api_route("/refresh-checkpoints", lambda: None, methods=["POST"])
    router.add_api_route("/memory", memory, methods=["GET"])
    router.add_api_route("/scripts", lambda: {"txt2img": [], "img2img": []}, methods=["GET"])   # we run none
