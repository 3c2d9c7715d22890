"""Matrix, per-mode and symmetrised flows: reductions, invariants, and failures the checks must catch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stopgrad.dynamics import (DataSpec, InitSpec, LinearModel, MatrixFlow, ModeInit, Simulation, Solver, integrate,
                               simulate)
from stopgrad.dynamics import theorems as th
from stopgrad.dynamics import draw_initial_matrices

f64 = torch.float64
TIGHT = Solver(rtol=1e-12, atol=1e-14)


def _params(R, **kw):
    return {k: torch.full((R,), float(v), dtype=f64) for k, v in kw.items()}


def _flow(model, R=3, reduce="auto", **kw):
    vals = dict(alpha_p=model.alpha_p, eta=model.eta, eta_p=model.eta_pred, beta=model.beta or 0.0,
                sigma2=model.data.sigma2)
    vals.update(kw)
    init = draw_initial_matrices(model, np.arange(R) + 11, np.ones(R), np.ones(R))
    return MatrixFlow(model, _params(R, **vals), init, reduce=reduce)


@pytest.mark.parametrize("method,wa", [("byol", "zero"), ("byol", "random"), ("simsiam", "zero")])
@pytest.mark.parametrize("predictor", ["learned", "symmetric", "identity"])
def test_isotropic_reduction_is_exact(method, wa, predictor):
    model = LinearModel(n1=20, n2=6, method=method, beta=0.4 if method == "byol" else None, eta=0.03,
                        predictor=predictor, init=InitSpec(wa=wa if method == "byol" else "zero"))
    ts = np.linspace(0, 15, 6)
    red, full = _flow(model), _flow(model, reduce=False)
    assert red.reduced and red.r == (12 if wa == "random" else 6) and not full.reduced
    a = integrate(red.rhs, red.y0, ts, TIGHT, params=red.params, observe=red.observe)
    b = integrate(full.rhs, full.y0, ts, TIGHT, params=full.params, observe=full.observe)
    for key in ("s", "loss", "weight_norm"):
        assert torch.allclose(a.values[key], b.values[key], rtol=1e-9, atol=1e-11), key


def test_theorem1_balance_holds_and_breaks_with_coupled_predictor_decay():
    """Theorem 1 needs the predictor decay -eta W_p; coupled SGD decay (-alpha_p eta W_p) breaks it."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 5))
    model = LinearModel(n1=5, n2=3, method="byol", beta=0.5, alpha_p=2.5, eta=0.1,
                        data=DataSpec(kind="general", X=(X @ X.T / 5).tolist(), X_prime=(0.3 * np.eye(5)).tolist()))
    ts = np.linspace(0, 10, 11)
    good = _flow(model)
    res = integrate(good.rhs, good.y0, ts, TIGHT, params=good.params, observe=good.observe)
    assert float(res.values["balance"].max()) < 1e-10
    bad = _flow(model, eta_p=2.5 * 0.1)
    res = integrate(bad.rhs, bad.y0, ts, TIGHT, params=bad.params, observe=bad.observe)
    assert float(res.values["balance"].max()) > 1e-2


def test_stop_gradient_matters_theorem2():
    """Without stop-gradient W decays at least as e^{-eta t}; with it, the same start does not collapse."""
    base = LinearModel(n1=10, n2=4, method="simsiam", beta=None, eta=0.02, init=InitSpec(w_scale=1.5))
    ts = np.linspace(0, 60, 31)
    out = {}
    for sg in (True, False):
        flow = _flow(dataclasses.replace(base, stop_grad=sg))
        res = integrate(flow.rhs, flow.y0, ts, TIGHT, params=flow.params, observe=flow.observe)
        out[sg] = res.values["weight_norm"].numpy()
    bound = np.exp(-0.02 * ts)[None] * out[False][:, :1]
    assert (out[False] <= bound * (1 + 1e-10)).all()
    assert (out[True][:, -1] > 1.5 * bound[:, -1]).all()  # stop-gradient: no collapse, the bound is violated


def test_symmetric_predictor_stays_symmetric_and_aligns():
    model = LinearModel(n1=12, n2=5, method="byol", beta=0.5, eta=0.05, predictor="symmetric")
    flow = _flow(model)
    res = integrate(flow.rhs, flow.y0, np.linspace(0, 80, 5), TIGHT, params=flow.params, observe=flow.observe)
    assert float(res.values["asymmetry"].abs().max()) < 1e-12
    comm = res.values["commutator"].numpy()
    assert (comm[:, -1] < 1e-3 * comm[:, 0]).all()


def test_symmetrized_engine_commutator_decays():
    model = LinearModel(n1=8, n2=5, method="byol", beta=0.5, alpha_p=2.0, eta=0.3)
    ds = simulate(Simulation(model=model, engine="symmetrized", tau=1.0, t_end=10.0, n_save=11, grid={"seed": [0, 1]}))
    c = ds.commutator.values
    assert (c[:, -1] < 1e-2 * c[:, 0]).all()
    assert float(abs(ds.asymmetry).max()) < 1e-12


def test_mode_engine_thresholds_on_the_parabola():
    """Per-mode SimSiam: p(0) just above p*_- survives and reaches p*_+, just below collapses."""
    from stopgrad.dynamics import closed_forms

    fixed_points = closed_forms.fixed_points

    eta, s2 = 0.05, 0.5
    lo, hi = fixed_points(eta, 1.0, s2)
    model = LinearModel(n1=1, n2=1, method="simsiam", beta=None, eta=eta, data=DataSpec(sigma2=s2),
                        init=InitSpec(wa="copy"))
    ds = simulate(Simulation(model=model, engine="modes", t_end=4000.0, n_save=3,
                             grid={"p0": [0.97 * float(lo), 1.03 * float(lo), 0.9]},
                             modes=ModeInit(on_parabola=True), solver=Solver(rtol=1e-10, atol=1e-13)))
    assert list(ds.verdict.values) == ["collapsed", "non-collapsed", "non-collapsed"]
    assert ds.p.isel(time=-1, mode=0).values[1:] == pytest.approx([float(hi)] * 2, rel=1e-6)


@pytest.mark.parametrize("name", list(th.CHECKS))
def test_every_check_passes(name):
    if name == "sampled_vs_ode":
        pytest.skip("covered by test_sampled.py (slow: 25 s)")
    if name in ("gsg_flow_vs_sampled", "contrastive_pca", "contrastive_pca_moco"):
        pytest.skip("covered by test_siamese.py (slow: 15-35 s)")
    res = th.run_checks(seed=1, only=[name])[0]
    assert res.passed, (res.name, res.residual, res.tolerance, res.detail)


def test_slow_checks_are_named_checks_left_out_of_the_default_run(monkeypatch):
    assert th.SLOW_CHECKS and th.SLOW_CHECKS <= set(th.CHECKS)
    ran = []
    for name in th.CHECKS:  # record the names instead of running minutes of checks
        monkeypatch.setitem(th.CHECKS, name, lambda seed, _n=name: ran.append(_n) or th.CheckResult(_n, "", 0.0, 1.0, True))
    th.run_checks()
    assert ran == [n for n in th.CHECKS if n not in th.SLOW_CHECKS]
    ran.clear()
    th.run_checks(only=sorted(th.SLOW_CHECKS))
    assert ran == sorted(th.SLOW_CHECKS)


def test_mode_reduction_check_detects_a_non_aligned_start():
    """The matrix-vs-mode comparison is not vacuous: a random (non-SVD) start breaks the agreement."""
    rng = np.random.default_rng(3)
    n1, n2, R = 6, 4, 2
    model = LinearModel(n1=n1, n2=n2, method="simsiam", beta=None, eta=0.02)
    init, w, _, pp = th._svd_state(rng, n1, n2, R)
    init["Wp"] = init["Wp"] + 0.3 * rng.standard_normal(init["Wp"].shape)  # no longer aligned with W
    p = _params(R, alpha_p=1.0, eta=0.02, eta_p=0.02, beta=0.0, sigma2=0.5)
    mf = MatrixFlow(model, p, {**init, "Wa": init["W"]}, reduce=False)
    ts = np.linspace(0, 20, 5)
    a = integrate(mf.rhs, mf.y0, ts, TIGHT, params=mf.params, observe=mf.observe).values["s"].numpy()
    from stopgrad.dynamics import ModeFlow

    T = lambda v: torch.as_tensor(v, dtype=f64)  # noqa: E731
    md = ModeFlow(model, p, torch.full((R, n2), 1.5, dtype=f64), torch.ones((R, n2), dtype=f64), T(pp), T(w**2), T(w))
    b = integrate(md.rhs, md.y0, ts, TIGHT, params=md.params, observe=md.observe).values["s"].numpy()
    assert np.abs(np.sort(a, -1) - np.sort(b, -1)).max() > 1e-3
