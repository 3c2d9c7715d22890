"""MoCo v2 (Chen et al. 2020) as in the MoCo CIFAR-10 demo: a momentum key encoder, a queue of
``queue_size`` L2-normalised keys, InfoNCE with temperature T, batch shuffling for the key encoder, and
(set ``train.bn_splits = 8``) SplitBatchNorm so that shuffling matters on one GPU.

``method.symmetric``: the demo's symmetrised loss, loss(q1, k2) + loss(q2, k1) (a sum, as the demo),
enqueueing both key sets; otherwise loss(q1, k2). In a DDP run the keys of all processes are enqueued
(in global-batch order, so the queue equals a one-process run's).

Shuffle-BN (``method.shuffle_bn``, MoCo's ``batch_shuffle_ddp`` / ``batch_unshuffle_ddp``): BatchNorm is
invariant to a permutation of the samples it normalises together, so shuffling only matters when the
key encoder's BN statistics are taken over *groups* of the batch that differ from the query encoder's:
the processes of a DDP run (per-process BN) and/or the ``train.bn_splits`` groups. The key inputs of all
processes are gathered, one permutation of the global batch is drawn (on every process from its own
generator, so resume stays deterministic, and process 0's is broadcast), each process encodes its
interleaved shard of the shuffled batch, the keys are gathered again and un-shuffled, and each process
keeps the keys of its own images. A one-process run with ``bn_splits = W * s`` therefore computes the
same keys as a W-process run with ``bn_splits = s``. In one process with plain BN (bn_splits = 1)
shuffling changes nothing. The key encoder keeps per-process BN in DDP runs (never SyncBatchNorm, which
would make the shuffle pointless; see ``trainer.convert_batchnorm``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SSLMethod, build_online
from .byol import MomentumMixin
from .config import TrainConfig
from .distributed import broadcast_, gather_global, rank, world_size
from .losses import info_nce
from .precision import at_least_fp32

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
        """Key-encoder projections (B, d) of this process's images ``x``, L2-normalised; with shuffle_bn
        computed on a globally shuffled batch (all processes) and un-shuffled (see the module docstring)."""
        if not self.cfg.method.shuffle_bn:
            return F.normalize(at_least_fp32(self.target(x)), dim=1)
        world, r = world_size(), rank()
        x_all = gather_global(x)  # (N, ...) in global-batch order
        n = x_all.shape[0]
        perm = torch.randperm(n, generator=self._rand_generator(x.device), device=x.device)
        broadcast_(perm, src=0)  # one permutation for all processes
        shard = slice(r, None, world)  # this process's interleaved shard of the shuffled batch
        k_shuffled = gather_global(self.target(x_all[perm[shard]]))  # row m: key of image perm[m]
        k_all = torch.empty_like(k_shuffled)
        k_all[perm] = k_shuffled  # un-shuffle: row n is the key of image n
        return F.normalize(at_least_fp32(k_all[shard]), dim=1)

    @torch.no_grad()
    def enqueue(self, *keys: torch.Tensor) -> None:
        """Push the keys (each (B, d), this process's) of all processes, in global-batch order."""
        k = torch.cat([gather_global(kk) for kk in keys])
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
            keys = (k1, k2)
            z = torch.cat([q1, q2])
        else:
            loss = info_nce(q1, k2, queue, T)
            keys = (k2,)
            z = q1
        self.enqueue(*keys)
        return {"loss": loss, "z": z.detach()}

    def on_step_end(self, step: int) -> None:
        self.update_target(step)
