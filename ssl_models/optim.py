"""Optimizers (SGD, LARS), parameter groups (trunk / predictor) and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig

__all__ = ["LARS", "LRSchedule", "build_optimizer"]


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) with SGD momentum, the update of apex's ``LARC`` and solo-learn's ``LARS``.

    For each parameter w not excluded, with gradient g, when ||w|| > 0 and ||g|| > 0:

        trust = eta ||w|| / (||g|| + wd ||w|| + eps),     g <- (g + wd w) * trust

    (with ``clip``: trust <- min(trust / lr, 1), apex's clip mode, so the local rate is min(trust, lr));
    when either norm is 0 the gradient is used as it is, without weight decay (as both references do).
    Groups with ``lars_exclude = True`` (biases and BN parameters) get plain SGD without weight decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
                 clip: bool = False, nesterov: bool = False, eps: float = 1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip,
                        nesterov=nesterov, eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    pn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = group["eta"] * pn / (gn + wd * pn + group["eps"])
                    if group["clip"]:
                        trust = torch.clamp(trust / lr, max=1.0)
                    adapted = (g.add(p, alpha=wd) if wd else g) * trust
                    g = torch.where((pn > 0) & (gn > 0), adapted, g)  # no host synchronisation
                if mom:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = g.clone()
                    else:
                        buf.mul_(mom).add_(g)
                    g = g.add(buf, alpha=mom) if group["nesterov"] else buf
                p.add_(g, alpha=-lr)
        return loss


def _split(params: list[nn.Parameter]) -> tuple[list, list]:
    """(weights, biases-and-norm-parameters): 1-D parameters are biases or BN affine parameters."""
    return [p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]


def build_optimizer(cfg: OptimConfig, groups: dict[str, list[nn.Parameter]], lr: float) -> torch.optim.Optimizer:
    """An optimizer over ``groups`` (``trunk``, ``predictor``) with peak trunk learning rate ``lr``.

    Each param group carries ``name``, ``base_lr`` (its peak lr), ``fixed`` (keep base_lr: the
    predictor with fix_predictor_lr) and ``base_wd`` with ``flow_decay`` (optim.predictor_decay = "flow":
    the group's SGD weight decay is base_wd * trunk_lr / group_lr, so it shrinks by trunk_lr * base_wd per
    step), which :class:`LRSchedule` reads.
    """
    pred_lr = lr * cfg.predictor_lr_ratio
    pred_wd = cfg.weight_decay if cfg.predictor_weight_decay is None else cfg.predictor_weight_decay
    flow = cfg.predictor_decay == "flow"
    spec = [
        ("trunk", groups.get("trunk", []), lr, cfg.weight_decay, False, False),
        ("predictor", groups.get("predictor", []), pred_lr, pred_wd, cfg.fix_predictor_lr, flow),
    ]
    param_groups = []
    for name, params, base, wd, fixed, flow_decay in spec:
        if not params:
            continue
        if cfg.name == "lars" and cfg.lars_exclude_bias_bn:
            weights, others = _split(params)
            parts = [(weights, wd, False), (others, 0.0, True)]
        else:
            parts = [(params, wd, False)]
        for ps, w, excl in parts:
            if ps:
                eff = w * lr / base if flow_decay else w  # "flow": per-step decay lr * w at the peak lr
                param_groups.append(dict(params=ps, lr=base, weight_decay=eff, name=name, base_lr=base,
                                         fixed=fixed, lars_exclude=excl, base_wd=w, flow_decay=flow_decay))
    if cfg.name == "lars":
        return LARS(param_groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta, clip=cfg.lars_clip,
                    nesterov=cfg.nesterov)
    for g in param_groups:
        g.pop("lars_exclude")
    return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


class LRSchedule:
    """Per-step learning rates: linear warm-up from 0 over ``warmup_steps``, then cosine from each group's
    ``base_lr`` to ``min_lr`` (scaled by the group's share of the trunk lr) at ``total_steps``, or constant."""

    def __init__(self, cfg: OptimConfig, total_steps: int, steps_per_epoch: int, trunk_lr: float):
        self.kind = cfg.schedule
        self.total = max(1, int(total_steps))
        self.warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.min_ratio = cfg.min_lr / trunk_lr if trunk_lr > 0 else 0.0
        self.trunk_lr = trunk_lr

    def factor(self, step: int) -> float:
        """Multiplier of base_lr at optimizer step ``step`` (0-based)."""
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total - self.warmup)
        t = min(max(step - self.warmup, 0), span) / span
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every non-fixed group's lr for ``step`` (and the weight decay of ``flow_decay`` groups, so
        that they shrink by trunk_lr * base_wd per step); returns the trunk's lr."""
        f = self.factor(step)
        trunk = None
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] if g.get("fixed") else g["base_lr"] * f
            if g.get("name") == "trunk" and trunk is None:
                trunk = g["lr"]
        trunk_lr = trunk if trunk is not None else self.trunk_lr * f
        for g in optimizer.param_groups:
            if g.get("flow_decay") and g["lr"] > 0:
                g["weight_decay"] = g["base_wd"] * trunk_lr / g["lr"]
        return trunk if trunk is not None else f
