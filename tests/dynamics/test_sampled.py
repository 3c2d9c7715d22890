"""Sampled SGD: the stop-gradient, the gradient forms, the Wishart shortcut and convergence to the flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stopgrad.dynamics import (InitSpec, LinearModel, SampledSpec, Simulation, Solver, autograd_gradients,
                               moment_gradients, simulate, wishart_moments)
from stopgrad.dynamics.sampled import batch_moments

f64 = torch.float64


def _state(R=4, n1=6, n2=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(R, n2, n1, generator=g, dtype=f64)
    Wp = torch.randn(R, n2, n2, generator=g, dtype=f64)
    Wa = torch.randn(R, n2, n1, generator=g, dtype=f64)
    x1 = torch.randn(R, 50, n1, generator=g, dtype=f64)
    x2 = x1 + 0.3 * torch.randn(R, 50, n1, generator=g, dtype=f64)
    return W, Wp, Wa, x1, x2


@pytest.mark.parametrize("simsiam,stop_grad", [(False, True), (True, True), (True, False)])
def test_autograd_with_detach_equals_closed_form_gradient(simsiam, stop_grad):
    W, Wp, Wa, x1, x2 = _state()
    flags = dict(stop_grad=stop_grad, simsiam=simsiam, identity=False)
    gW, gWp, loss = autograd_gradients(W, Wp, None if simsiam else Wa, x1, x2, **flags)
    S11, S21, S22 = batch_moments(x1, x2)
    hW, hWp, hloss = moment_gradients(W, Wp, None if simsiam else Wa, S11, S21, S22, **flags)
    assert torch.allclose(gW, hW, rtol=1e-12, atol=1e-12)
    assert torch.allclose(gWp, hWp, rtol=1e-12, atol=1e-12)
    assert torch.allclose(loss, hloss, rtol=1e-12)


def test_stop_gradient_blocks_the_target_branch():
    """With detach the W-gradient is W_p^T(W_p W S11 - W S21) only; without it the target's term enters."""
    W, Wp, _, x1, x2 = _state()
    g_sg, _, _ = autograd_gradients(W, Wp, None, x1, x2, stop_grad=True, simsiam=True, identity=False)
    g_no, _, _ = autograd_gradients(W, Wp, None, x1, x2, stop_grad=False, simsiam=True, identity=False)
    S11, S21, S22 = batch_moments(x1, x2)
    online_only = Wp.mT @ (Wp @ W @ S11 - W @ S21)
    assert torch.allclose(g_sg, online_only, atol=1e-12)
    target_term = -(Wp @ W @ S21.mT - W @ S22)
    assert torch.allclose(g_no - g_sg, target_term, atol=1e-12)
    assert float(target_term.abs().max()) > 1e-2  # the difference is real, not round-off


def test_wishart_moments_have_the_sample_moments_distribution():
    """Mean and variance of Wishart-drawn batch moments match those of explicit Gaussian batches."""
    n1, B, R = 3, 40, 20000
    X = np.eye(n1) + 0.3
    Xp = 0.5 * np.eye(n1)
    joint = np.block([[X + Xp, X], [X, X + Xp]])
    lam, V = np.linalg.eigh(joint)
    L = torch.as_tensor((V * np.sqrt(lam)) @ V.T, dtype=f64).expand(R, 2 * n1, 2 * n1)
    S11, S21, _ = wishart_moments(L, np.full(R, B), np.random.default_rng(0))
    z = torch.randn(R, B, 2 * n1, dtype=f64, generator=torch.Generator().manual_seed(1)) @ L.mT
    T11, T21, _ = batch_moments(z[..., :n1], z[..., n1:])
    for a, b, pop in ((S11, T11, X + Xp), (S21, T21, X)):
        se = b.std(0) / np.sqrt(R)
        assert (abs(a.mean(0) - torch.as_tensor(pop)) < 5 * se).all()
        assert torch.allclose(a.var(0), b.var(0), rtol=0.08)  # two estimates of var, each ~1% noise


def test_sampled_engine_converges_to_the_flow_as_batch_grows():
    """rms error in s at fixed flow time ~ batch^(-1/2) (Wishart moments, exact for Gaussian data)."""
    model = LinearModel(n1=4, n2=2, method="simsiam", beta=None, eta=0.05, init=InitSpec(wa="copy"))
    seeds = list(range(32))
    batches = [16, 64, 256]
    ode = simulate(Simulation(model=model, t_end=0.25, n_save=2, grid={"seed": seeds}, solver=Solver(rtol=1e-11, atol=1e-13)))
    sgd = simulate(Simulation(model=model, engine="sampled", t_end=0.25, n_save=2, grid={"batch": batches, "seed": seeds},
                              sampled=SampledSpec(lr=2.5e-4, gradient="wishart")))
    s = sgd.s.isel(time=-1).values.reshape(len(batches), len(seeds), -1)
    so = ode.s.isel(time=-1).values[None]
    rms = np.sqrt((((s - so) ** 2).sum(-1) / (so**2).sum(-1)).mean(1))
    slope = np.polyfit(np.log(batches), np.log(rms), 1)[0]
    assert -0.75 < slope < -0.25, (slope, rms)


def test_sampled_autograd_and_wishart_agree_statistically():
    model = LinearModel(n1=4, n2=2, method="byol", beta=0.5, eta=0.05, init=InitSpec(wa="copy"))
    common = dict(model=model, engine="sampled", t_end=0.3, n_save=2, grid={"seed": list(range(24))})
    ode = simulate(Simulation(model=model, t_end=0.3, n_save=2, grid={"seed": list(range(24))}))
    errs = {}
    for grad in ("autograd", "wishart"):
        ds = simulate(Simulation(**common, sampled=SampledSpec(lr=2e-3, batch=16, gradient=grad)))
        errs[grad] = float(np.sqrt(((ds.s - ode.s).isel(time=-1) ** 2).sum("mode").mean()))
    assert 0.6 < errs["autograd"] / errs["wishart"] < 1.6, errs


def test_divergent_sgd_is_reported_not_written_silently():
    model = LinearModel(n1=4, n2=2, method="simsiam", beta=None, eta=0.0, init=InitSpec(w_scale=3.0, wa="copy"))
    with pytest.warns(RuntimeWarning, match="blow-up"):
        ds = simulate(Simulation(model=model, engine="sampled", t_end=50.0, n_save=6, grid={"seed": [0, 1]},
                                 sampled=SampledSpec(lr=0.9, batch=8)))
    assert (ds.status.values == "blow-up").all()
    assert np.isfinite(ds.t_fail.values).all()
    assert np.isnan(ds.s.isel(time=-1).values).all()
