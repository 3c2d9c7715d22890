"""BYOL (Grill et al. 2020): the online network predicts the projection of the other view by a momentum
(EMA) target encoder, xi <- m xi + (1 - m) theta after every step, m on a cosine schedule from
``method.momentum`` to ``method.momentum_final`` (or constant). The loss is the negative cosine in
[-1, 1] (BYOL's 2 - 2 cos up to an affine map). ``method.ema = false`` takes the targets from the online
network (no momentum encoder). With a linear predictor and a rule this is DirectPred/DirectCopy."""

from __future__ import annotations

import torch

from .base import SSLMethod, build_online
from .config import TrainConfig
from .losses import negative_cosine
from .momentum import cosine_momentum, make_target, update_momentum

__all__ = ["BYOL", "MomentumMixin"]


class MomentumMixin:
    """A frozen copy of the online trunk (backbone + projector) updated by EMA after each step."""

    def _init_target(self) -> None:
        self.target = make_target(self.online.encoder)

    def momentum_at(self, step: int) -> float:
        m = self.cfg.method
        if m.momentum_schedule == "constant":
            return m.momentum
        return cosine_momentum(step, self.total_steps, m.momentum, m.momentum_final)

    def update_target(self, step: int) -> float:
        mom = self.momentum_at(step)
        update_momentum(self.target, self.online.encoder, mom)
        return mom


class BYOL(MomentumMixin, SSLMethod):
    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.online = build_online(cfg)
        self.use_ema = cfg.method.ema
        if self.use_ema:
            self._init_target()

    def networks(self):
        return [self.online] + ([self.target] if self.use_ema else [])

    def forward(self, views: list[torch.Tensor]) -> dict:
        x1, x2 = views[0], views[1]
        z1, p1 = self.online(x1)
        z2, p2 = self.online(x2)
        if self.use_ema:
            with torch.no_grad():
                t1, t2 = self.target(x1), self.target(x2)
        else:
            t1, t2 = self._stop(z1), self._stop(z2)
        loss = 0.5 * (negative_cosine(p1, t2) + negative_cosine(p2, t1))
        self.observe(z1, z2)
        out = {"loss": loss, "z": torch.cat([z1, z2]).detach()}
        if self.use_ema:
            out["z_target"] = torch.cat([t1, t2])
        return out

    def on_step_end(self, step: int) -> None:
        if self.use_ema:
            self.update_target(step)
        self.apply_rule(step)
