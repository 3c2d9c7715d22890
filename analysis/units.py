"""Optimizer settings <-> gradient-flow units (reference/theory.md §1.2).

The flow of Tian et al. (Eqs. 2-4) has time t, predictor rate ratio alpha_p, EMA rate beta and weight
decay eta. A discrete SGD run with learning rate ``lr`` maps onto it as follows (PyTorch convention,
``torch.optim.SGD(weight_decay=wd)`` shrinks W by lr*wd per step):

    t       = lr_eff * steps,            lr_eff = lr / (1 - momentum)
    alpha_p = predictor_lr / lr
    eta     = wd                          (trunk; the paper's convention eta = wd_paper / lr via ``convention``)
    eta_p   = alpha_p * predictor_wd      (the flow's predictor decay; Theorem 1 needs eta_p == eta)
    beta    = (1 - ema_momentum) / lr_eff

What this ignores: SGD momentum is folded into lr_eff, exact only when the gradient varies slowly
over 1/(1-momentum) steps (the EMA is not affected by momentum, hence beta uses lr_eff); batch noise
(the flow is the large-batch limit); schedules (use the lr at the step of interest); the cosine
loss's normalisation (the flow is for the Euclidean loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FlowUnits", "OptimizerUnits", "steps_to_flow_time", "to_flow", "to_optimizer"]


@dataclass(frozen=True)
class OptimizerUnits:
    """A discrete run: SGD learning rate, weight decays, EMA momentum (None: SimSiam, W_a = W), steps."""

    lr: float
    weight_decay: float = 0.0
    predictor_lr: float | None = None  # None: same as lr
    predictor_weight_decay: float | None = None  # None: same as weight_decay (coupled, as torch does)
    ema_momentum: float | None = None
    momentum: float = 0.0
    steps: int = 0
    convention: str = "pytorch"  # or "paper": weight_decay is the per-step multiplicative shrink eta_bar


@dataclass(frozen=True)
class FlowUnits:
    """Flow-unit parameters; ``eta_p`` is the predictor's decay in the flow (Eq. 2 has eta_p = eta)."""

    t: float
    alpha_p: float
    eta: float
    eta_p: float
    beta: float | None

    @property
    def theorem1_exact(self) -> bool:
        """Theorem 1's invariant needs the predictor and trunk decays equal in flow units."""
        return abs(self.eta_p - self.eta) <= 1e-12 * max(1.0, abs(self.eta))


def _check(name: str, value: float, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} = {value!r}: {allowed}")


def to_flow(opt: OptimizerUnits) -> FlowUnits:
    """Map optimizer settings to flow units (see the module docstring for what is ignored)."""
    _check("lr", opt.lr, opt.lr > 0, "must be > 0")
    _check("momentum", opt.momentum, 0 <= opt.momentum < 1, "must be in [0, 1)")
    _check("convention", opt.convention, opt.convention in ("pytorch", "paper"), "must be 'pytorch' or 'paper'")
    lr_eff = opt.lr / (1.0 - opt.momentum)
    plr = opt.lr if opt.predictor_lr is None else opt.predictor_lr
    pwd = opt.weight_decay if opt.predictor_weight_decay is None else opt.predictor_weight_decay
    alpha_p = plr / opt.lr
    eta = opt.weight_decay if opt.convention == "pytorch" else opt.weight_decay / opt.lr
    eta_p = alpha_p * (pwd if opt.convention == "pytorch" else pwd / plr)
    beta = None
    if opt.ema_momentum is not None:
        _check("ema_momentum", opt.ema_momentum, 0 <= opt.ema_momentum <= 1, "must be in [0, 1]")
        beta = (1.0 - opt.ema_momentum) / lr_eff
    return FlowUnits(t=lr_eff * opt.steps, alpha_p=alpha_p, eta=eta, eta_p=eta_p, beta=beta)


def to_optimizer(flow: FlowUnits, lr: float, momentum: float = 0.0) -> OptimizerUnits:
    """Inverse of :func:`to_flow` in the PyTorch convention, for a chosen ``lr`` (and SGD momentum).

    The predictor weight decay is set to eta_p / alpha_p so that the flow's predictor decay is exact.
    """
    _check("lr", lr, lr > 0, "must be > 0")
    lr_eff = lr / (1.0 - momentum)
    steps = round(flow.t / lr_eff)
    ema = None if flow.beta is None else 1.0 - flow.beta * lr_eff
    return OptimizerUnits(
        lr=lr,
        weight_decay=flow.eta,
        predictor_lr=flow.alpha_p * lr,
        predictor_weight_decay=flow.eta_p / flow.alpha_p,
        ema_momentum=ema,
        momentum=momentum,
        steps=steps,
    )


def steps_to_flow_time(steps, lr, momentum: float = 0.0) -> np.ndarray:
    """Flow time of optimizer steps under a learning-rate schedule recorded at those steps.

    Args:
        steps: (n,) increasing step counts: the number of updates applied before each record.
        lr: (n,) learning rate recorded at each step, i.e. the rate of the update that follows it.
        momentum: SGD momentum mu; the flow's time step is lr_eff = lr / (1 - mu) (module docstring).

    Returns:
        (n,) flow time t(k) = sum over the updates i < k of lr_eff(i). Between two records k_a < k_b
        the per-update rate is taken linear in the step, lr(i) = lr_a + (lr_b - lr_a)(i - k_a)/(k_b - k_a),
        and summed exactly over the n = k_b - k_a updates i = k_a .. k_b - 1:
        n lr_a + (lr_b - lr_a)(n - 1)/2. That is the exact sum for a constant rate, for a rate linear in
        the step (warm-up), and for records at every step (n = 1 gives lr_a); for a curved schedule
        (cosine) recorded sparsely it is the sum of its piecewise-linear interpolant. Before the first
        record the rate is taken constant at its first recorded value.
    """
    k = np.asarray(steps, dtype=np.float64)
    rate = np.asarray(lr, dtype=np.float64)
    _check("momentum", momentum, 0 <= momentum < 1, "must be in [0, 1)")
    if k.ndim != 1 or rate.shape != k.shape:
        raise ValueError(f"steps and lr must be 1-D of one length, got shapes {k.shape} and {rate.shape}")
    if k.size and not (np.all(np.isfinite(rate)) and np.all(rate > 0)):
        bad = rate[~(np.isfinite(rate) & (rate > 0))][0]
        raise ValueError(f"lr = {bad!r}: every recorded learning rate must be finite and > 0")
    if k.size and (k[0] < 0 or np.any(np.diff(k) <= 0)):
        raise ValueError("steps must be >= 0 and strictly increasing")
    if k.size == 0:
        return k
    eff = rate / (1.0 - momentum)
    n = np.diff(k)
    increments = n * eff[:-1] + (eff[1:] - eff[:-1]) * (n - 1.0) / 2.0
    return np.concatenate([[k[0] * eff[0]], k[0] * eff[0] + np.cumsum(increments)])
