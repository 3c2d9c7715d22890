"""Predictor rules: the published forms, invariances, and one rule working in every world."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stopgrad.dynamics import (CorrelationEMA, LinearModel, ModeInit, Simulation, directcopy, directpred, directset,
                               make_rule, matrix_rule, simulate, spectral_rule)

f64 = torch.float64


def _psd(R=5, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(R, n, n, generator=g, dtype=f64)
    return A @ A.mT / n


def _orth(n, seed=1):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=f64))
    return q


def test_directpred_matches_the_code_formula():
    """luckmatters compute_w_corr: p_j = max(1e-4, sqrt(max(s_j, 0) / max s) + eps) in F's eigenbasis."""
    F = _psd()
    Wp = directpred(eps=0.01)(F)
    s, U = torch.linalg.eigh(F)
    p = torch.clamp(torch.sqrt(s.clamp(min=0) / s.amax(-1, keepdim=True)) + 0.01, min=1e-4)
    assert torch.allclose(Wp, U @ torch.diag_embed(p) @ U.mT, atol=1e-12)


def test_directcopy_needs_no_eigendecomposition_but_equals_directset_one():
    F = _psd()
    a = directcopy(eps=0.25)(F)
    b = directset(power=1.0, eps=0.25, floor=0.0)(F)
    assert torch.allclose(a, b, atol=1e-12)
    lam_max = torch.linalg.eigvalsh(F)[:, -1]
    assert torch.allclose(a, F / lam_max[:, None, None] + 0.25 * torch.eye(6, dtype=f64), atol=1e-12)


@pytest.mark.parametrize("rule", [directpred(0.1), directcopy(0.25), directset(0.3, 0.05), directcopy(0.1, normalize=False)])
def test_rules_are_symmetric_psd_scale_free_and_equivariant(rule):
    F = _psd()
    Wp = rule(F)
    assert torch.allclose(Wp, Wp.mT, atol=1e-12)
    assert (torch.linalg.eigvalsh(Wp) > 0).all()
    Q = _orth(6)
    assert torch.allclose(rule(Q @ F @ Q.T), Q @ Wp @ Q.T, atol=1e-10)
    if "raw" not in rule.name:
        assert torch.allclose(rule(7.5 * F), Wp, atol=1e-10)
    s = torch.linalg.eigvalsh(F)
    assert torch.allclose(torch.sort(rule.phi(s), dim=-1).values, torch.linalg.eigvalsh(Wp), atol=1e-10)


def test_user_rules_in_a_few_lines():
    @spectral_rule
    def quarter(s, s_max):
        return (s.clamp(min=0) / s_max) ** 0.25 + 0.05

    F = _psd()
    s, U = torch.linalg.eigh(F)
    want = U @ torch.diag_embed((s / s[:, -1:]) ** 0.25 + 0.05) @ U.mT
    assert torch.allclose(quarter(F), want, atol=1e-12)

    @matrix_rule
    def shrink(F):
        return 0.5 * F

    assert torch.allclose(shrink(F), 0.5 * F)
    with pytest.raises(TypeError, match="spectral"):
        shrink.phi(s)
    with pytest.raises(ValueError, match="unknown"):
        make_rule("nope")


def test_correlation_ema_follows_eq19():
    ema = CorrelationEMA(rho=0.3, freq=5)
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(64, 4, generator=g, dtype=f64), torch.randn(64, 4, generator=g, dtype=f64)
    first = ema.update(f1)
    assert torch.allclose(first, f1.T @ f1 / 64)  # initialised to the first batch mean
    second = ema.update(f2)
    assert torch.allclose(second, 0.3 * (f1.T @ f1 / 64) + 0.7 * (f2.T @ f2 / 64))
    assert [ema.due(k) for k in range(6)] == [True, False, False, False, False, True]
    avg = CorrelationEMA(rho=None)
    avg.update(f1)
    avg.update(f2)
    assert torch.allclose(avg.F, 0.5 * (f1.T @ f1 + f2.T @ f2) / 64)


def test_a_user_rule_runs_in_the_matrix_flow_the_mode_ode_and_sampled_sgd():
    @spectral_rule
    def sqrt_rule(s, s_max):
        return torch.sqrt(s.clamp(min=0)) + 0.1

    model = LinearModel(n1=6, n2=3, method="byol", beta=0.5, eta=0.01, predictor="rule", rule=sqrt_rule)
    for engine in ("matrix", "modes", "sampled"):
        ds = simulate(Simulation(model=model, engine=engine, t_end=2.0, n_save=3, modes=ModeInit(p0=0.3, s0=0.3)))
        assert np.isfinite(ds.s.values).all(), engine
    with pytest.raises(Exception, match="spectral"):
        Simulation(model=LinearModel(n1=6, n2=3, predictor="rule", rule=matrix_rule(lambda F: F)), engine="modes")
