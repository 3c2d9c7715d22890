"""Numerics at the edges (issue 14): cancellation-free p*_-, rk4's step limit, blow-ups reported fast,
int64 seeds, the below-atol record and the Theorem 1 residual where the theorem does not apply."""

from __future__ import annotations

import warnings

import mpmath
import numpy as np
import pytest

from stopgrad.dynamics import LinearModel, ModeInit, RuleSpec, Simulation, Solver, closed_forms, simulate
from stopgrad.dynamics.model import DataSpec, InitSpec

EPS = np.finfo(float).eps


def _quiet(sim):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return simulate(sim)


@pytest.mark.parametrize("sigma2", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_fixed_point_p_minus_is_accurate_to_a_few_ulps(sigma2, tau):
    """p*_- = 2 eta / (tau + sqrt(tau^2 - 4 eta lam)) against 50-digit mpmath, eta from 1e-16 to eta_c / 2.

    Bound: the discriminant tau^2 - 4 eta lam carries 3 roundings relative to tau^2 + 4 eta lam <= 3 disc
    (eta <= eta_c / 2), so at most 9 u; the square root halves it and adds u; the sum of two positive
    terms, the product 2 eta and the division add 3 u: about 9 u in all, tested at 16 u (u = eps / 2).
    The cancelling form (tau - sqrt(.)) / (2 lam) has relative error ~1e-5 at eta = 1e-12."""
    mpmath.mp.dps = 50
    lam = 1.0 + sigma2
    eta_c = closed_forms.eta_critical(tau=tau, sigma2=sigma2)
    etas = np.concatenate([np.logspace(-16, np.log10(eta_c / 2), 40), [eta_c / 2]])
    lo, hi = closed_forms.fixed_points(etas, tau=tau, sigma2=sigma2)
    for e, got, got_hi in zip(etas, lo, hi):
        d = mpmath.sqrt(mpmath.mpf(tau) ** 2 - 4 * mpmath.mpf(e) * mpmath.mpf(lam))
        exact = (mpmath.mpf(tau) - d) / (2 * mpmath.mpf(lam))
        exact_hi = (mpmath.mpf(tau) + d) / (2 * mpmath.mpf(lam))
        assert abs((mpmath.mpf(got) - exact) / exact) <= 8 * EPS, (e, got)
        assert abs((mpmath.mpf(got_hi) - exact_hi) / exact_hi) <= 8 * EPS
    assert closed_forms.fixed_points(0.0, tau=tau, sigma2=sigma2)[0] == 0.0
    assert np.isnan(closed_forms.fixed_points(2 * eta_c, tau=tau, sigma2=sigma2)[0])


def test_rk4_honours_max_steps():
    """rk4 with dt = 1e-9 to t_end = 1 would take 1e9 steps; with max_steps = 1000 it stops after exactly
    1000 steps and reports "max steps" at t = 1000 dt."""
    sim = Simulation(model=LinearModel(n1=4, n2=2), t_end=1.0, n_save=3,
                     solver=Solver(method="rk4", dt=1e-9, max_steps=1000))
    ds = _quiet(sim)
    assert ds.status.values.tolist() == ["max steps"]
    assert ds.nfev.values.tolist() == [4000]  # 4 evaluations per classical RK4 step
    assert ds.t_fail.values[0] == pytest.approx(1000 * 0.5 / 500_000_000, rel=1e-12)  # h = (t1 - t0) / n_sub
    assert np.isnan(ds.s.values[0, 1:]).all() and np.isfinite(ds.s.values[0, 0]).all()


def test_directpred_with_huge_noise_is_a_fast_reported_failure():
    """sigma2 = 1e300 makes F-hat overflow: the run fails at t = 0 with a status, after a handful of
    right-hand-side evaluations (a count, not a time: it was 1e6 steps of a NaN step before)."""
    model = LinearModel(n1=4, n2=2, predictor="rule", rule=RuleSpec(name="directpred"), data=DataSpec(sigma2=1e300))
    ds = _quiet(Simulation(model=model, t_end=1.0, n_save=3))
    assert ds.status.values[0] != "ok" and ds.t_fail.values[0] == 0.0
    assert int(ds.nfev.values[0]) < 100
    assert ds.verdict.values[0] == ds.status.values[0]


def test_grid_seeds_beyond_2_pow_53_are_distinct_runs():
    """Seeds 2^53 and 2^53 + 1 are equal as float64; as int64 they draw different initial conditions."""
    seeds = [2**53, 2**53 + 1, 2**63 - 1]
    ds = _quiet(Simulation(model=LinearModel(n1=4, n2=2), t_end=1.0, n_save=2, grid={"seed": seeds}))
    assert ds.seed.values.tolist() == seeds
    assert not np.array_equal(ds.s.values[0], ds.s.values[1])
    alone = _quiet(Simulation(model=LinearModel(n1=4, n2=2, init=InitSpec(seed=2**53 + 1)), t_end=1.0, n_save=2))
    np.testing.assert_array_equal(alone.s.values[0], ds.s.values[1])  # same seed, same CPU: bitwise


def test_a_mode_below_atol_is_recorded():
    """SimSiam without stop-gradient collapses: s falls like e^{-c t} to ~1e-19 by t = 30, under the
    solver's atol = 1e-10 in amplitude (sqrt(s) < atol). The run records it; a run that keeps its modes
    (BYOL, eta = 0 at T = 5) does not."""
    no_sg = LinearModel(n1=6, n2=3, method="simsiam", beta=None, stop_grad=False, eta=0.0)
    ds = _quiet(Simulation(model=no_sg, t_end=30.0, n_save=31))
    s = ds.s.values[0]
    first = np.argmax((np.sqrt(np.clip(s[1:], 0, None)) < 1e-10).any(-1)) + 1
    assert ds.below_atol.values.tolist() == [1]
    assert ds.t_below_atol.values[0] == ds.time.values[first]
    assert ds.attrs["below_atol_runs"] == 1
    keep = _quiet(Simulation(model=LinearModel(n1=6, n2=3, eta=0.0), t_end=5.0, n_save=6))
    assert keep.below_atol.values.tolist() == [0] and np.isnan(keep.t_below_atol.values[0])


def test_balance_is_nan_with_a_reason_where_theorem1_does_not_hold():
    """Theorem 1 needs the stop-gradient (and eta_p = eta): without it the residual is NaN with a note;
    with it the residual stays at the integration error."""
    no_sg = LinearModel(n1=6, n2=3, method="simsiam", beta=None, stop_grad=False, eta=0.01)
    ds = _quiet(Simulation(model=no_sg, t_end=5.0, n_save=6))
    assert np.isnan(ds.balance.values).all() and "Theorem 1" in ds.balance.attrs["note"]
    sg = _quiet(Simulation(model=LinearModel(n1=6, n2=3, eta=0.01), t_end=5.0, n_save=6))
    assert np.isfinite(sg.balance.values).all() and float(sg.balance.max()) < 1e-6
    mixed = _quiet(Simulation(model=LinearModel(n1=6, n2=3, eta=0.01), t_end=5.0, n_save=6,
                              grid={"eta_p": [0.01, 0.05]}))
    assert np.isfinite(mixed.balance.values[0]).all() and np.isnan(mixed.balance.values[1]).all()


def test_per_mode_engine_with_isotropic_data_never_builds_n1_squared():
    """n1 = 100000 isotropic: validation and the per-mode moments need O(k), not an 80 GB identity."""
    sim = Simulation(model=LinearModel(n1=100_000, n2=2), engine="modes", t_end=1.0, n_save=2,
                     modes=ModeInit(p0=0.5, s0=0.5))
    ds = _quiet(sim)
    assert ds.status.values.tolist() == ["ok"]
