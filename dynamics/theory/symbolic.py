"""Symbolic derivation (sympy) of the per-mode fixed points, Jacobians and the collapse threshold.

The numerical code uses the closed forms of :mod:`.closed_forms`; :func:`derive` re-derives them from
the ODEs alone (Eqs. 11-12 at fixed tau) and :func:`compare_with_closed_forms` checks that the two
agree, symbolically where sympy can decide it and numerically at random points otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from . import closed_forms as cf

__all__ = ["Derivation", "compare_with_closed_forms", "derive"]

p, s, t = sp.symbols("p s t", real=True)
tau, lam, eta, alpha_p = sp.symbols("tau lambda eta alpha_p", positive=True)


@dataclass
class Derivation:
    """Results of :func:`derive` (sympy expressions in p, s, tau, lambda, eta, alpha_p)."""

    rhs: tuple  # (dp/dt, ds/dt)
    parabola_rhs: sp.Expr  # dp/dt on s = p^2/alpha_p
    roots: list  # non-zero roots of the parabola dp/dt, sorted (p*_-, p*_+)
    eta_c: sp.Expr  # the eta at which the two roots merge
    jacobian: sp.Matrix  # 2x2 Jacobian of (dp/dt, ds/dt)
    eigenvalues: dict  # fixed point name -> list of Jacobian eigenvalues
    invariant_rate: sp.Expr  # d/dt (alpha_p s - p^2) divided by (alpha_p s - p^2)


def derive() -> Derivation:
    """Derive everything from Eqs. 11-12 with lambda = 1 + sigma2 and fixed tau."""
    dp = alpha_p * s * (tau - lam * p) - eta * p
    ds = 2 * p * s * (tau - lam * p) - 2 * eta * s
    # invariant I = alpha_p s - p^2: dI/dt = alpha_p ds - 2 p dp
    inv = alpha_p * s - p**2
    inv_rate = sp.simplify((alpha_p * ds - 2 * p * dp) / inv)
    on_parabola = sp.expand(dp.subs(s, p**2 / alpha_p))
    nonzero = sp.solve(sp.factor(on_parabola / p), p)
    # the discriminant of p*(tau - lam p) = eta vanishes at eta_c
    disc = sp.discriminant(sp.expand(sp.factor(on_parabola / p)), p)
    eta_c = sp.solve(sp.Eq(disc, 0), eta)[0]
    J = sp.Matrix([dp, ds]).jacobian([p, s])
    eig = {"origin": list(J.subs({p: 0, s: 0}).eigenvals(multiple=True))}
    for name, r in zip(("p_minus", "p_plus"), _order_roots(nonzero)):
        Jr = J.subs({p: r, s: r**2 / alpha_p})
        eig[name] = [sp.simplify(e) for e in Jr.eigenvals(multiple=True)]
    return Derivation((dp, ds), on_parabola, _order_roots(nonzero), sp.simplify(eta_c), J, eig, inv_rate)


def _order_roots(roots):
    """Sort (p*_-, p*_+) by evaluating at a point with a real discriminant."""
    probe = {tau: 1, lam: sp.Rational(3, 2), eta: sp.Rational(1, 20), alpha_p: 1}
    return sorted(roots, key=lambda r: float(r.subs(probe)))


def compare_with_closed_forms(n_points: int = 200, seed: int = 0) -> dict[str, float]:
    """Largest relative difference between the sympy results and :mod:`.closed_forms` over random
    (tau, sigma2, eta < eta_c, alpha_p); also the symbolic residuals where sympy decides them.

    Keys: "roots", "eta_c", "eig_origin", "eig_p_minus", "eig_p_plus" (numerical), and
    "invariant_rate_symbolic", "eta_c_symbolic" (0 when sympy proves the identity).
    """
    d = derive()
    rng = np.random.default_rng(seed)
    tau_v = rng.uniform(0.2, 1.5, n_points)
    s2_v = rng.uniform(0.0, 2.0, n_points)
    eta_c_v = tau_v**2 / (4 * (1 + s2_v))
    eta_v = eta_c_v * rng.uniform(0.01, 0.99, n_points)
    ap_v = rng.uniform(0.3, 4.0, n_points)
    sym = (tau, lam, eta, alpha_p)
    f_roots = [sp.lambdify(sym, r, "numpy") for r in d.roots]
    f_eta_c = sp.lambdify(sym, d.eta_c, "numpy")
    f_eig = {k: [sp.lambdify(sym, e, "numpy") for e in v] for k, v in d.eigenvalues.items()}
    args = (tau_v, 1 + s2_v, eta_v, ap_v)
    lo, hi = cf.fixed_points(eta_v, tau_v, s2_v)

    def rel(a, b):
        a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
        return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))

    out = {
        "roots": max(rel(f_roots[0](*args), lo), rel(f_roots[1](*args), hi)),
        "eta_c": rel(f_eta_c(*args), cf.eta_critical(tau_v, s2_v)),
    }
    closed = cf.jacobian_eigenvalues(eta_v, tau_v, s2_v, ap_v)
    for key in ("origin", "p_minus", "p_plus"):
        got = np.sort(np.stack([np.broadcast_to(f(*args), eta_v.shape) for f in f_eig[key]]), axis=0)
        want = np.sort(np.stack([np.broadcast_to(v, eta_v.shape) for v in closed[key]]), axis=0)
        out[f"eig_{key}"] = rel(got, want)
    # symbolic identities: the invariant's rate, eta_c, and the Jacobian eigenvalues at p*_-+ equal
    # (+-D) p*_-+ and -2 eta with D = sqrt(tau^2 - 4 eta lam)
    D = sp.sqrt(tau**2 - 4 * eta * lam)
    want = {"p_minus": [D * d.roots[0], -2 * eta], "p_plus": [-D * d.roots[1], -2 * eta]}
    bad = 0
    for key, exprs in want.items():
        for e in exprs:
            bad += int(not any(sp.simplify(g - e) == 0 for g in d.eigenvalues[key]))
    out["eigenvalues_symbolic"] = float(bad)
    out["invariant_rate_symbolic"] = float(sp.simplify(d.invariant_rate + 2 * eta) != 0)
    out["eta_c_symbolic"] = float(sp.simplify(d.eta_c - tau**2 / (4 * lam)) != 0)
    return out
