"""Our configs <-> JSON, for the metadata of project-native .safetensors files.

Every dataclass is written with a "type" field naming it; reading looks that name up in an explicit
table of our config classes (never an import by name).
"""

import dataclasses
import json

from core.models.autoencoder import AutoencoderConfig, DDConfig
from core.models.clip_text import FrozenCLIPEmbedderConfig, FrozenOpenCLIPEmbedderConfig
from core.models.conditioners import (ClassEmbedderConfig, LayoutEmbedderConfig, SpatialRescalerConfig,
                                      TransformerEmbedderConfig)
from core.models.diffusion import LatentDiffusionConfig, NoiseAugmentationConfig
from core.models.sdxl_conditioner import (ConcatTimestepEmbedderNDConfig, EmbedderSpec,
                                          FrozenOpenCLIPEmbedder2Config, GeneralConditionerConfig)
from core.models.unet import UNetConfig

CONFIG_TYPES = {cls.__name__: cls for cls in (
    LatentDiffusionConfig, UNetConfig, AutoencoderConfig, DDConfig, NoiseAugmentationConfig,
    FrozenOpenCLIPEmbedderConfig, FrozenCLIPEmbedderConfig, TransformerEmbedderConfig,
    ClassEmbedderConfig, LayoutEmbedderConfig, SpatialRescalerConfig, GeneralConditionerConfig, EmbedderSpec,
    FrozenOpenCLIPEmbedder2Config, ConcatTimestepEmbedderNDConfig)}


def config_to_plain(obj):
    """Our config as plain JSON / YAML values (dicts with a "type", lists, numbers, strings)."""
    if dataclasses.is_dataclass(obj):
        return {"type": type(obj).__name__,
                **{f.name: config_to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, (list, tuple)):
        return [config_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: config_to_plain(v) for k, v in obj.items()}
    return obj


def _from_plain(obj):
    if isinstance(obj, dict) and "type" in obj:
        name = obj["type"]
        if name not in CONFIG_TYPES:
            raise ValueError(f"unknown config type {name!r}; "
                             f"known: {', '.join(CONFIG_TYPES)}")
        return CONFIG_TYPES[name](**{k: _from_plain(v) for k, v in obj.items() if k != "type"})
    if isinstance(obj, list):
        return [_from_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _from_plain(v) for k, v in obj.items()}
    return obj


def config_from_plain(obj, where: str = "the file's metadata"):
    """The config back from config_to_plain's values; ValueError naming `where` when they do not fit."""
    try:
        return _from_plain(obj)
    except TypeError as err:                              # a field a config class does not have, or lacks
        raise ValueError(f"the config in {where} is not valid: {err}") from err


def config_to_json(cfg) -> str:
    return json.dumps(config_to_plain(cfg), sort_keys=False)


def config_from_json(text: str):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"the config in the file's metadata is not valid: {err}") from err
    return config_from_plain(data)
