"""The method registry: ``build_method(cfg)`` picks the module for ``cfg.method.name``."""

from __future__ import annotations

from .base import SSLMethod
from .byol import BYOL
from .config import TrainConfig
from .gsg import GSG
from .moco import MoCoV2
from .simclr import SimCLR
from .simsiam import SimSiam

__all__ = ["METHOD_CLASSES", "build_method"]

METHOD_CLASSES: dict[str, type[SSLMethod]] = {
    "simsiam": SimSiam,
    "byol": BYOL,
    "simsiam-gsg": GSG,
    "byol-gsg": GSG,
    "simclr": SimCLR,
    "mocov2": MoCoV2,
}


def build_method(cfg: TrainConfig) -> SSLMethod:
    """The method module of ``cfg`` (on the CPU, fp32, freshly initialised from torch's global RNG)."""
    return METHOD_CLASSES[cfg.method.name](cfg)
