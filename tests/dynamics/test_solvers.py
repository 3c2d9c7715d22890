"""The engine's remaining pairs of definitions are equal: torch vs numba right-hand sides, DirectSet and the
step controller, and the run table's kernel rows.

Round-off bound for the right-hand sides: each entry is a sum of at most ~3 n products of O(M^3)
terms (M = the largest state entry, parameters O(1)); float64 with fused multiply-adds and
reassociation may differ by a few ulp per operation, so |a - b| <= 1e-13 max(1, M)^3 is a bound
with ~50x margin on any IEEE machine, and far below any wrong term (O(1) relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stopgrad.dynamics import LinearModel, MatrixFlow, ModeFlow, RunTable, directset, draw_initial_matrices
from stopgrad.dynamics.solvers import control
from stopgrad.dynamics.solvers.numba_rhs import directset_p, matrix_rhs, mode_rhs, mode_rhs_lanes, one_mode_rhs

ROUNDOFF = 1e-13
f64 = torch.float64


def _params(R, rng):
    return {"alpha_p": rng.uniform(0.3, 3, R), "eta": rng.uniform(0, 0.3, R), "eta_p": rng.uniform(0, 0.3, R),
            "beta": rng.uniform(0.1, 1, R), "sigma2": rng.uniform(0, 1, R)}


@pytest.mark.parametrize("predictor,method,stop_grad", [
    ("learned", "byol", True), ("symmetric", "simsiam", True), ("identity", "byol", True),
    ("learned", "simsiam", False), ("identity", "simsiam", False),
])
def test_matrix_rhs_torch_equals_numba(predictor, method, stop_grad):
    rng = np.random.default_rng(1)
    R = 5
    model = LinearModel(n1=7, n2=3, method=method, beta=0.5 if method == "byol" else None, stop_grad=stop_grad,
                        predictor=predictor)
    cols = _params(R, rng)
    table = RunTable(cols)
    flow = MatrixFlow(model, table.torch(), draw_initial_matrices(model, np.arange(R), 1.0, 1.0))
    y = flow.y0 + 0.3 * torch.as_tensor(rng.standard_normal(flow.y0.shape))  # off the initial point
    want = flow.rhs(torch.zeros(R, dtype=f64), y, flow.params).numpy()
    name, cfg, work = flow.numba_system()
    prm = table.kernel(name)
    got = np.empty_like(want)
    for r in range(R):
        matrix_rhs(0.0, y[r].numpy().copy(), prm[r], np.asarray(cfg, np.int64), got[r], np.empty(work))
    scale = max(1.0, float(y.abs().max())) ** 3
    assert np.abs(got - want).max() <= ROUNDOFF * scale


@pytest.mark.parametrize("predictor,method,stop_grad", [
    ("learned", "byol", True), ("symmetric", "simsiam", True), ("identity", "byol", True),
    ("rule", "byol", True), ("learned", "simsiam", False), ("rule", "simsiam", True),
])
def test_mode_rhs_torch_equals_the_numba_kernels(predictor, method, stop_grad):
    """ModeFlow.rhs (torch) == mode_rhs == mode_rhs_lanes (numba) == one_mode_rhs for k = 1."""
    rng = np.random.default_rng(2)
    R, k = 6, 4
    rule = directset(power=0.7, eps=0.05, floor=1e-3) if predictor == "rule" else None
    model = LinearModel(n1=k, n2=k, method=method, beta=0.5 if method == "byol" else None, stop_grad=stop_grad,
                        predictor=predictor, rule=rule)
    cols = _params(R, rng)
    cols["lam_s"] = rng.uniform(0.5, 2.0, (R, k))
    cols["lam_d"] = cols["lam_s"] * rng.uniform(0.2, 1.0, (R, k))
    table = RunTable(cols)
    T = lambda a: torch.as_tensor(a, dtype=f64)  # noqa: E731
    p0, s0, wa0 = rng.uniform(-0.5, 1, (R, k)), rng.uniform(0.05, 1, (R, k)), rng.uniform(-1, 1, (R, k))
    flow = ModeFlow(model, table.torch(), T(cols["lam_s"]), T(cols["lam_d"]), T(p0), T(s0), T(wa0))
    y = flow.y0
    want = flow.rhs(torch.zeros(R, dtype=f64), y, flow.params).numpy()
    name, cfg, work = flow.numba_system()
    prm = table.kernel(name, rule.directset_params if rule else None)
    cfg = np.asarray(cfg, np.int64)
    got = np.empty_like(want)
    for r in range(R):
        mode_rhs(0.0, y[r].numpy().copy(), prm[r], cfg, got[r], np.empty(work))
    scale = max(1.0, float(y.abs().max())) ** 3
    assert np.abs(got - want).max() <= ROUNDOFF * scale
    lanes = np.empty((want.shape[1], R))
    mode_rhs_lanes(np.ascontiguousarray(y.numpy().T), np.ascontiguousarray(prm.T), cfg, lanes, np.empty((k, R)),
                   np.empty(R))
    assert np.abs(lanes.T - want).max() <= ROUNDOFF * scale
    if predictor != "rule":  # the one-mode kernel's scalar form, mode by mode
        has_p = predictor in ("learned", "symmetric")
        v = flow.layout.views(y)
        w = v["w"].numpy()
        a = w if method == "simsiam" else v["wa"].numpy()
        p = v["p"].numpy() if has_p else np.ones_like(w)
        dv = flow.layout.views(torch.as_tensor(want))
        for r in range(R):
            for j in range(k):
                dp, dw, da = one_mode_rhs(p[r, j], w[r, j], a[r, j], cols["alpha_p"][r], cols["eta"][r],
                                          cols["eta_p"][r], cols["beta"][r], cols["lam_s"][r, j], cols["lam_d"][r, j],
                                          has_p, stop_grad, method == "simsiam")
                assert abs(dw - float(dv["w"][r, j])) <= ROUNDOFF * scale
                if has_p:
                    assert abs(dp - float(dv["p"][r, j])) <= ROUNDOFF * scale


def test_directset_numba_equals_the_rule():
    rng = np.random.default_rng(3)
    for power, eps, floor in ((0.5, 0.01, 1e-4), (1.0, 0.25, 0.0), (0.3, 0.0, 0.05)):
        rule = directset(power=power, eps=eps, floor=floor)
        s = rng.uniform(-0.1, 2.0, (50, 6))
        s[:, 0] = 1e-14 * s.max(axis=1)  # round-off-small eigenvalues count as zero in both
        want = rule.phi(torch.as_tensor(s)).numpy()
        s_max = s.max(axis=1)
        got = np.array([[directset_p(v, m, power, eps, floor) for v in row] for row, m in zip(s, s_max)])
        assert np.allclose(got, want, rtol=1e-14, atol=1e-15)


def test_torch_and_numba_step_controllers_agree():
    rng = np.random.default_rng(4)
    err = np.concatenate([np.exp(rng.uniform(np.log(1e-8), np.log(1e6), 2000)), [0.0, 1.0, np.inf]])
    h = rng.uniform(1e-3, 1.0, err.size)
    h_eff = h * rng.uniform(0.5, 1.0, err.size)
    for exponent in (-1 / 5, -1 / 8):
        accept = err <= 1.0
        landing = rng.uniform(size=err.size) < 0.3
        got = control.next_step_t(*(torch.as_tensor(a) for a in (h_eff, h, err, accept, landing)), exponent).numpy()
        want = np.array([max(he * control.accept_factor(e, exponent), hh) if a and land else
                         he * (control.accept_factor(e, exponent) if a else control.reject_factor(e, exponent))
                         for he, hh, e, a, land in zip(h_eff, h, err, accept, landing)])
        assert np.allclose(got, want, rtol=4 * np.finfo(float).eps, atol=0)


def test_run_table_kernel_rows_follow_the_named_columns():
    from stopgrad.dynamics import runs

    cols = {"alpha_p": np.array([1.0, 2.0]), "eta": np.array([0.1, 0.2]), "eta_p": np.array([0.3, 0.4]),
            "beta": np.array([0.5, 0.6]), "sigma2": np.array([0.7, 0.8]), "lam_s": np.ones((2, 3)),
            "lam_d": 2 * np.ones((2, 3))}
    t = RunTable(cols)
    m = t.kernel("matrix")
    assert list(m[1, [runs.ALPHA_P, runs.ETA, runs.ETA_P, runs.BETA, runs.SIGMA2]]) == [2.0, 0.2, 0.4, 0.6, 0.8]
    k = t.kernel("modes", (0.5, 0.01, 1e-4, True))
    assert list(k[0, [runs.RULE_POWER, runs.RULE_EPS, runs.RULE_FLOOR]]) == [0.5, 0.01, 1e-4]
    assert list(k[0, runs.LAM:]) == [1.0] * 3 + [2.0] * 3
