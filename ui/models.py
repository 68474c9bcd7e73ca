"""The model picker's view of `weights/`, and the app's one model cache.

Listing reads only each file's header (the safetensors metadata, or a `.yaml` beside a `.ckpt`),
so the pickers fill instantly even for multi-GB files; a model is loaded on first use, on the
app's device and dtype, and kept until another model pushes it out (at most MAX_LOADED held).
"""
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from core import load_model
from core.capabilities import AUTOENCODER, Capabilities, capabilities
from core.pipelines.defaults import Defaults, model_defaults
from core.pipelines.offload import enable_offload
from core.checkpoints.bundled_configs import BUNDLED_CONFIGS
from core.lora import NETWORK_FOLDERS
from core.checkpoints.compvis_yaml import config_from_yaml
from core.checkpoints.detect import detect_family
from core.checkpoints.config_json import config_from_json

MAX_LOADED = 3          # one per generation tab (text-to-image, inpainting, upscaling) fits on a CPU
MODEL_SUFFIXES = (".safetensors", ".ckpt")

# The tabs are named by the task they run; a tab lists the models whose capabilities serve it
# (core/capabilities.py): inpainting takes a dedicated inpainting model or, by latent blending,
# any text or unconditional model.
TAB_NAMES = {"txt2img": "text-to-image", "img2img": "image-to-image", "inpaint": "inpainting",
             "upscale": "upscaling", "classgen": "class-conditional or unconditional",
             "layout": "layout-to-image"}
# A tab that runs more than one task (else a tab's name is its task's).
TAB_TASKS = {"classgen": ("class", "unconditional")}


@dataclass(frozen=True)
class ModelEntry:
    name: str                   # path relative to the weights folder: the picker's value and the API's `model`
    path: Path
    caps: Capabilities          # what it can do (core/capabilities.py), from its config alone
    label: str                  # ldm_studio_name, else the file name
    defaults: Defaults | None   # what runs when a setting is left empty (core.pipelines.model_defaults)
    config: str | None = None   # the YAML beside a .ckpt / foreign .safetensors, or a bundled config's name
    model_config: object = None # the parsed config (LatentDiffusionConfig / AutoencoderConfig)

    @property
    def task(self) -> str:
        """The model's family ("conditional", "upscale-ldm", ..., "autoencoder"), as the console shows it."""
        return self.caps.family


def _read_entry(weights_dir: Path, path: Path) -> ModelEntry:
    """The entry for one file, from its header only. ValueError says why a file cannot be used."""
    metadata, config_file, shapes = {}, None, {}
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                if "ldm_studio_config" not in metadata:
                    shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as err:        # safetensors raises its own error types for broken headers
            raise ValueError(f"not a readable .safetensors file ({err})") from None
    yaml_path = next((p for p in (path.with_suffix(".yaml"), path.with_suffix(".yml")) if p.is_file()), None)
    if "ldm_studio_config" in metadata:
        cfg = config_from_json(metadata["ldm_studio_config"])
    elif yaml_path is not None:
        cfg, config_file = config_from_yaml(yaml_path), str(yaml_path)
    else:
        found = detect_family(shapes) if shapes else None      # the family from its keys and shapes
        if found is None or found.config is None:
            why = f" ({found.message})" if found is not None and found.message else ""
            raise ValueError(f"no config{why}: put the YAML it was released with beside it as {path.stem}.yaml")
        cfg, config_file = BUNDLED_CONFIGS[found.config](), found.config
    name = path.relative_to(weights_dir).as_posix()
    label = metadata.get("ldm_studio_name") or path.stem
    caps = capabilities(cfg)
    defaults = None if caps.family == AUTOENCODER else model_defaults(cfg, metadata)
    return ModelEntry(name, path, caps, label, defaults=defaults, config=config_file, model_config=cfg)


class ModelCache:
    """Lists `weights_dir` by task and holds up to MAX_LOADED loaded models (least recently used
    goes first). The app's only long-lived state besides what is on disk."""

    def __init__(self, weights_dir: Path, device: str, dtype: str, offload: bool = False):
        self.weights_dir = Path(weights_dir)
        self.offload = offload                   # --medvram: core.pipelines.offload on each loaded model
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self._loaded: OrderedDict[str, tuple[float, torch.nn.Module]] = OrderedDict()
        self._lock = threading.Lock()

    # ---- listing -----------------------------------------------------------------------------
    def scan(self) -> tuple[list[ModelEntry], dict[str, str]]:
        """(usable entries sorted by name, {file name: why it cannot be used})."""
        entries, problems = [], {}
        if not self.weights_dir.is_dir():
            return entries, problems
        for path in sorted(p for p in self.weights_dir.rglob("*") if p.suffix in MODEL_SUFFIXES and p.is_file()
                           and p.relative_to(self.weights_dir).parts[0] not in NETWORK_FOLDERS.values()):
            try:
                entries.append(_read_entry(self.weights_dir, path))
            except ValueError as err:
                problems[path.relative_to(self.weights_dir).as_posix()] = str(err)
        return entries, problems

    def for_tab(self, tab: str) -> list[ModelEntry]:
        """The models a tab can use, dedicated ones first (an inpainting model before a text one)."""
        tasks = TAB_TASKS.get(tab, (tab,))
        entries = [e for e in self.scan()[0] if any(e.caps.serves(t) for t in tasks)]
        return sorted(entries, key=lambda e: (not e.caps.dedicated_inpainting, e.name))

    def choices(self, tab: str) -> list[tuple[str, str]]:
        return [(f"{e.label} ({e.name})" if e.label != Path(e.name).stem else e.name, e.name)
                for e in self.for_tab(tab)]

    def entry(self, tab: str, name: str | None) -> ModelEntry:
        """The entry for `name` (None or "": the tab's first model); ValueError in plain words."""
        entries = self.for_tab(tab)
        if not entries:
            raise ValueError(f"No {TAB_NAMES[tab]} model in {self.weights_dir}/. Train one in the Train tab "
                             "and press 'Use this model', or see the README (Default models).")
        if not name:
            return entries[0]
        for e in entries:
            if e.name == name or e.label == name:
                return e
        raise ValueError(f"Model {name!r} is not a {TAB_NAMES[tab]} model in {self.weights_dir}/; "
                         f"choose one of: {', '.join(e.name for e in entries)}.")

    # ---- loading -----------------------------------------------------------------------------
    def load(self, entry: ModelEntry) -> torch.nn.Module:
        """The loaded model for `entry` (reloaded when the file changed since it was loaded)."""
        mtime = entry.path.stat().st_mtime
        with self._lock:
            held = self._loaded.get(entry.name)
            if held is not None and held[0] == mtime:
                self._loaded.move_to_end(entry.name)
                return held[1]
            self._loaded.pop(entry.name, None)
            while len(self._loaded) >= MAX_LOADED:
                self._loaded.popitem(last=False)
            model = load_model(entry.path, config=entry.config, device=self.device, dtype=self.dtype)
            if self.offload:
                enable_offload(model, self.device)         # a no-op on the CPU
            self._loaded[entry.name] = (mtime, model)
            return model
