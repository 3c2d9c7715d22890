"""SimCLR (Chen et al. 2020): NT-Xent over the projections of two views, temperature ``method.temperature``;
negatives from every process in a DDP run."""

from __future__ import annotations

import torch

from .base import SSLMethod, build_online
from .config import TrainConfig
from .losses import nt_xent

__all__ = ["SimCLR"]


class SimCLR(SSLMethod):
    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.online = build_online(cfg, with_predictor=False)

    def forward(self, views: list[torch.Tensor]) -> dict:
        z1, _ = self.online(views[0])
        z2, _ = self.online(views[1])
        loss = nt_xent(z1, z2, self.cfg.method.temperature)
        return {"loss": loss, "z": torch.cat([z1, z2]).detach()}
