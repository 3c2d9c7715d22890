"""Property-based tests (hypothesis) of rule, metric and dynamics invariants."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stopgrad.analysis import effective_rank, rankme, uniformity
from stopgrad.dynamics import Solver, directcopy, directpred, directset, simulate, theorems

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
f64 = torch.float64


@st.composite
def psd_and_rotation(draw, max_n=7):
    n = draw(st.integers(2, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    rank = draw(st.integers(1, n))
    scale = draw(st.floats(1e-3, 1e3))
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, rank))
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return torch.as_tensor(scale * A @ A.T / rank), torch.as_tensor(Q)


@SETTINGS
@given(psd_and_rotation(), st.sampled_from(["directpred", "directcopy", "directset"]), st.floats(0.0, 0.5))
def test_rules_are_orthogonally_equivariant_symmetric_and_positive(FQ, name, eps):
    F, Q = FQ
    rule = {"directpred": directpred(eps), "directcopy": directcopy(eps), "directset": directset(0.3, eps)}[name]
    Wp = rule(F)
    assert torch.allclose(rule(Q @ F @ Q.T), Q @ Wp @ Q.T, atol=1e-8 * (1 + float(Wp.abs().max())))
    assert torch.allclose(Wp, Wp.T, atol=1e-10)
    ev = torch.linalg.eigvalsh(Wp)
    assert float(ev.min()) >= min(eps, 1e-4) - 1e-9 and float(ev.max()) <= 1 + eps + 1e-9


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(2, 6), st.integers(8, 40))
def test_rank_metrics_are_rotation_invariant_and_bounded(seed, d, n):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d)) * rng.uniform(0.01, 10, d)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    for f in (effective_rank, rankme):
        a, b = f(z), f(z @ Q)
        assert abs(a - b) <= 1e-8 * a and 1 - 1e-9 <= a <= d + 1e-6
    assert abs(uniformity(z) - uniformity(z @ Q)) < 1e-9


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.floats(0.3, 3.0), st.floats(0.0, 0.3), st.floats(0.05, 1.0),
       st.sampled_from(["byol", "simsiam"]))
def test_theorem1_invariant_on_random_configurations(seed, alpha_p, eta, beta, method):
    rng = np.random.default_rng(seed)
    sim = theorems.theorem1_simulation(rng, method, alpha_p=[alpha_p], eta=[eta], beta=[beta], n1=4, n2=2, t_end=4.0,
                                       n_save=5, solver=Solver(rtol=1e-12, atol=1e-14))
    assert float(simulate(sim).balance.max()) < 1e-9


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 0.3))
def test_removing_stop_gradient_never_exceeds_the_decay_bound(seed, eta):
    rng = np.random.default_rng(seed)
    sim = theorems.theorem2_simulation(rng, alpha_p=[1.0], eta=[eta], scale=2.0, n1=4, n2=3, t_end=5.0, n_save=6,
                                       solver=Solver(rtol=1e-10, atol=1e-12))
    ds = simulate(sim)
    t, norm = ds.time.values, ds.weight_norm.values[0]
    assert (norm <= np.exp(-eta * t) * norm[0] * (1 + 1e-9)).all()
