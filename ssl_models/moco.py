"""MoCo v2 (Chen et al. 2020) as in the MoCo CIFAR-10 demo: a momentum key encoder, a queue of
``queue_size`` L2-normalised keys, InfoNCE with temperature T, batch shuffling for the key encoder, and
(set ``train.bn_splits = 8``) SplitBatchNorm so that shuffling matters on one GPU.

``method.symmetric``: the demo's symmetrised loss, loss(q1, k2) + loss(q2, k1) (a sum, as the demo),
enqueueing both key sets; otherwise loss(q1, k2). In a DDP run the keys of all processes are enqueued;
the shuffle is within each process's batch (per-process BN groups, as with SplitBatchNorm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SSLMethod, build_online
from .byol import MomentumMixin
from .config import TrainConfig
from .distributed import gather_nograd
from .losses import info_nce

__all__ = ["MoCoV2"]


class MoCoV2(MomentumMixin, SSLMethod):
    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.online = build_online(cfg, with_predictor=False)
        self._init_target()
        d, k = cfg.projector.out_dim, cfg.method.queue_size
        self.register_buffer("queue", F.normalize(torch.randn(d, k), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def networks(self):
        return [self.online, self.target]

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Key-encoder projections (B, d), L2-normalised, computed on a shuffled batch then unshuffled."""
        if self.cfg.method.shuffle_bn:
            idx = torch.randperm(x.shape[0], generator=self._rand_generator(x.device), device=x.device)
            k = self.target(x[idx])
            k = k[torch.argsort(idx)]
        else:
            k = self.target(x)
        return F.normalize(k.float(), dim=1)

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        k = gather_nograd(k)
        n, size = k.shape[0], self.queue.shape[1]
        idx = (self.queue_ptr + torch.arange(n, device=k.device)) % size
        if n >= size:  # more keys than slots: keep the newest
            k, idx = k[-size:], idx[-size:]
        self.queue[:, idx] = k.T.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def forward(self, views: list[torch.Tensor]) -> dict:
        x1, x2 = views[0], views[1]
        T = self.cfg.method.temperature
        queue = self.queue.clone()
        q1, _ = self.online(x1)
        k2 = self.keys(x2)
        if self.cfg.method.symmetric:
            q2, _ = self.online(x2)
            k1 = self.keys(x1)
            loss = info_nce(q1, k2, queue, T) + info_nce(q2, k1, queue, T)
            keys = torch.cat([k1, k2])
            z = torch.cat([q1, q2])
        else:
            loss = info_nce(q1, k2, queue, T)
            keys = k2
            z = q1
        self.enqueue(keys)
        return {"loss": loss, "z": z.detach()}

    def on_step_end(self, step: int) -> None:
        self.update_target(step)
