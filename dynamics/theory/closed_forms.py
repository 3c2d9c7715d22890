"""Closed forms of the per-mode dynamics (reference/theory.md §3.2-§3.5, §2.3, §3.7).

Notation: lam = lambda_s (1 + sigma2 in the isotropic case), tau the EMA ratio (1 for SimSiam),
lam_d the data eigenvalue (1 isotropic; the per-mode thresholds replace tau by tau * lam_d). All
functions broadcast over numpy arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "basin_edge",
    "eta_critical",
    "fixed_points",
    "jacobian_eigenvalues",
    "k_eigenvalues",
    "local_rates",
    "non_collapse_eta0",
    "parabola_constant",
    "parabola_s",
    "predictor_fixed_point",
    "survives_additive_noise",
    "tau_ema_closed_form",
]


def _lam_tau(sigma2, lam_s, tau, lam_d):
    lam = 1.0 + np.asarray(sigma2, float) if lam_s is None else np.asarray(lam_s, float)
    return lam, np.asarray(tau, float) * np.asarray(lam_d, float)


def parabola_constant(p0, s0, alpha_p):
    """c_j = s_j(0) - p_j(0)^2 / alpha_p (Eq. 14, with the paper's sign typo fixed)."""
    return np.asarray(s0, float) - np.asarray(p0, float) ** 2 / np.asarray(alpha_p, float)


def parabola_s(p, t, c, alpha_p, eta):
    """s_j(t) = p_j(t)^2 / alpha_p + exp(-2 eta t) c_j (Eq. 14, exact for any trajectory)."""
    return np.asarray(p, float) ** 2 / alpha_p + np.exp(-2.0 * np.asarray(eta, float) * t) * c


def eta_critical(tau=1.0, sigma2=0.5, lam_s=None, lam_d=1.0):
    """eta_c = (tau lam_d)^2 / (4 lam_s): above it collapse is unavoidable (Obs#5, regime (c))."""
    lam, tt = _lam_tau(sigma2, lam_s, tau, lam_d)
    return tt**2 / (4.0 * lam)


def fixed_points(eta, tau=1.0, sigma2=0.5, lam_s=None, lam_d=1.0):
    """Non-zero roots p*_-, p*_+ of dp/dt = p^2 (tau - lam p) - eta p on the parabola (Eq. 16).

    p*_pm = [tau +- sqrt(tau^2 - 4 eta lam)] / (2 lam); NaN where eta > eta_c (no real root).
    At eta = 0: p*_- = 0 and p*_+ = tau / lam.

    p*_- is computed without cancellation as the product of the roots over p*_+, i.e.
    p*_- = 2 eta / (tau + sqrt(tau^2 - 4 eta lam)): the difference tau - sqrt(...) loses all digits
    when eta lam << tau^2 (at eta = 1e-12 it keeps only about 5), the quotient keeps full precision.
    """
    lam, tt = _lam_tau(sigma2, lam_s, tau, lam_d)
    eta = np.asarray(eta, float)
    disc = tt**2 - 4.0 * eta * lam
    root = np.sqrt(np.where(disc >= 0, disc, np.nan))
    hi = (tt + root) / (2.0 * lam)
    denom = tt + root
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = np.where(denom > 0, 2.0 * eta / np.where(denom > 0, denom, 1.0), np.where(np.isnan(root), np.nan, 0.0))
    return lo, hi


def basin_edge(eta, tau=1.0, sigma2=0.5, lam_s=None, lam_d=1.0):
    """Collapse basin edge on the invariant parabola: a mode with p(0) < p*_- collapses (regime (b));
    +inf above eta_c (every mode collapses)."""
    lo, _ = fixed_points(eta, tau, sigma2, lam_s, lam_d)
    return np.where(np.isnan(lo), np.inf, lo)


def non_collapse_eta0(p0, s0, alpha_p=1.0, tau=1.0, sigma2=0.5, lam_s=None, lam_d=1.0):
    """eta = 0, fixed tau: the mode ends non-collapsed iff s_inf = c + p*^2/alpha_p > 0 and
    (c > 0 or p(0) > 0), with c = s(0) - p(0)^2/alpha_p and p* = tau/lam (§3.3, verified criterion)."""
    lam, tt = _lam_tau(sigma2, lam_s, tau, lam_d)
    c = parabola_constant(p0, s0, alpha_p)
    p_star = tt / lam
    s_inf = c + p_star**2 / np.asarray(alpha_p, float)
    return (s_inf > 0) & ((c > 0) | (np.asarray(p0, float) > 0))


def local_rates(eta, tau=1.0, sigma2=0.5, lam_s=None, lam_d=1.0):
    """Linear rates of dp/dt on the parabola at 0, p*_- and p*_+ (theory.md §3.4):
    -eta, +p*_- D and -p*_+ D with D = sqrt(tau^2 - 4 eta lam)."""
    lam, tt = _lam_tau(sigma2, lam_s, tau, lam_d)
    D = np.sqrt(np.where(tt**2 - 4 * np.asarray(eta, float) * lam >= 0, tt**2 - 4 * np.asarray(eta, float) * lam, np.nan))
    lo, hi = fixed_points(eta, tau, sigma2, lam_s, lam_d)
    return -np.asarray(eta, float), lo * D, -hi * D


def jacobian_eigenvalues(eta, tau=1.0, sigma2=0.5, alpha_p=1.0, lam_s=None, lam_d=1.0):
    """Eigenvalues of the 2-D (p, s) system's Jacobian at fixed tau, at each fixed point.

    Returns a dict: "origin": (-eta, -2 eta); "p_minus" and "p_plus": (rate along the parabola,
    -2 eta transverse). NaN where the fixed point does not exist.
    """
    r0, r_lo, r_hi = local_rates(eta, tau, sigma2, lam_s, lam_d)
    e = np.asarray(eta, float)
    return {"origin": (-e, -2 * e), "p_minus": (r_lo, -2 * e), "p_plus": (r_hi, -2 * e)}


def k_eigenvalues(s, p, alpha_p=1.0, eta=0.0, tau=1.0, sigma2=0.5):
    """Eigenvalues of Theorem 3's K under alignment: k_j = (alpha_p/2) lam s_j - Delta_j + eta/2,
    Delta_j = p_j (tau - lam p_j) - eta (Eq. 17 in eigenvalue form)."""
    lam = 1.0 + np.asarray(sigma2, float)
    p = np.asarray(p, float)
    delta = p * (tau - lam * p) - eta
    return 0.5 * alpha_p * lam * np.asarray(s, float) - delta + 0.5 * eta


def predictor_fixed_point(F, tau=1.0, sigma2=0.5, eta=0.0, alpha_p=1.0):
    """Fixed point of the raw W_p flow for a given F (§2.3(a)): tau F ((1+sigma2) F + (eta/alpha_p) I)^{-1}."""
    F = np.asarray(F, float)
    n = F.shape[-1]
    return tau * F @ np.linalg.inv((1.0 + sigma2) * F + (eta / alpha_p) * np.eye(n))


def survives_additive_noise(lam_x, lam_n, eta, tau=1.0):
    """Additive-noise data (§3.7), tau = 1: a mode survives only if (tau lam_x)^2 / (lam_x + lam_n) >= 4 eta."""
    lam_x = np.asarray(lam_x, float)
    return (tau * lam_x) ** 2 / (lam_x + np.asarray(lam_n, float)) >= 4.0 * np.asarray(eta, float)


def tau_ema_closed_form(t, p, beta):
    """Eq. 15 on the parabola with tau(0) = 0: tau(t) = beta e^{-beta t} int_0^t p(t') e^{beta t'} dt' / p(t).

    ``t`` (T,) increasing from 0 and ``p`` (T,) a sampled trajectory; the integral uses the cumulative
    Simpson rule (error ~ dt^4), so the accuracy is that of the sampling.
    """
    from scipy.integrate import cumulative_simpson

    t = np.asarray(t, float)
    p = np.asarray(p, float)
    integrand = p * np.exp(beta * (t - t[-1]))  # scaled by e^{-beta t_end} against overflow
    cum = cumulative_simpson(integrand, x=t, initial=0.0)
    return beta * np.exp(-beta * (t - t[-1])) * cum / p
