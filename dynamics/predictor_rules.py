"""Predictor rules W_p = phi(F-hat): DirectPred, DirectCopy, DirectSet(alpha) and user rules.

One rule object serves every world: the matrix flow and sampled SGD call ``rule(F)`` on a batch of
(..., n, n) correlation matrices, the per-mode ODE calls ``rule.phi(s)`` on eigenvalues (..., k), and
``ssl_models`` calls ``rule(F_hat)`` on the ResNet projector's running correlation.

Prototyping a new rule takes a few lines::

    @spectral_rule
    def quarter_power(s, s_max):          # eigenvalues (..., k) and their max (..., 1)
        return (s.clamp(min=0) / s_max) ** 0.25 + 0.05

A spectral rule is a function of the eigenvalues of F-hat applied in its eigenbasis, so it works in
all four worlds. A :func:`matrix_rule` maps the matrix directly (no eigendecomposition) and works
everywhere but the per-mode ODE.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._checks import check_range

__all__ = [
    "CorrelationEMA",
    "PredictorRule",
    "directcopy",
    "directpred",
    "directset",
    "make_rule",
    "matrix_rule",
    "spectral_rule",
]


ROUNDOFF = 1e-12


class PredictorRule:
    """Base class: ``rule(F) -> W_p`` on (..., n, n); ``rule.phi(s) -> p`` on (..., k) if spectral."""

    name: str = "rule"
    spectral: bool = False
    #: (power, eps, floor, normalize) when the rule is a member of the DirectSet family: the numba
    #: per-mode kernel evaluates those natively; any other rule runs on the torch backend.
    directset_params: tuple | None = None

    def __call__(self, F: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def phi(self, s: torch.Tensor) -> torch.Tensor:
        """The rule on eigenvalues: p_j = phi(s)_j for s (R, k), as the per-mode ODE needs; a matrix rule
        raises TypeError."""
        raise TypeError(f"predictor rule {self.name!r} is a matrix rule; the per-mode ODE needs a spectral rule")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class _Spectral(PredictorRule):
    spectral = True

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], name: str):
        self.fn, self.name = fn, name

    def phi(self, s: torch.Tensor) -> torch.Tensor:
        """p = fn(s) on the eigenvalues s (R, k) of F-hat, with s below round-off of s_max set to 0."""
        s_max = s.amax(dim=-1, keepdim=True)
        # eigenvalues within round-off of zero are zero: a fractional power would turn their noise
        # (~1e-16 s_max) into O(1e-5) predictor entries and break orthogonal equivariance
        s = torch.where(s.abs() <= ROUNDOFF * s_max.abs(), torch.zeros_like(s), s)
        return self.fn(s, torch.where(s_max > 0, s_max, torch.ones_like(s_max)))

    def __call__(self, F: torch.Tensor) -> torch.Tensor:
        s, U = torch.linalg.eigh(0.5 * (F + F.mT))
        p = self.phi(s)
        return (U * p.unsqueeze(-2)) @ U.mT


class _Matrix(PredictorRule):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str, phi=None):
        self.fn, self.name, self._phi = fn, name, phi
        self.spectral = phi is not None

    def __call__(self, F: torch.Tensor) -> torch.Tensor:
        return self.fn(F)

    def phi(self, s: torch.Tensor) -> torch.Tensor:
        """The user's spectral form of the rule on s (R, k), when it was given; else TypeError."""
        if self._phi is None:
            return super().phi(s)
        return self._phi(s)


def spectral_rule(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> PredictorRule:
    """Wrap ``fn(s, s_max) -> p`` (eigenvalues (..., k), their max (..., 1)) as a rule for every world."""
    return _Spectral(fn, getattr(fn, "__name__", "spectral"))


def matrix_rule(fn: Callable[[torch.Tensor], torch.Tensor]) -> PredictorRule:
    """Wrap ``fn(F) -> W_p`` on (..., n, n) as a rule (matrix flow, sampled SGD and ResNet only)."""
    return _Matrix(fn, getattr(fn, "__name__", "matrix"))


def directset(power: float = 0.5, eps: float = 0.01, normalize: bool = True, floor: float = 1e-4) -> PredictorRule:
    """DirectSet(alpha): p_j = max(floor, (max(s_j, 0) / s_max)^alpha + eps) (luckmatters ``compute_w_corr``).

    ``normalize=False`` drops the division by s_max (the printed Eq. 18 is not scale-free; the code is).
    """
    check_range("power", power, 0, None, lo_open=True)
    check_range("eps", eps, 0, None)
    check_range("floor", floor, 0, None)

    def fn(s, s_max):
        e = s.clamp(min=0) / s_max if normalize else s.clamp(min=0)
        return (e**power + eps).clamp(min=floor)

    rule = _Spectral(fn, f"directset(power={power:g}, eps={eps:g}{'' if normalize else ', raw'})")
    rule.directset_params = (float(power), float(eps), float(floor), bool(normalize))
    return rule


def directpred(eps: float = 0.01, normalize: bool = True) -> PredictorRule:
    """DirectPred (Tian et al. 2021, Eq. 18 in the code's scale-free form): p_j = sqrt(s_j / s_max) + eps."""
    rule = directset(0.5, eps, normalize)
    rule.name = f"directpred(eps={eps:g})"
    return rule


def directcopy(eps: float = 0.25, normalize: bool = True) -> PredictorRule:
    """DirectCopy (Wang et al. 2021): W_p = F / lambda_max(F) + eps I, with no eigendecomposition.

    ``eps = 0.25`` follows fmi-basel/implicit-var-reg's README; ``normalize=False`` gives luckmatters'
    ``F + eps I``. On PSD F it equals ``directset(1, eps, normalize, floor=0)``.
    """
    check_range("eps", eps, 0, None)
    eye_cache: dict = {}

    def fn(F):
        n = F.shape[-1]
        key = (n, F.dtype, F.device)
        if key not in eye_cache:
            eye_cache[key] = torch.eye(n, dtype=F.dtype, device=F.device)
        F = 0.5 * (F + F.mT)
        if normalize:
            lam = torch.linalg.eigvalsh(F)[..., -1:].unsqueeze(-1)
            F = F / torch.where(lam > 0, lam, torch.ones_like(lam))
        return F + eps * eye_cache[key]

    def phi(s):
        if not normalize:
            return s + eps
        s_max = s.amax(dim=-1, keepdim=True)
        return s / torch.where(s_max > 0, s_max, torch.ones_like(s_max)) + eps

    rule = _Matrix(fn, f"directcopy(eps={eps:g}{'' if normalize else ', raw'})", phi)
    rule.directset_params = (1.0, float(eps), 0.0, bool(normalize))
    return rule


_RULES = {"directpred": directpred, "directcopy": directcopy, "directset": directset}


def make_rule(name: str, **kwargs) -> PredictorRule:
    """Build a named rule: ``directpred``, ``directcopy`` or ``directset`` with its keyword arguments."""
    if name not in _RULES:
        raise ValueError(f"rule {name!r} unknown; choose one of {sorted(_RULES)}")
    return _RULES[name](**kwargs)


class CorrelationEMA:
    """Running correlation F-hat <- rho F-hat + (1 - rho) E_B[f f^T] (DirectPred Eq. 19), batched over runs.

    The first update initialises F-hat to the batch mean (luckmatters ``Accumulator``). ``rho = None``
    keeps a simple running average over all updates instead. Features are not centred, as in DirectPred.
    """

    def __init__(self, rho: float | None = 0.3, freq: int = 1):
        if rho is not None:
            check_range("rho", rho, 0, 1, hi_open=True)
        check_range("freq", freq, 1, None, integer=True)
        self.rho, self.freq = rho, int(freq)
        self.F: torch.Tensor | None = None
        self.count = 0

    @torch.no_grad()
    def update(self, f: torch.Tensor) -> torch.Tensor:
        """Add a batch of features f (..., B, d); returns F-hat (..., d, d)."""
        return self.update_correlation(f.mT @ f / f.shape[-2])

    @torch.no_grad()
    def update_correlation(self, batch: torch.Tensor) -> torch.Tensor:
        """Add a batch correlation E_B[f f^T] (..., d, d) directly; returns F-hat."""
        self.count += 1
        if self.F is None:
            self.F = batch.clone()
        elif self.rho is None:
            self.F += (batch - self.F) / self.count
        else:
            self.F.mul_(self.rho).add_(batch, alpha=1.0 - self.rho)
        return self.F

    def due(self, step: int) -> bool:
        """True when the predictor is to be overwritten at this (0-based) step."""
        return step % self.freq == 0

    def state_dict(self) -> dict:
        """rho, freq, the running F (n2, n2) and the update count, for a checkpoint."""
        return {"rho": self.rho, "freq": self.freq, "F": self.F, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.rho, self.freq, self.F, self.count = state["rho"], state["freq"], state["F"], state["count"]
