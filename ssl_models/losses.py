"""Losses, computed in fp32 whatever the autocast state (pytorch/pytorch#69512: fp16 cosine can be 0).

* :func:`negative_cosine` -- SimSiam/BYOL regression loss, -cos(p, z) averaged over the batch, in [-1, 1].
* :func:`nt_xent` -- SimCLR's NT-Xent over 2N views (optionally with negatives gathered from all processes).
* :func:`info_nce` -- MoCo's InfoNCE with a queue of negative keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import gather_with_grad, rank, world_size
from .precision import at_least_fp32

__all__ = ["info_nce", "negative_cosine", "nt_xent"]


def negative_cosine(p: torch.Tensor, z: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """-cos(p_i, z_i) for rows of p, z (B, d); mean over the batch (a scalar) unless ``reduce=False`` (B,)."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        cos = F.cosine_similarity(at_least_fp32(p), at_least_fp32(z), dim=-1, eps=1e-8)
    return -cos.mean() if reduce else -cos


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = True) -> torch.Tensor:
    """NT-Xent (SimCLR): for each of the 2B views, the other view of its image is the positive among all
    other 2B' - 1 views (B' = B times the number of processes when ``gather`` and DDP is running).

    z1, z2: (B, d) projections of the two views of the same B images. Returns the mean loss over the
    local 2B views (so DDP's gradient averaging gives the global mean).
    """
    with torch.autocast(device_type=z1.device.type, enabled=False):
        a = F.normalize(at_least_fp32(z1), dim=1)
        b = F.normalize(at_least_fp32(z2), dim=1)
        n = a.shape[0]
        if gather and world_size() > 1:
            a_all, b_all = gather_with_grad(a), gather_with_grad(b)
            offset = rank() * n
        else:
            a_all, b_all, offset = a, b, 0
        n_all = a_all.shape[0]
        local = torch.cat([a, b])  # (2B, d)
        bank = torch.cat([a_all, b_all])  # (2B', d)
        logits = local @ bank.T / temperature  # (2B, 2B')
        idx = torch.arange(n, device=a.device) + offset
        self_idx = torch.cat([idx, idx + n_all])
        pos_idx = torch.cat([idx + n_all, idx])
        rows = torch.arange(2 * n, device=a.device)
        logits = logits.masked_fill(
            torch.zeros_like(logits, dtype=torch.bool).index_put_((rows, self_idx), torch.tensor(True, device=a.device)),
            float("-inf"),
        )
        return F.cross_entropy(logits, pos_idx)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo InfoNCE. q (B, d) queries, k (B, d) positive keys (no gradient), queue (d, K) negative keys.

    q and k are L2-normalised here (the queue is stored normalised). Returns the mean cross-entropy of
    picking the positive among 1 + K candidates.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = F.normalize(at_least_fp32(q), dim=1)
        k = F.normalize(at_least_fp32(k), dim=1)
        pos = (q * k).sum(dim=1, keepdim=True)
        neg = q @ at_least_fp32(queue)
        logits = torch.cat([pos, neg], dim=1) / temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels)
