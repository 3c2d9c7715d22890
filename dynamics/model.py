"""Validated configuration of the linear BYOL/SimSiam model (reference/theory.md §1-§3).

Every dataclass checks itself in ``__post_init__`` and raises :class:`ConfigError` naming the
offending field. The TOML loader of the CLI builds these same objects, so a config file and Python
code are validated identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._checks import ConfigError, check, check_choice, check_psd, check_range, check_seed
from .predictor_rules import PredictorRule, make_rule

__all__ = ["DataSpec", "InitSpec", "LinearModel", "RuleSpec"]

Matrix = tuple[tuple[float, ...], ...]


def _as_tuples(key: str, value, depth: int):
    """``value`` (array-like of ``depth`` dimensions) as nested tuples of floats."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(key, value, "must be an array of numbers") from None
    check(key, f"shape {arr.shape}", arr.ndim == depth, f"must have {depth} dimension(s)")
    return tuple(map(float, arr)) if depth == 1 else tuple(tuple(map(float, row)) for row in arr)


@dataclass(frozen=True)
class DataSpec:
    """Second moments of data and augmentation (X = E[x-bar x-bar^T], X' = E[Var(x'|x)]).

    kind = "isotropic": X = I, X' = sigma2 I (Assumption 2).
    kind = "general":   X and X_prime given as n1 x n1 PSD matrices (nested lists, tuples or numpy
                        arrays; stored as tuples so that the spec stays hashable).
    kind = "additive":  additive-noise model (§3.7), diagonal: X = diag(signal), X' = diag(noise).
    """

    kind: str = "isotropic"
    sigma2: float = 0.5
    X: Matrix | None = None
    X_prime: Matrix | None = None
    signal: tuple[float, ...] | None = None
    noise: tuple[float, ...] | None = None

    def __post_init__(self):
        # arrays and lists become tuples: a frozen spec must hash (numpy arrays do not)
        for key, depth in (("X", 2), ("X_prime", 2), ("signal", 1), ("noise", 1)):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, key, _as_tuples(key, value, depth))
        check_choice("kind", self.kind, ("isotropic", "general", "additive"))
        check_range("sigma2", self.sigma2, 0, None)
        if self.kind == "general":
            check("X", self.X, self.X is not None, "required when kind = 'general'")
            check("X_prime", self.X_prime, self.X_prime is not None, "required when kind = 'general'")
        if self.kind == "additive":
            check("signal", self.signal, self.signal is not None, "required when kind = 'additive'")
            check("noise", self.noise, self.noise is not None, "required when kind = 'additive'")
            check_range("signal", self.signal, 0, None)
            check_range("noise", self.noise, 0, None)

    def moments(self, n1: int, sigma2: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(X, X') as float64 (n1, n1) arrays, validated against n1."""
        if self.kind == "isotropic":
            s2 = self.sigma2 if sigma2 is None else sigma2
            return np.eye(n1), s2 * np.eye(n1)
        if self.kind == "general":
            return check_psd("X", self.X, n1), check_psd("X_prime", self.X_prime, n1)
        for key, vals in (("signal", self.signal), ("noise", self.noise)):
            check(key, vals, len(vals) == n1, f"must have n1 = {n1} entries")
        return np.diag(np.asarray(self.signal, float)), np.diag(np.asarray(self.noise, float))

    def mode_moments(self, n1: int, k: int, sigma2=None) -> tuple[np.ndarray, np.ndarray]:
        """Per-mode (lambda_s, lambda_d) for the per-mode system: modes are the first k data eigen-directions."""
        if self.kind == "isotropic":  # without the n1 x n1 identity (n1 may be large)
            s2 = self.sigma2 if sigma2 is None else sigma2
            return np.full(k, 1.0 + s2), np.ones(k)
        X, Xp = self.moments(n1, sigma2)
        if self.kind == "general":
            check("X", "non-commuting X and X'", np.allclose(X @ Xp, Xp @ X, atol=1e-10),
                  "the per-mode system needs X and X' to commute (use kind = 'additive' or the matrix engine)")
            lam_x, V = np.linalg.eigh(X)
            lam_n = np.einsum("ij,jk,ki->i", V.T, Xp, V)
            order = np.argsort(-lam_x)
            lam_x, lam_n = lam_x[order], lam_n[order]
        else:
            lam_x, lam_n = np.diag(X), np.diag(Xp)
        return (lam_x + lam_n)[:k], lam_x[:k]


@dataclass(frozen=True)
class InitSpec:
    """Random initial condition, drawn from ``seed``.

    W(0) ~ N(0, w_scale^2 / n1) entrywise. W_p(0): "random" ~ N(0, wp_scale^2 / n2), "symmetric"
    (the random one symmetrised), "identity" (wp_scale * I) or "zero". W_a(0): "zero" (the paper's
    simulations), "copy" (= W(0)) or "random" (independent draw like W(0)).
    """

    w_scale: float = 1.0
    wp: str = "random"
    wp_scale: float = 1.0
    wa: str = "zero"
    seed: int = 0

    def __post_init__(self):
        check_range("w_scale", self.w_scale, 0, None, lo_open=True)
        check_choice("wp", self.wp, ("random", "symmetric", "identity", "zero"))
        check_range("wp_scale", self.wp_scale, 0, None)
        check_choice("wa", self.wa, ("zero", "copy", "random"))
        check_seed("seed", self.seed)


@dataclass(frozen=True)
class RuleSpec:
    """A named predictor rule for TOML configs (Python users may pass any PredictorRule instead)."""

    name: str = "directpred"
    eps: float = 0.01
    power: float = 0.5
    normalize: bool = True

    def __post_init__(self):
        check_choice("name", self.name, ("directpred", "directcopy", "directset"))
        check_range("eps", self.eps, 0, None)
        check_range("power", self.power, 0, None, lo_open=True)

    def build(self) -> PredictorRule:
        """The :class:`PredictorRule` this spec names, with its parameters."""
        if self.name == "directset":
            return make_rule("directset", power=self.power, eps=self.eps, normalize=self.normalize)
        return make_rule(self.name, eps=self.eps, normalize=self.normalize)


PREDICTORS = ("learned", "symmetric", "identity", "rule")
METHODS = ("byol", "simsiam")


@dataclass(frozen=True)
class LinearModel:
    """The linear non-contrastive model of Tian, Chen & Ganguli 2021.

    Online W (n2 x n1), predictor W_p (n2 x n2), target W_a (n2 x n1).
    method "byol": W_a follows the EMA flow dW_a/dt = beta (W - W_a) (Eq. 4); "simsiam": W_a = W.
    alpha_p: predictor/online learning-rate ratio. eta: weight decay of W; eta_p: of W_p (default
    eta, which Theorem 1 needs). stop_grad=False (SimSiam only) lets the gradient through the target.
    predictor: "learned" (Eq. 2), "symmetric" (symmetrised Eq. 2, Assumption 3), "identity" (no
    predictor) or "rule" (W_p = rule(F-hat) with F-hat = W (X + X') W^T, as DirectPred estimates it).
    """

    n1: int = 64
    n2: int = 32
    method: str = "byol"
    beta: float | None = 0.5
    alpha_p: float = 1.0
    eta: float = 0.01
    eta_p: float | None = None
    stop_grad: bool = True
    predictor: str = "learned"
    rule: RuleSpec | PredictorRule | None = None
    data: DataSpec = field(default_factory=DataSpec)
    init: InitSpec = field(default_factory=InitSpec)

    def __post_init__(self):
        check_range("n1", self.n1, 1, None, integer=True)
        check_range("n2", self.n2, 1, None, integer=True)
        check("n2", self.n2, self.n2 <= self.n1, f"must be <= n1 = {self.n1}")
        check_choice("method", self.method, METHODS)
        if self.method == "byol":
            check("beta", self.beta, self.beta is not None, "required for method = 'byol'")
            check_range("beta", self.beta, 0, None)
        check_range("alpha_p", self.alpha_p, 0, None, lo_open=True)
        check_range("eta", self.eta, 0, None)
        if self.eta_p is not None:
            check_range("eta_p", self.eta_p, 0, None)
        check("stop_grad", self.stop_grad, isinstance(self.stop_grad, bool), "must be true or false")
        check("stop_grad", self.stop_grad, self.stop_grad or self.method == "simsiam",
              "false is defined for method = 'simsiam' only (BYOL's target is not trained by gradient)")
        check_choice("predictor", self.predictor, PREDICTORS)
        if self.predictor == "rule":
            check("rule", self.rule, self.rule is not None, "required when predictor = 'rule'")
        if not isinstance(self.data, DataSpec):
            raise ConfigError("data", self.data, "must be a DataSpec")
        if not isinstance(self.init, InitSpec):
            raise ConfigError("init", self.init, "must be an InitSpec")
        try:
            if not self.isotropic:  # isotropic moments hold nothing to check (and n1 x n1 may not fit)
                self.data.moments(self.n1)
        except ConfigError as err:
            raise err.prefixed("data.") from None

    @property
    def eta_pred(self) -> float:
        """The predictor's weight decay: ``eta_p``, or ``eta`` when not given."""
        return self.eta if self.eta_p is None else self.eta_p

    @property
    def simsiam(self) -> bool:
        """True for SimSiam (W_a = W: no target network)."""
        return self.method == "simsiam"

    def predictor_rule(self) -> PredictorRule | None:
        """The predictor rule (DirectPred-style) when ``predictor == "rule"``, else None."""
        if self.predictor != "rule":
            return None
        return self.rule.build() if isinstance(self.rule, RuleSpec) else self.rule

    @property
    def isotropic(self) -> bool:
        """True for X = I, X' = sigma2 I, where the exact isotropic reduction applies."""
        return self.data.kind == "isotropic"
