"""Numerical checks of every theorem and closed form of Tian, Chen & Ganguli 2021.

Each check draws random configurations from a seed, integrates the relevant flow and compares a
measured residual with a tolerance. ``run_checks`` returns one :class:`CheckResult` per statement;
``stopgrad check`` prints them as a table and exits non-zero on any failure.

Tolerances and why:
* identities evaluated at a point (Theorem 3's commutator identity, sympy vs closed forms): round-off,
  1e-10 relative.
* invariants along integrated trajectories (Theorem 1, matrix vs per-mode): DOP853 at rtol 1e-12 keeps
  the integration error near 1e-11; tolerances 1e-9 and 1e-8 leave two to three orders of margin.
* inequalities (Theorem 2's bound, Theorem 3's decay): must hold up to integration error (1e-9).
* sampled SGD vs ODE: a statistical statement, the fitted exponent of error ~ batch^slope must lie
  within 0.15 of -1/2 (64 seeds per batch size; the estimator's spread is about 0.05).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .._checks import ConfigError
from ..initial import InitialState
from ..matrix_flow import SymmetrizedFlow
from ..mode_flow import ModeFlow
from ..model import DataSpec, InitSpec, LinearModel
from ..predictor_rules import directpred
from ..simulate import simulate
from ..solvers import Solver
from ..specs import ModeInit, SampledSpec, Simulation
from . import closed_forms as cf
from .check_result import CheckResult
from .gsg_checks import GSG_CHECKS, GSG_SLOW_CHECKS

__all__ = ["CHECKS", "SLOW_CHECKS", "CheckResult", "run_checks", "theorem1_simulation", "theorem2_simulation"]

TIGHT = Solver(method="dop853", rtol=1e-12, atol=1e-14)
f64 = torch.float64


def _random_psd(rng, n, scale=1.0, rank=None):
    A = rng.standard_normal((n, rank or n))
    return scale * A @ A.T / (rank or n)


def _params(R, **values):
    return {k: torch.as_tensor(np.broadcast_to(np.asarray(v, float), (R,)).copy(), dtype=f64) for k, v in values.items()}


def _general_data(rng, n1, noise=0.5) -> DataSpec:
    """Random general moments: X = A A^T / n1, X' = noise B B^T / n1 (A, B standard normal)."""
    return DataSpec(kind="general", X=_random_psd(rng, n1), X_prime=_random_psd(rng, n1, noise))


def theorem1_simulation(rng, method: str, alpha_p, eta, beta=None, n1: int = 5, n2: int = 3, t_end: float = 20.0,
                        n_save: int = 41, solver: Solver = TIGHT) -> Simulation:
    """Theorem 1's set-up: general random X, X' (from ``rng``), non-symmetric random W_p, W_a(0) random
    (BYOL) or 0 (SimSiam), eta_p = eta; one run per entry of the (R,) arrays alpha_p, eta (and beta
    for BYOL), each with its own seed from ``rng``. The result's ``balance`` is the theorem's residual."""
    byol = method == "byol"
    model = LinearModel(n1=n1, n2=n2, method=method, beta=0.5 if byol else None, data=_general_data(rng, n1),
                        init=InitSpec(wa="random" if byol else "zero"))
    R = len(alpha_p)
    runs = {"alpha_p": alpha_p, "eta": eta, "eta_p": eta, "seed": rng.integers(0, 2**31, R)}
    if byol:
        runs["beta"] = beta
    return Simulation(model=model, t_end=t_end, n_save=n_save, runs=runs, solver=solver)


def theorem2_simulation(rng, alpha_p, eta, scale: float = 1.0, n1: int = 5, n2: int = 3, t_end: float = 40.0,
                        n_save: int = 81, solver: Solver = TIGHT) -> Simulation:
    """Theorem 2's set-up: SimSiam without stop-gradient on general random X, X' (from ``rng``), W(0)
    and W_p(0) drawn with scale ``scale``; one run per entry of the (R,) arrays alpha_p and eta.
    The theorem bounds the result's ``weight_norm`` by e^{-eta t} ||W(0)||."""
    model = LinearModel(n1=n1, n2=n2, method="simsiam", beta=None, stop_grad=False, data=_general_data(rng, n1),
                        init=InitSpec(w_scale=scale, wp_scale=scale))
    runs = {"alpha_p": alpha_p, "eta": eta, "eta_p": eta, "seed": rng.integers(0, 2**31, len(alpha_p))}
    return Simulation(model=model, t_end=t_end, n_save=n_save, runs=runs, solver=solver)


def check_theorem1(seed: int) -> CheckResult:
    """W W^T - W_p^T W_p / alpha_p - e^{-2 eta t} C = 0 for general X, X', non-symmetric W_p, any alpha_p."""
    rng = np.random.default_rng(seed)
    worst, runs = 0.0, 0
    R = 4
    for method in ("byol", "simsiam"):
        for _ in range(2):
            sim = theorem1_simulation(rng, method, alpha_p=rng.uniform(0.3, 3.0, R), eta=rng.uniform(0.0, 0.2, R),
                                      beta=rng.uniform(0.1, 1.0, R))
            worst = max(worst, float(simulate(sim).balance.max()))
            runs += R
    return CheckResult("theorem1", "Thm 1: W W^T = W_p^T W_p / alpha_p + e^{-2 eta t} C (general X, X', any alpha_p)",
                       worst, 1e-9, worst <= 1e-9, f"{runs} random BYOL/SimSiam runs, t in [0, 20]")


def check_theorem2(seed: int) -> CheckResult:
    """Without stop-gradient ||W(t)|| <= e^{-eta t} ||W(0)|| for any predictor trajectory, so W -> 0."""
    rng = np.random.default_rng(seed + 1)
    R = 6
    eta = rng.uniform(0.05, 0.3, R)
    ds = simulate(theorem2_simulation(rng, alpha_p=rng.uniform(0.5, 2.0, R), eta=eta))
    t = ds.time.values
    norm = ds.weight_norm.values
    bound = np.exp(-eta[:, None] * t[None, :]) * norm[:, :1]
    excess = float(np.max((norm - bound) / norm[:, :1]))
    final = float(np.max(norm[:, -1] / norm[:, 0]))
    ok = excess <= 1e-9 and final <= float(np.max(np.exp(-eta * t[-1])))
    return CheckResult("theorem2", "Thm 2: no stop-gradient => ||W(t)|| <= e^{-eta t} ||W(0)|| -> 0",
                       max(excess, 0.0), 1e-9, ok, f"{R} runs, ||W(40)||/||W(0)|| <= {final:.2e}")


def check_no_predictor(seed: int) -> CheckResult:
    """No predictor, stop-gradient kept: W(t) = W(0) exp(-(X' + eta I) t) (the remark after Thm 2, fixed)."""
    rng = np.random.default_rng(seed + 2)
    n1, n2, R = 4, 2, 3
    data = _general_data(rng, n1)
    eta = 0.1
    model = LinearModel(n1=n1, n2=n2, method="simsiam", beta=None, predictor="identity", eta=eta, data=data)
    ds = simulate(Simulation(model=model, t_end=5.0, n_save=6, runs={"seed": rng.integers(0, 2**31, R)}, solver=TIGHT))
    X, Xp = data.moments(n1)
    lam, V = np.linalg.eigh(Xp + eta * np.eye(n1))
    W0 = ds.init_W.values
    err = 0.0
    for i, ti in enumerate(ds.time.values):
        exact = W0 @ ((V * np.exp(-lam * ti)) @ V.T)
        s_exact = np.linalg.eigvalsh(exact @ X @ exact.transpose(0, 2, 1))[:, ::-1]
        s = ds.s.values[:, i]
        err = max(err, float(np.abs(s - s_exact).max() / np.abs(s_exact).max()))
    return CheckResult("no_predictor", "No predictor: W(t) = W(0) exp(-(X' + eta I) t) -> 0", err, 1e-9, err <= 1e-9,
                       "closed-form matrix exponential; eigenvalues of W X W^T")


def _random_symmetric_state(rng, R, n):
    A = rng.standard_normal((R, n, n))
    F = A @ A.transpose(0, 2, 1) / n
    B = rng.standard_normal((R, n, n))
    Wp = 0.5 * (B + B.transpose(0, 2, 1)) / math.sqrt(n)
    return torch.as_tensor(F), torch.as_tensor(Wp)


def check_theorem3_identity(seed: int) -> CheckResult:
    """d/dt [F, W_p] = -[F, W_p] K - K [F, W_p] under Eq. 7 (Eqs. 8-9), at random points and any tau."""
    rng = np.random.default_rng(seed + 3)
    R, n = 2000, 6
    F, Wp = _random_symmetric_state(rng, R, n)
    p = _params(R, alpha_p=rng.uniform(0.2, 4, R), eta=rng.uniform(0, 0.5, R), sigma2=rng.uniform(0, 2, R),
                tau=rng.uniform(0, 1.5, R))
    flow = SymmetrizedFlow(F, Wp, p)
    dF, dWp = flow.derivatives(F, Wp, p)
    L = F @ Wp - Wp @ F
    dL = dF @ Wp + F @ dWp - dWp @ F - Wp @ dF
    K = flow.K(F, Wp, p)
    resid = dL + K @ L + L @ K
    mn = torch.linalg.matrix_norm
    rel = float((mn(resid) / (2 * mn(K) * mn(L))).max())
    return CheckResult("theorem3_identity", "Thm 3: d[F,W_p]/dt = -[F,W_p] K - K [F,W_p] (Eq. 8-9)", rel, 1e-10,
                       rel <= 1e-10, f"{R} random (F, W_p, tau, sigma2, alpha_p, eta)")


def check_theorem3_decay(seed: int) -> CheckResult:
    """If lambda_min(K) >= lambda_0 > 0 on the trajectory, ||[F, W_p](t)|| <= e^{-2 lambda_0 t} ||[F, W_p](0)||."""
    rng = np.random.default_rng(seed + 4)
    R, n = 8, 6
    F, Wp = _random_symmetric_state(rng, R, n)
    # theory.md check #3's setting: alpha_p = 2, eta = 0.3, sigma2 = 0.5, tau = 1
    model = LinearModel(n1=n, n2=n, method="simsiam", beta=None, predictor="symmetric", alpha_p=2.0, eta=0.3,
                        data=DataSpec(sigma2=0.5))
    ds = simulate(Simulation(model=model, engine="symmetrized", tau=1.0, t_end=10.0, n_save=401, solver=TIGHT,
                             initial=InitialState(F=F.numpy(), Wp=Wp.numpy())))
    t = ds.time.values
    kmin = ds.k_min.values
    L = ds.commutator_norm.values
    lam0 = kmin.min(axis=1)
    ok_k = bool((lam0 > 0).all())
    ratio = L / (np.exp(-2 * lam0[:, None] * t[None, :]) * L[:, :1])
    excess = float(ratio.max() - 1.0)
    shrink = float((L[:, -1] / L[:, 0]).max())
    return CheckResult("theorem3_decay", "Thm 3: lambda_min(K) >= lambda_0 > 0 => ||[F,W_p](t)|| <= e^{-2 lambda_0 t} ||[F,W_p](0)||",
                       max(excess, 0.0), 1e-9, ok_k and excess <= 1e-9,
                       f"lambda_0 in [{lam0.min():.3f}, {lam0.max():.3f}]; ||L(10)||/||L(0)|| <= {shrink:.1e}")


def _svd_state(rng, n1, n2, R):
    """Aligned initial matrices W = U diag(w) V^T, W_a = U diag(w_a) V^T, W_p = U diag(p) U^T."""
    out = {"W": [], "Wp": [], "Wa": []}
    w = rng.uniform(0.3, 1.2, (R, n2))
    wa = rng.uniform(0.0, 1.0, (R, n2))
    pp = rng.uniform(-0.3, 1.0, (R, n2))
    for r in range(R):
        U, _ = np.linalg.qr(rng.standard_normal((n2, n2)))
        V, _ = np.linalg.qr(rng.standard_normal((n1, n1)))
        out["W"].append(U @ np.diag(w[r]) @ V[:, :n2].T)
        out["Wa"].append(U @ np.diag(wa[r]) @ V[:, :n2].T)
        out["Wp"].append(U @ np.diag(pp[r]) @ U.T)
    return {k: np.stack(v) for k, v in out.items()}, w, wa, pp


def check_mode_reduction(seed: int) -> CheckResult:
    """The matrix flow started in SVD form equals the per-mode (p, w, w_a) system (§3.1)."""
    rng = np.random.default_rng(seed + 5)
    n1, n2, R = 6, 4, 6
    worst = 0.0
    for method in ("byol", "simsiam"):
        byol = method == "byol"
        model = LinearModel(n1=n1, n2=n2, method=method, beta=0.3 if byol else None, data=DataSpec(sigma2=0.5))
        init, w, wa, pp = _svd_state(rng, n1, n2, R)
        if not byol:
            init["Wa"] = init["W"].copy()
        eta = rng.uniform(0.0, 0.05, R)
        runs = {"alpha_p": rng.uniform(0.5, 2.0, R), "eta": eta, "eta_p": eta}
        common = dict(model=model, t_end=30.0, n_save=31, runs=runs, solver=TIGHT)
        matrix = simulate(Simulation(**common, initial=InitialState(**init)))
        modes = simulate(Simulation(**common, engine="modes",
                                    initial=InitialState(p=pp, s=w**2, tau=wa / w if byol else None)))  # lambda_d = 1
        for key in ("s", "p"):
            a = np.sort(matrix[key].values, axis=-1)
            b = np.sort(modes[key].values, axis=-1)
            worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
    return CheckResult("mode_reduction", "§3.1: matrix flow in SVD form == per-mode (p_j, w_j, w_a,j) system", worst,
                       1e-8, worst <= 1e-8, f"{2 * R} runs (BYOL and SimSiam), n1={n1}, n2={n2}, t in [0, 30]")


def _simulate_modes(eta, p0, s0, alpha_p, sigma2, t_end, tol=1e-9):
    """Per-mode SimSiam runs (R,) with given per-run eta, p0, s0, alpha_p; returns final s, final p, Dataset."""
    R = len(p0)
    model = LinearModel(n1=1, n2=1, method="simsiam", beta=None, data=DataSpec(sigma2=sigma2), init=InitSpec(wa="copy"))
    runs = {"eta": np.broadcast_to(eta, (R,)), "alpha_p": np.broadcast_to(alpha_p, (R,))}
    ds = simulate(Simulation(model=model, engine="modes", t_end=t_end, n_save=2, runs=runs,
                             initial=InitialState(p=np.reshape(p0, (R, 1)), s=np.reshape(s0, (R, 1))),
                             solver=Solver(rtol=tol, atol=tol * 1e-3)))
    return ds.s.values[:, -1, 0], ds.p.values[:, -1, 0], ds


def check_fixed_points(seed: int) -> CheckResult:
    """p*_-+ solve dp/dt = 0 on the parabola and are the basin edge and the attractor (§3.4)."""
    rng = np.random.default_rng(seed + 6)
    n = 40
    s2 = rng.uniform(0.1, 1.0, n)
    eta = cf.eta_critical(1.0, s2) * rng.uniform(0.05, 0.9, n)
    lo, hi = cf.fixed_points(eta, 1.0, s2)
    lam = 1 + s2
    f = lambda q: q * q * (1 - lam * q) - eta * q  # noqa: E731
    root_res = float(max(np.abs(f(lo)).max(), np.abs(f(hi)).max()))
    # basin edge: start on the parabola just below / above p*_- (per sigma2, one at a time)
    wrong = 0
    err_attr = 0.0
    for delta in (-0.02, 0.02):
        for i in range(4):
            p0 = lo[i : i + 1] * (1 + delta)
            s_end, p_end, _ = _simulate_modes(eta[i : i + 1], p0, p0**2, 1.0, float(s2[i]), 4000.0)
            collapsed = s_end[0] < 1e-8
            if collapsed != (delta < 0):
                wrong += 1
            if delta > 0:
                err_attr = max(err_attr, abs(p_end[0] - hi[i]) / hi[i])
    ok = root_res <= 1e-12 and wrong == 0 and err_attr <= 1e-6
    return CheckResult("fixed_points", "§3.4: p*_-+ = [tau -+ sqrt(tau^2 - 4 eta lam)]/(2 lam); p(0) < p*_- collapses, else -> p*_+",
                       max(root_res, err_attr), 1e-6, ok, f"root residual {root_res:.1e}; basin-edge verdict errors {wrong}/8; "
                       f"|p(T) - p*_+|/p*_+ = {err_attr:.1e}")


def check_eta_critical(seed: int) -> CheckResult:
    """Above eta_c = tau^2 / (4 lam) every mode collapses; just below it, p(0) > p*_- survives."""
    rng = np.random.default_rng(seed + 7)
    s2 = 0.5
    eta_c = float(cf.eta_critical(1.0, s2))
    p0 = rng.uniform(0.05, 2.0, 16)
    s_above, _, _ = _simulate_modes(np.full(16, 1.05 * eta_c), p0, p0**2, 1.0, s2, 6000.0)
    lo, _ = cf.fixed_points(0.95 * eta_c, 1.0, s2)
    p_ok = np.full(4, float(lo) * 1.2)
    s_below, _, _ = _simulate_modes(np.full(4, 0.95 * eta_c), p_ok, p_ok**2, 1.0, s2, 6000.0)
    survivors_above = int((s_above > 1e-8).sum())
    collapsed_below = int((s_below <= 1e-8).sum())
    ok = survivors_above == 0 and collapsed_below == 0
    return CheckResult("eta_critical", "§3.4: eta > eta_c = tau^2/(4(1+sigma2)) => collapse is unavoidable",
                       float(survivors_above + collapsed_below), 0.0, ok,
                       f"eta_c = {eta_c:.4f}: survivors at 1.05 eta_c: {survivors_above}/16; collapses at 0.95 eta_c above p*_-: {collapsed_below}/4")


def check_eta0_criterion(seed: int) -> CheckResult:
    """eta = 0: non-collapse iff s_inf = c + p*^2/alpha_p > 0 and (c > 0 or p(0) > 0); s(inf) = s_inf."""
    rng = np.random.default_rng(seed + 8)
    n = 24
    p0 = rng.uniform(-0.8, 1.2, n)
    s0 = rng.uniform(0.02, 0.8, n)
    ap = rng.uniform(0.5, 4.0, n)
    s2 = 0.5
    s_end, _, _ = _simulate_modes(np.zeros(n), p0, s0, ap, s2, 4000.0, tol=1e-11)
    pred = cf.non_collapse_eta0(p0, s0, ap, 1.0, s2)
    got = s_end > 1e-6
    s_inf = cf.parabola_constant(p0, s0, ap) + (1.0 / (1 + s2)) ** 2 / ap
    rel = float(np.max(np.abs(s_end[pred] - s_inf[pred]) / s_inf[pred])) if pred.any() else 0.0
    wrong = int((pred != got).sum())
    return CheckResult("eta0_criterion", "§3.3: eta = 0 survives iff s(0) - p(0)^2/a_p + p*^2/a_p > 0 and (c > 0 or p(0) > 0)",
                       rel, 1e-6, wrong == 0 and rel <= 1e-6,
                       f"{n} random (p0, s0, alpha_p): {wrong} verdicts wrong, {int(pred.sum())} survivors; |s(T) - s_inf|/s_inf")


def check_local_rates(seed: int) -> CheckResult:
    """Jacobian of the per-mode flow at (p*_-+, p*^2/alpha_p) has eigenvalues {-+p* D, -2 eta} (§3.4)."""
    rng = np.random.default_rng(seed + 9)
    worst = 0.0
    for _ in range(6):
        s2 = rng.uniform(0.1, 1.0)
        ap = rng.uniform(0.5, 3.0)
        eta = float(cf.eta_critical(1.0, s2)) * rng.uniform(0.1, 0.9)
        model = LinearModel(n1=1, n2=1, method="simsiam", beta=None, alpha_p=ap, eta=eta, data=DataSpec(sigma2=s2))
        lo, hi = cf.fixed_points(eta, 1.0, s2)
        jac = cf.jacobian_eigenvalues(eta, 1.0, s2, ap)
        for name, pstar in (("p_minus", float(lo)), ("p_plus", float(hi))):
            T1 = lambda v: torch.tensor([[v]], dtype=f64)  # noqa: E731
            md = ModeFlow(model, _params(1, alpha_p=ap, eta=eta, eta_p=eta, beta=0.0), T1(1 + s2), T1(1.0),
                          T1(pstar), T1(pstar**2 / ap), T1(pstar / math.sqrt(ap)))
            y = md.y0.clone()
            J = torch.autograd.functional.jacobian(lambda yy: md.rhs(torch.zeros(1, dtype=f64), yy, md.params), y)
            J = J.reshape(y.numel(), y.numel()).numpy()
            ev = np.sort(np.linalg.eigvals(J).real)
            want = np.sort(np.asarray(jac[name], float))
            worst = max(worst, float(np.max(np.abs(ev - want) / np.abs(want))))
    return CheckResult("local_rates", "§3.4: local rates at p*_-+ are +-p* sqrt(tau^2 - 4 eta lam) and -2 eta (transverse)",
                       worst, 1e-10, worst <= 1e-10, "autograd Jacobian of the per-mode RHS in (p, w) coordinates")


def check_symbolic(seed: int) -> CheckResult:
    """sympy re-derives p*_-+, eta_c, the Jacobian eigenvalues and the invariant's rate from the ODEs."""
    from .symbolic import compare_with_closed_forms

    out = compare_with_closed_forms(seed=seed)
    worst = max(out.values())
    return CheckResult("symbolic", "sympy: fixed points, eta_c, Jacobian eigenvalues, d(alpha_p s - p^2)/dt = -2 eta (...)",
                       worst, 1e-12, worst <= 1e-12, ", ".join(f"{k}={v:.0e}" for k, v in out.items()))


def check_ema_tau(seed: int) -> CheckResult:
    """On the parabola with tau(0) = 0, tau(t) = beta e^{-beta t} int_0^t p e^{beta t'} dt' / p(t) (Eq. 15)."""
    rng = np.random.default_rng(seed + 10)
    beta, eta, s2, ap = 0.4, 0.02, 0.5, 1.0
    k = 3
    p0 = rng.uniform(0.3, 0.9, k)
    model = LinearModel(n1=k, n2=k, method="byol", beta=beta, eta=eta, alpha_p=ap, data=DataSpec(sigma2=s2),
                        init=InitSpec(wa="zero"))
    sim = Simulation(model=model, engine="modes", t_end=20.0, n_save=4001, modes=ModeInit(p0=tuple(p0), s0=tuple(p0**2 / ap)),
                     solver=Solver(rtol=1e-12, atol=1e-14))
    ds = simulate(sim)
    t = ds.time.values
    worst = 0.0
    for j in range(k):
        p = ds.p.isel(run=0, mode=j).values
        tau_num = ds.tau.isel(run=0, mode=j).values
        tau_cf = cf.tau_ema_closed_form(t, p, beta)
        worst = max(worst, float(np.max(np.abs(tau_num[1:] - tau_cf[1:]))))
    return CheckResult("ema_tau", "Eq. 15: tau(t) = EMA_beta[p](t) / p(t) on the parabola, tau(0) = 0", worst, 1e-9,
                       worst <= 1e-9, "3 BYOL modes; Simpson quadrature of the sampled p on 4001 points")


def check_additive_noise(seed: int) -> CheckResult:
    """Additive noise (§3.7), tau = 1: a mode survives only if lam_x^2 / (lam_x + lam_n) >= 4 eta."""
    rng = np.random.default_rng(seed + 11)
    k = 8
    lam_x = rng.uniform(0.3, 1.5, k)
    lam_n = rng.uniform(0.0, 2.0, k)
    eta = float(np.median(lam_x**2 / (lam_x + lam_n))) / 4.0
    margin = np.abs(lam_x**2 / (lam_x + lam_n) / (4 * eta) - 1.0)
    keep = margin > 0.05  # modes too close to the threshold need unbounded time to decide
    model = LinearModel(n1=k, n2=k, method="simsiam", beta=None, eta=eta,
                        data=DataSpec(kind="additive", signal=tuple(lam_x), noise=tuple(lam_n)), init=InitSpec(wa="copy"))
    p0 = 1.0 / (lam_x + lam_n) * lam_x  # start at the eta = 0 attractor, above every basin edge
    sim = Simulation(model=model, engine="modes", t_end=8000.0, n_save=2, modes=ModeInit(p0=tuple(p0), s0=tuple(p0**2 * lam_x)),
                     solver=Solver(rtol=1e-10, atol=1e-13))
    ds = simulate(sim)
    alive = ds.s.isel(run=0, time=-1).values > 1e-8 * ds.s.isel(run=0, time=0).values
    pred = cf.survives_additive_noise(lam_x, lam_n, eta)
    wrong = int((alive[keep] != pred[keep]).sum())
    return CheckResult("additive_noise", "§3.7: weight decay removes modes with lam_x^2/(lam_x + lam_n) < 4 eta", float(wrong), 0.0,
                       wrong == 0, f"{int(keep.sum())} modes, {int(pred[keep].sum())} predicted survivors, {wrong} wrong")


def check_rule_worlds(seed: int) -> CheckResult:
    """A predictor rule gives the same trajectory in the matrix flow (eigh of F-hat) and the per-mode ODE (phi(s))."""
    rng = np.random.default_rng(seed + 12)
    n1, n2, R = 5, 4, 3
    model = LinearModel(n1=n1, n2=n2, method="byol", beta=0.5, predictor="rule", rule=directpred(eps=0.1),
                        data=DataSpec(sigma2=0.3))
    init, w, wa, _ = _svd_state(rng, n1, n2, R)
    common = dict(model=model, t_end=20.0, n_save=21, solver=TIGHT)
    matrix = simulate(Simulation(**common, initial=InitialState(**init)))
    modes = simulate(Simulation(**common, engine="modes", initial=InitialState(s=w**2, tau=wa / w)))  # lambda_d = 1
    a = np.sort(matrix.s.values, -1)
    b = np.sort(modes.s.values, -1)
    err = float(np.abs(a - b).max() / np.abs(b).max())
    return CheckResult("rule_worlds", "DirectPred rule: matrix flow (eigh of F-hat) == per-mode ODE with p = phi(s)", err, 1e-8,
                       err <= 1e-8, f"{R} runs, n2={n2}")


def check_sampled(seed: int) -> CheckResult:
    """Finite-batch SGD approaches the flow: the error in s at fixed flow time falls as batch^(-1/2),
    at a learning rate where the step's discretisation error (full-batch GD vs the flow) is smaller."""
    n_seeds = 64
    batches = [64, 256, 1024, 4096]
    lr, t_end = 1e-4, 0.5
    model = LinearModel(n1=6, n2=3, method="simsiam", beta=None, eta=0.05, init=InitSpec(wa="copy", seed=seed))
    seeds = list(range(seed, seed + n_seeds))
    ode = simulate(Simulation(model=model, t_end=t_end, n_save=2, grid={"seed": seeds}, solver=TIGHT))
    sgd = simulate(Simulation(model=model, engine="sampled", t_end=t_end, n_save=2, grid={"batch": batches, "seed": seeds},
                              sampled=SampledSpec(lr=lr, gradient="wishart", data_seed=seed)))
    s = sgd.s.isel(time=-1).values.reshape(len(batches), n_seeds, -1)
    so = ode.s.isel(time=-1).values[None]
    err = np.sqrt(((s - so) ** 2).sum(-1) / (so**2).sum(-1))
    rms = np.sqrt((err**2).mean(axis=1))
    slope = float(np.polyfit(np.log(batches), np.log(rms), 1)[0])
    gd = simulate(Simulation(model=model, engine="sampled", t_end=t_end, n_save=2, grid={"seed": seeds},
                             sampled=SampledSpec(lr=lr, gradient="expected")))
    sg = gd.s.isel(time=-1).values
    bias = float(np.sqrt((((sg - so[0]) ** 2).sum(-1) / (so[0] ** 2).sum(-1)).mean()))
    ok = abs(slope + 0.5) <= 0.15 and bias < rms[-1]
    return CheckResult("sampled_vs_ode", "Sampled SGD -> ODE: error in s at fixed t falls as batch^(-1/2)", abs(slope + 0.5), 0.15,
                       ok, f"slope {slope:.3f}; rms rel. error {', '.join(f'{e:.1e}' for e in rms)} at batch {batches}; "
                       f"full-batch GD (discretisation) error {bias:.1e}; lr {lr}, t = {t_end}, {n_seeds} seeds",
                       extra={"batches": batches, "rms": rms.tolist(), "discretisation": bias, "slope": slope})


CHECKS = {
    "theorem1": check_theorem1,
    "theorem2": check_theorem2,
    "no_predictor": check_no_predictor,
    "theorem3_identity": check_theorem3_identity,
    "theorem3_decay": check_theorem3_decay,
    "mode_reduction": check_mode_reduction,
    "fixed_points": check_fixed_points,
    "eta_critical": check_eta_critical,
    "eta0_criterion": check_eta0_criterion,
    "local_rates": check_local_rates,
    "symbolic": check_symbolic,
    "ema_tau": check_ema_tau,
    "additive_noise": check_additive_noise,
    "rule_worlds": check_rule_worlds,
    "sampled_vs_ode": check_sampled,
}


def run_checks(seed: int = 0, only: list[str] | None = None, progress: bool = False) -> list[CheckResult]:
    """Run the checks (all but :data:`SLOW_CHECKS`, or those named in ``only``) and return their results
    in table order."""
    from tqdm.auto import tqdm

    names = [n for n in CHECKS if n not in SLOW_CHECKS] if not only else only
    for name in names:
        if name not in CHECKS:
            raise ConfigError("check", name, "unknown; choose from " + ", ".join(CHECKS))
    results = []
    for name in tqdm(names, desc="checks", disable=not progress, leave=False):
        start = time.perf_counter()
        res = CHECKS[name](seed)
        res.seconds = time.perf_counter() - start
        results.append(res)
    return results

CHECKS.update(GSG_CHECKS)  # the GSG statements (docs/gsg_theory.md)
#: checks that take minutes on 2 cores: left out of the default run (``stopgrad check``, the demo);
#: ``stopgrad check --only NAME`` runs one, and the slow tests run them all
SLOW_CHECKS = frozenset(GSG_SLOW_CHECKS)
