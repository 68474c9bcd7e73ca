"""Which conditioner module each conditioner config builds: an explicit table, no import strings."""

from torch import nn

from core.models.clip_text import (FrozenCLIPEmbedder, FrozenCLIPEmbedderConfig, FrozenOpenCLIPEmbedder,
                                   FrozenOpenCLIPEmbedderConfig)
from core.models.conditioners import (ClassEmbedder, ClassEmbedderConfig, LayoutEmbedder, LayoutEmbedderConfig,
                                      SpatialRescaler, SpatialRescalerConfig, TransformerEmbedder,
                                      TransformerEmbedderConfig)

CONDITIONERS: dict[type, type[nn.Module]] = {
    FrozenOpenCLIPEmbedderConfig: FrozenOpenCLIPEmbedder,   # SD 2.x
    FrozenCLIPEmbedderConfig: FrozenCLIPEmbedder,           # SD 1.x
    TransformerEmbedderConfig: TransformerEmbedder,         # LDM's jointly trained T_theta
    ClassEmbedderConfig: ClassEmbedder,                     # class-conditional LDMs
    LayoutEmbedderConfig: LayoutEmbedder,                   # layout-to-image (ours)
    SpatialRescalerConfig: SpatialRescaler,                 # semantic synthesis (segmentation, concat)
}


def build_conditioner(cfg) -> nn.Module | None:
    """The cond_stage_model for a conditioner config; None where no network conditions the UNet
    (unconditional models, the LR image of LDM-SR, the first-stage-encoded masked image)."""
    if cfg is None or isinstance(cfg, str):
        return None
    if type(cfg) not in CONDITIONERS:
        raise ValueError(f"no conditioner for config {type(cfg).__name__}; "
                         f"known: {', '.join(c.__name__ for c in CONDITIONERS)}")
    return CONDITIONERS[type(cfg)](cfg)
