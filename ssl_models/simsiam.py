"""SimSiam (Chen & He 2021): symmetric negative cosine between each view's prediction and the other
view's stop-gradient projection. With a linear predictor and a rule it is DirectPred/DirectCopy on
SimSiam; ``method.stop_gradient = false`` and ``predictor.kind = 'none'`` are the collapse ablations."""

from __future__ import annotations

import torch

from .base import SSLMethod, build_online
from .config import TrainConfig
from .losses import negative_cosine

__all__ = ["SimSiam"]


class SimSiam(SSLMethod):
    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.online = build_online(cfg)

    def forward(self, views: list[torch.Tensor]) -> dict:
        x1, x2 = views[0], views[1]
        z1, p1 = self.online(x1)
        z2, p2 = self.online(x2)
        loss = 0.5 * (negative_cosine(p1, self._stop(z2)) + negative_cosine(p2, self._stop(z1)))
        self.observe(z1, z2)
        return {"loss": loss, "z": torch.cat([z1, z2]).detach()}
