"""Closed forms against direct evaluation and the paper's worked numbers (theory.md §3.4 check)."""

from __future__ import annotations

import numpy as np
import pytest

from stopgrad.dynamics import closed_forms as cf
from stopgrad.dynamics import symbolic


def test_paper_numbers_for_the_fixed_points():
    """theory.md §3.4: sigma2 = 0.5, tau = 1, eta = 0.05 -> p*_- = 0.05445, p*_+ = 0.61222; eta_c = 1/6."""
    lo, hi = cf.fixed_points(0.05, 1.0, 0.5)
    assert float(lo) == pytest.approx(0.05445, abs=1e-5)
    assert float(hi) == pytest.approx(0.61222, abs=1e-5)
    assert float(cf.eta_critical(1.0, 0.5)) == pytest.approx(1 / 6)
    assert float(cf.basin_edge(0.1666, 1.0, 0.5)) == pytest.approx(0.3267, abs=2e-3)
    assert np.isinf(cf.basin_edge(0.17, 1.0, 0.5))


def test_fixed_points_are_roots_and_rates_are_derivatives():
    eta, s2 = 0.03, 0.8
    lam = 1 + s2
    f = lambda p: p * p * (1 - lam * p) - eta * p  # noqa: E731
    lo, hi = cf.fixed_points(eta, 1.0, s2)
    assert abs(f(lo)) < 1e-15 and abs(f(hi)) < 1e-15
    h = 1e-6
    r0, r_lo, r_hi = cf.local_rates(eta, 1.0, s2)
    for p, r in ((0.0, r0), (lo, r_lo), (hi, r_hi)):
        assert (f(p + h) - f(p - h)) / (2 * h) == pytest.approx(float(r), rel=1e-6, abs=1e-9)


def test_eta0_criterion_cases_from_the_reference():
    """theory.md §3.3: alpha_p = 4 rescues p(0) = 1.2, s(0) = 0.5 (sigma2 = 0.5, tau = 1); alpha_p = 1 does not."""
    assert bool(cf.non_collapse_eta0(1.2, 0.5, alpha_p=4.0, sigma2=0.5))
    assert not bool(cf.non_collapse_eta0(1.2, 0.5, alpha_p=1.0, sigma2=0.5))
    assert bool(cf.non_collapse_eta0(0.1, 0.05, alpha_p=1.0, sigma2=0.5))  # above the parabola


def test_predictor_fixed_point_tends_to_a_projector():
    """§7.1 consistency: tau F((1+sigma2)F + eta/alpha_p I)^-1 -> projector onto range(F) as sigma2, eta -> 0."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 3))
    F = A @ A.T
    P = cf.predictor_fixed_point(F, tau=1.0, sigma2=1e-9, eta=1e-10)
    assert np.allclose(P @ P, P, atol=1e-5)
    assert np.linalg.matrix_rank(P, tol=1e-3) == 3


def test_symbolic_derivation_equals_closed_forms():
    out = symbolic.compare_with_closed_forms(n_points=50, seed=3)
    assert max(out.values()) <= 1e-12, out
