"""The per-mode flow of reference/theory.md §3 in plain numpy, for drawing (figures imports none of ours).

Everything here is the mode system at a fixed EMA ratio tau (SimSiam: tau = 1; BYOL's non-collapsed fixed
points also have tau = 1, theory.md §3.5), isotropic data X = I, X' = sigma2 I:

    p' = alpha_p s [tau - (1+sigma2) p] - eta p                       (Eq. 11, §3.1)
    s' = 2 p s [tau - (1+sigma2) p] - 2 eta s = 2 s Delta            (Eq. 12, §3.1; Delta in §3.2)
    Delta = p [tau - (1+sigma2) p] - eta

On the invariant parabola s = p^2 / alpha_p (Eq. 14, §3.2) the p equation is the 1-D phase line (Eq. 16, §3.4)

    p' = p^2 [tau - (1+sigma2) p] - eta p = -(1+sigma2) p (p - p*_-) (p - p*_+)
    p*_(+/-) = [tau +/- sqrt(tau^2 - 4 eta (1+sigma2))] / (2 (1+sigma2))      real iff eta <= eta_c
    eta_c = tau^2 / (4 (1+sigma2))                                            (§3.4, regime (c) above it)

The (p, s) plane's nullclines: p' = 0 on s = eta p / (alpha_p [tau - (1+sigma2) p]) (and, for eta = 0, on
s = 0 and p = tau/(1+sigma2)); s' = 0 on s = 0 and on Delta = 0, the vertical lines p = p*_(+/-).
The fixed points are (0, 0) and (p*_(+/-), p*_(+/-)^2 / alpha_p); their stability comes from the Jacobian's
eigenvalues, computed here (stable node at the origin, {-eta, -2 eta}; p*_+ stable; p*_- a saddle, §3.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: a fixed point whose Jacobian has an eigenvalue with |real part| below this (relative to the largest
#: rate in the problem) is degenerate (eta = 0: the lines of fixed points); a round-off floor, not a fit
DEGENERATE_RTOL = 1e-9


@dataclass(frozen=True)
class ModeParams:
    """Flow-unit parameters of one mode: augmentation variance sigma2, EMA ratio tau, weight decay eta,
    predictor learning-rate ratio alpha_p (theory.md §1.2)."""

    sigma2: float
    tau: float
    eta: float
    alpha_p: float = 1.0

    @property
    def lam(self) -> float:
        """1 + sigma2, the eigenvalue of X + X' (theory.md §1.3)."""
        return 1.0 + self.sigma2


@dataclass(frozen=True)
class FixedPoint:
    """A fixed point of the (p, s) mode flow and its kind: 'stable', 'saddle', 'unstable' or 'degenerate'."""

    p: float
    s: float
    kind: str
    eigenvalues: tuple[float, float]


def eta_critical(sigma2: float, tau: float) -> float:
    """eta_c = tau^2 / (4 (1+sigma2)): above it only the collapsed fixed point exists (theory.md §3.4)."""
    return tau**2 / (4.0 * (1.0 + sigma2))


def p_roots(sigma2: float, tau: float, eta: float) -> tuple[float, float] | None:
    """(p*_-, p*_+) of Eq. 16 (theory.md §3.4), or None when eta > eta_c (regime (c): none exist)."""
    lam = 1.0 + sigma2
    disc = tau**2 - 4.0 * eta * lam
    if disc < 0:
        return None
    root = np.sqrt(disc)
    return float((tau - root) / (2 * lam)), float((tau + root) / (2 * lam))


def phase_line_rate(p: np.ndarray, sigma2: float, tau: float, eta: float) -> np.ndarray:
    """p' on the invariant parabola, p^2 [tau - (1+sigma2) p] - eta p (Eq. 16, theory.md §3.4)."""
    p = np.asarray(p, dtype=float)
    return p**2 * (tau - (1.0 + sigma2) * p) - eta * p


def phase_line_slope(p: float, sigma2: float, tau: float, eta: float) -> float:
    """d p'/d p of Eq. 16: 2 tau p - 3 (1+sigma2) p^2 - eta (its sign is the 1-D stability)."""
    return 2.0 * tau * p - 3.0 * (1.0 + sigma2) * p**2 - eta


def phase_line_points(sigma2: float, tau: float, eta: float) -> list[tuple[float, str]]:
    """Fixed points of the 1-D phase line with their kind: 'stable', 'unstable' or 'semi-stable'
    (eta = 0: p = 0 is a double root, p' ~ tau p^2, attracting from below and repelling above)."""
    roots = p_roots(sigma2, tau, eta)
    points = [0.0] + ([] if roots is None else [r for r in roots if r != 0.0])
    scale = max(abs(tau) * max(abs(tau), 1.0), abs(eta), np.finfo(float).tiny)
    out = []
    for p in sorted(set(points)):
        slope = phase_line_slope(p, sigma2, tau, eta)
        if abs(slope) <= DEGENERATE_RTOL * scale:
            out.append((p, "semi-stable"))
        else:
            out.append((p, "stable" if slope < 0 else "unstable"))
    return out


def vector_field(p: np.ndarray, s: np.ndarray, prm: ModeParams) -> tuple[np.ndarray, np.ndarray]:
    """(p', s') of Eqs. 11-12 at fixed tau (theory.md §3.1), elementwise over broadcast p and s."""
    gain = prm.tau - prm.lam * p
    return prm.alpha_p * s * gain - prm.eta * p, 2.0 * s * (p * gain - prm.eta)


def jacobian(p: float, s: float, prm: ModeParams) -> np.ndarray:
    """The 2x2 Jacobian d(p', s')/d(p, s) of Eqs. 11-12."""
    gain = prm.tau - prm.lam * p
    return np.array([
        [-prm.alpha_p * s * prm.lam - prm.eta, prm.alpha_p * gain],
        [2.0 * s * (prm.tau - 2.0 * prm.lam * p), 2.0 * (p * gain - prm.eta)],
    ])


def fixed_points(prm: ModeParams) -> list[FixedPoint]:
    """Isolated fixed points of Eqs. 11-12 in s >= 0, classified by the Jacobian's eigenvalues.

    eta > 0: the origin and (p*_(+/-), p*_(+/-)^2/alpha_p) when eta <= eta_c. eta = 0: the fixed points
    form the lines s = 0 and p = tau/(1+sigma2) (drawn as lines by the portrait); only their crossing
    (tau/(1+sigma2), 0) is returned, as 'degenerate'.
    """
    if prm.eta == 0.0:
        candidates = [(prm.tau / prm.lam, 0.0)]
    else:
        roots = p_roots(prm.sigma2, prm.tau, prm.eta)
        candidates = [(0.0, 0.0)] + ([] if roots is None else [(r, r**2 / prm.alpha_p) for r in roots])
    scale = max(abs(prm.tau) * max(abs(prm.tau), 1.0), prm.eta, np.finfo(float).tiny)
    out = []
    for p, s in candidates:
        ev = np.linalg.eigvals(jacobian(p, s, prm))
        re = np.real(ev)
        if np.any(np.abs(re) <= DEGENERATE_RTOL * scale):
            kind = "degenerate"
        elif np.all(re < 0):
            kind = "stable"
        elif np.all(re > 0):
            kind = "unstable"
        else:
            kind = "saddle"
        out.append(FixedPoint(float(p), float(s), kind, (float(re[0]), float(re[1]))))
    return out


def p_nullcline(p: np.ndarray, prm: ModeParams) -> np.ndarray:
    """s on the p' = 0 nullcline, eta p / (alpha_p [tau - (1+sigma2) p]); NaN where it leaves s >= 0 or
    where eta = 0 (then the nullcline is the pair of lines s = 0 and p = tau/(1+sigma2))."""
    p = np.asarray(p, dtype=float)
    if prm.eta == 0.0:
        return np.full_like(p, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = prm.eta * p / (prm.alpha_p * (prm.tau - prm.lam * p))
    return np.where((s >= 0) & np.isfinite(s), s, np.nan)


def s_nullcline_p(prm: ModeParams) -> list[float]:
    """The p of the vertical s' = 0 lines, Delta = 0: p*_(+/-) (eta = 0: p = 0 and tau/(1+sigma2))."""
    if prm.eta == 0.0:
        return [0.0, prm.tau / prm.lam]
    roots = p_roots(prm.sigma2, prm.tau, prm.eta)
    return [] if roots is None else list(roots)
