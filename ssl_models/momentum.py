"""Momentum (EMA) target networks: the update, its schedule, and freezing helpers."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["cosine_momentum", "deactivate_requires_grad", "make_target", "update_momentum"]


@torch.no_grad()
def update_momentum(target: nn.Module, online: nn.Module, m: float) -> None:
    """xi <- m * xi + (1 - m) * theta for every parameter (buffers are the target's own, as in BYOL/MoCo).

    ``target`` and ``online`` must have the same parameter structure.
    """
    t = [p for p in target.parameters()]
    o = [p.detach() for p in online.parameters()]
    if len(t) != len(o):
        raise ValueError(f"target has {len(t)} parameters, online {len(o)}")
    if not t:
        return
    torch._foreach_mul_(t, m)
    torch._foreach_add_(t, o, alpha=1.0 - m)


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule m_k = final - (final - base) (cos(pi k / K) + 1) / 2, from ``base`` at k = 0 to ``final``."""
    if total_steps <= 0:
        return base
    k = min(max(step, 0), total_steps)
    return final - (final - base) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


def deactivate_requires_grad(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def make_target(online: nn.Module) -> nn.Module:
    """A frozen deep copy of ``online`` (the target starts equal to the online network)."""
    return deactivate_requires_grad(copy.deepcopy(online))
