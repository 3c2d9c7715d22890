"""The batched integrators against exact solutions (diffrax-style order and accuracy tests)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stopgrad.dynamics import Solver, integrate, integrate_scipy
from stopgrad.dynamics import RunTable
from stopgrad.dynamics.solvers import control, numba_lanes, numba_one_mode
from stopgrad.dynamics.solvers.driver import solve_batch
from stopgrad.dynamics.solvers.tableaux import tableau_arrays

f64 = torch.float64


def _linear_problem(R=12, n=5, seed=0):
    """y' = A_r y with stable, non-normal A_r (different per run); exact solution by matrix_exp."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(R, n, n, generator=g, dtype=f64)
    A = -(M @ M.mT) / n - 0.1 * torch.eye(n, dtype=f64) + 0.5 * (M - M.mT)
    y0 = torch.randn(R, n, generator=g, dtype=f64)
    return A, y0


def _rhs(t, y, p):
    return (p["A"] @ y[:, :, None])[:, :, 0]


def _exact(A, y0, ts):
    return torch.stack([torch.matrix_exp(A * t) @ y0[:, :, None] for t in ts], 1)[..., 0]


def test_rk4_convergence_order_is_four():
    A, y0 = _linear_problem()
    ts = np.linspace(0.0, 4.0, 5)
    exact = _exact(A, y0, ts)
    dts = np.array([0.1, 0.05, 0.025, 0.0125])  # the asymptotic range: h * |lambda_max| < 0.5
    errs = []
    for dt in dts:
        res = integrate(_rhs, y0, ts, Solver(method="rk4", dt=float(dt)), params={"A": A})
        errs.append(float((res.values["y"] - exact).abs().max()))
    order = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert abs(order - 4.0) <= 0.3, (order, errs)


@pytest.mark.parametrize("method,scipy_method", [("dopri5", "RK45"), ("dop853", "DOP853")])
def test_adaptive_methods_meet_tolerance_and_match_scipy_work(method, scipy_method):
    A, y0 = _linear_problem()
    ts = np.linspace(0.0, 5.0, 6)
    exact = _exact(A, y0, ts)
    for rtol in (1e-6, 1e-9):
        res = integrate(_rhs, y0, ts, Solver(method=method, rtol=rtol, atol=rtol * 1e-2), params={"A": A})
        err = float((res.values["y"] - exact).abs().max() / exact.abs().max())
        assert err < 50 * rtol, (method, rtol, err)
        # the same algorithm as scipy's: the same number of RHS evaluations within a few steps
        _, nfev = integrate_scipy(lambda t, y: A[0].numpy() @ y, y0[0].numpy(), ts, scipy_method, rtol, rtol * 1e-2)
        assert abs(int(res.nfev[0]) - nfev) <= 3 * (13 if method == "dop853" else 7), (res.nfev[0], nfev)
        assert (res.status == 0).all()


def test_runs_are_independent_of_their_batch():
    """Per-run step sizes: a run's trajectory does not depend on which other runs share its batch."""
    A, y0 = _linear_problem(R=9)
    A[4] = A[4] * 50.0  # one stiff run
    ts = np.linspace(0, 3, 4)
    both = integrate(_rhs, y0, ts, Solver(rtol=1e-9, atol=1e-12, chunk=4), params={"A": A})
    alone = integrate(_rhs, y0[:1], ts, Solver(rtol=1e-9, atol=1e-12), params={"A": A[:1]})
    assert torch.allclose(both.values["y"][0], alone.values["y"][0], rtol=0, atol=1e-13)
    assert both.nfev[0] == alone.nfev[0]
    assert both.nfev[4] > 3 * both.nfev[0]  # the stiff run paid for its own steps


def test_blow_up_is_reported_with_its_time():
    """y' = y^2, y(0) = y0 blows up at t = 1/y0; the run stops there and is reported, others go on."""
    y0 = torch.tensor([[1.0], [0.5], [-1.0]], dtype=f64)
    ts = np.linspace(0, 2.7, 7)  # 0, 0.45, 0.9, 1.35, ...: no save time at a singularity
    for method in ("dopri5", "dop853", "rk4"):
        res = integrate(lambda t, y, p: y * y, y0, ts, Solver(method=method, dt=1e-3, blowup=1e6))
        assert list(res.status) != [0, 0, 0]
        assert res.status[0] != 0 and res.status[1] != 0 and res.status[2] == 0
        assert res.t_fail[0] == pytest.approx(1.0, abs=1e-3)
        assert res.t_fail[1] == pytest.approx(2.0, abs=2e-3)
        y = res.values["y"][:, :, 0]
        assert torch.isnan(y[0, 3:]).all() and torch.isfinite(y[0, :3]).all()
        assert torch.isnan(y[1, 5:]).all() and torch.isfinite(y[1, :5]).all()
        assert torch.allclose(y[2], torch.as_tensor(-1.0 / (1.0 + ts), dtype=f64), atol=1e-6)
        assert "blow-up" in res.failures()[0] or "underflow" in res.failures()[0]


def test_numba_kernel_matches_torch_integrator():
    """The numba fast path takes the same steps as the torch integrator (same tableau and control)."""
    from stopgrad.dynamics import LinearModel, MatrixFlow, draw_initial_matrices

    R = 3
    model = LinearModel(n1=12, n2=6, method="byol", beta=0.5)
    init = draw_initial_matrices(model, np.arange(R), np.ones(R), np.ones(R))
    params = {k: torch.full((R,), v, dtype=f64) for k, v in dict(alpha_p=1.3, eta=0.02, eta_p=0.02, beta=0.5,
                                                                    sigma2=0.5).items()}
    flow = MatrixFlow(model, params, init)
    ts = np.linspace(0, 30, 7)
    for method in ("dopri5", "dop853"):
        ref = integrate(flow.rhs, flow.y0, ts, Solver(method=method, rtol=1e-8, atol=1e-10), params=flow.params)
        name, cfg, work = flow.numba_system()
        prm = RunTable({k: v.numpy() for k, v in params.items()}).kernel(name)
        out, stats, _ = solve_batch(name, flow.y0.numpy(), prm, cfg, ts, tableau_arrays(method), 1e-8, 1e-10, 10**6,
                                    1e8, work)
        assert np.abs(out - ref.values["y"].numpy()).max() < 1e-11
        assert np.array_equal(stats[:, 1], ref.nfev)


def test_save_times_are_hit_exactly_and_repeatable():
    A, y0 = _linear_problem(R=4)
    ts = np.array([0.0, 0.1234, 1.0, 2.71828])
    r1 = integrate(_rhs, y0, ts, Solver(rtol=1e-10, atol=1e-12), params={"A": A})
    r2 = integrate(_rhs, y0, ts, Solver(rtol=1e-10, atol=1e-12), params={"A": A})
    exact = _exact(A, y0, ts)
    assert float((r1.values["y"] - exact).abs().max()) < 1e-9
    assert torch.equal(r1.values["y"], r2.values["y"])  # bitwise repeatable on the CPU


def test_bad_time_grid_is_rejected():
    from stopgrad.dynamics import ConfigError

    A, y0 = _linear_problem(R=2)
    with pytest.raises(ConfigError, match="strictly increasing"):
        integrate(_rhs, y0, [0.0, 1.0, 1.0], params={"A": A})
    with pytest.raises(ConfigError, match="method"):
        Solver(method="euler")
    with pytest.raises(ConfigError, match="rtol"):
        Solver(rtol=math.nan)


@pytest.mark.parametrize("predictor,method,stop_grad", [
    ("learned", "byol", True), ("learned", "simsiam", True), ("identity", "simsiam", False),
    ("rule", "byol", True), ("learned", "simsiam", False),
])
def test_simd_lane_kernel_equals_the_per_run_kernel(predictor, method, stop_grad):
    """Many tiny per-mode systems go through the lane kernel; it takes exactly the per-run kernel's steps."""
    from stopgrad.dynamics import ModeInit, Simulation, simulate
    from stopgrad.dynamics.model import DataSpec, InitSpec, LinearModel, RuleSpec

    model = LinearModel(n1=3, n2=3, method=method, beta=0.5 if method == "byol" else None, eta=0.03,
                        stop_grad=stop_grad, predictor=predictor, rule=RuleSpec("directpred", eps=0.1, normalize=False),
                        data=DataSpec(kind="additive", signal=(1.0, 0.7, 0.4), noise=(0.2, 0.4, 0.6)),
                        init=InitSpec(wa="copy"))
    grid = {"p0": np.linspace(-0.3, 0.9, 10).tolist(), "eta": [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4]}
    sim = Simulation(model=model, engine="modes", t_end=50.0, n_save=6, grid=grid, modes=ModeInit(s0=(0.3, 0.2, 0.1)),
                     solver=Solver(rtol=1e-8, atol=1e-10))
    lanes = simulate(sim)  # 70 runs >= 4 lanes' worth: the lane kernel
    assert lanes.sizes["run"] >= 4 * numba_lanes.LANES
    ref = simulate(dataclasses_replace(sim, backend="torch"))
    assert np.array_equal(lanes.nfev.values, ref.nfev.values)
    # same steps; the values differ only by floating-point reassociation (fastmath sums), which runs near
    # unstable fixed points amplify to ~1e-9: well inside the solver's rtol of 1e-8
    assert np.allclose(lanes.s.values, ref.s.values, rtol=1e-8, atol=1e-12)


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def _numba_and_torch(sim, warning: str):
    """``sim`` on its own backend and on torch, each expected to warn ``warning`` (a failure kind)."""
    from stopgrad.dynamics import simulate

    with pytest.warns(RuntimeWarning, match=warning):
        fast = simulate(sim)
    with pytest.warns(RuntimeWarning, match=warning):
        ref = simulate(dataclasses_replace(sim, backend="torch"))
    return fast, ref


@pytest.mark.parametrize("predictor,method,stop_grad", [
    ("learned", "byol", True), ("symmetric", "simsiam", True), ("identity", "byol", True),
    ("learned", "simsiam", False), ("identity", "simsiam", True),
])
def test_one_mode_dopri5_kernel_takes_the_torch_solvers_steps(predictor, method, stop_grad):
    """A one-mode grid with dopri5 goes through the register-resident lane kernel (its own step-factor
    code instead of pow); it must take exactly the steps of the torch solver and land on its values."""
    from stopgrad.dynamics import ModeInit, Simulation, simulate
    from stopgrad.dynamics.model import InitSpec, LinearModel

    model = LinearModel(n1=1, n2=1, method=method, beta=0.3 if method == "byol" else None, eta=0.03,
                        alpha_p=1.5, stop_grad=stop_grad, predictor=predictor, init=InitSpec(wa="zero"))
    grid = {"p0": np.linspace(-0.4, 1.0, 12).tolist(), "eta": [0.0, 0.01, 0.05, 0.1, 0.16, 0.2]}
    sim = Simulation(model=model, engine="modes", t_end=60.0, n_save=7, grid=grid, modes=ModeInit(s0=0.2),
                     solver=Solver(method="dopri5", rtol=1e-8, atol=1e-10))
    name, _, cfg, _ = ("modes", None, [1, {"learned": 0, "symmetric": 1, "identity": 2}[predictor]], None)
    assert numba_one_mode.one_mode_applies(name, cfg, tableau_arrays("dopri5"), 72)
    fast = simulate(sim)
    ref = simulate(dataclasses_replace(sim, backend="torch"))
    assert np.array_equal(fast.nfev.values, ref.nfev.values)
    assert list(fast.verdict.values) == list(ref.verdict.values)
    assert np.allclose(fast.s.values, ref.s.values, rtol=1e-8, atol=1e-12)
    assert np.allclose(fast.p.values, ref.p.values, rtol=1e-8, atol=1e-12)


def test_one_mode_kernel_reports_failures_like_the_torch_solver():
    """Blow-up and the step limit, with the time each happened, agree between the one-mode kernel and
    torch. With eta = 0 and alpha_p = 0.5, s grows from 1 to c + p*^2 / alpha_p = 1.89 (Sec. 3.3), so w
    passes 1.2 = blowup * max|y0|; eta = 0.3 > eta_c collapses instead."""
    from stopgrad.dynamics import ModeInit, Simulation, simulate
    from stopgrad.dynamics.model import LinearModel

    model = LinearModel(n1=1, n2=1, method="simsiam", alpha_p=0.5)
    grid = {"p0": [0.0] * 40, "eta": [0.0, 0.3]}
    sim = Simulation(model=model, engine="modes", t_end=80.0, n_save=5, grid=grid, modes=ModeInit(s0=1.0),
                     solver=Solver(method="dopri5", rtol=1e-8, atol=1e-10, blowup=1.2))
    fast, ref = _numba_and_torch(sim, "blow-up")
    assert list(fast.status.values) == list(ref.status.values)
    assert set(fast.status.values) == {"blow-up", "ok"}
    assert np.allclose(fast.t_fail.values, ref.t_fail.values, equal_nan=True)
    assert np.array_equal(np.isnan(fast.s.values), np.isnan(ref.s.values))

    limited = dataclasses_replace(sim, grid={"p0": [0.5] * 64, "eta": [0.01]},
                                  solver=Solver(method="dopri5", rtol=1e-9, atol=1e-11, max_steps=30))
    fast, ref = _numba_and_torch(limited, "max steps")
    assert set(fast.status.values) == {"max steps"}
    assert np.array_equal(fast.nfev.values, ref.nfev.values)
    # the same 30 steps; round-off in the error estimate (a difference of stages) moves each step size by
    # ~1e-10 relative, so the times agree to ~1e-9, not bitwise (the per-run kernel differs by 2e-8)
    assert np.allclose(fast.t_fail.values, ref.t_fail.values, rtol=1e-7)


def test_step_factor_matches_pow_to_a_few_ulp():
    """The one-mode kernel's branch-free 0.9 err^(-1/5) against numpy's pow over the range where the
    controller is not clipped, and the clipping outside it."""
    import numba

    @numba.njit
    def many(e, out):
        for i in range(e.size):
            out[i] = control.step_factor_dp5(e[i])

    err = np.exp(np.random.default_rng(0).uniform(np.log(1e-6), np.log(1e4), 200_000))
    err = np.concatenate([err, 2.0 ** np.arange(-19, 13), [1e-6, 1e4, 1.0]])
    out = np.empty_like(err)
    many(err, out)
    assert np.max(np.abs(out / (0.9 * err**-0.2) - 1.0)) < 4 * np.finfo(float).eps
    out = np.empty(4)
    many(np.array([1e-9, 0.0, 1e7, np.inf]), out)
    assert np.all(np.minimum(10.0, out[:2]) == 10.0) and np.all(np.maximum(0.2, out[2:]) == 0.2)


def test_numba_rk4_takes_the_torch_loops_fixed_steps():
    """rk4 on the numba backend (per-run kernel) against the torch loop: the same fixed steps (nfev),
    values equal to round-off, and the same failures with their times. On the nonlinear BYOL matrix
    flow, fused multiply-adds change each step by ~1 ulp; over 1,002 steps the eigenvalues s (largest
    ~1.9) differ by 1.1e-15 absolute (measured), so atol = 1e-14 (~50 ulp of the largest) with rtol
    1e-12 bounds it: far below rk4's own error here (1.7e-6) and any wrong stage (O(h))."""
    from stopgrad.dynamics import ModeInit, Simulation, simulate
    from stopgrad.dynamics.model import DataSpec, InitSpec, LinearModel

    model = LinearModel(n1=10, n2=5, method="byol", beta=0.5, eta=0.02, data=DataSpec(sigma2=0.5),
                        init=InitSpec(wa="zero"))
    sim = Simulation(model=model, t_end=20.0, n_save=7, grid={"seed": [0, 1, 2], "alpha_p": [0.5, 2.0]},
                     solver=Solver(method="rk4", dt=0.02), backend="numba")
    fast = simulate(sim)
    assert fast.attrs["backend"] == "numba"
    ref = simulate(dataclasses_replace(sim, backend="torch"))
    assert ref.attrs["backend"] == "torch"
    assert simulate(dataclasses_replace(sim, backend="auto")).attrs["backend"] == "torch"  # results unchanged
    assert np.array_equal(fast.nfev.values, ref.nfev.values)
    assert int(fast.nfev.values[0]) == 4 * 6 * 167  # 6 gaps of 20/6, each ceil(166.67) = 167 steps of h ~ 0.01996
    assert np.allclose(fast.s.values, ref.s.values, rtol=1e-12, atol=1e-14)

    # failures: a blow-up (eta = 0, alpha_p = 0.5 grows s past 1.2 max|y0|) and the step limit
    one = LinearModel(n1=1, n2=1, method="simsiam", alpha_p=0.5)
    grid = {"p0": [0.0] * 3, "eta": [0.0, 0.3]}
    sim = Simulation(model=one, engine="modes", t_end=80.0, n_save=5, grid=grid, modes=ModeInit(s0=1.0),
                     solver=Solver(method="rk4", dt=0.05, blowup=1.2), backend="numba")
    fast, ref = _numba_and_torch(sim, "blow-up")
    assert list(fast.status.values) == list(ref.status.values)
    assert set(fast.status.values) == {"blow-up", "ok"}
    assert np.allclose(fast.t_fail.values, ref.t_fail.values, rtol=1e-12, equal_nan=True)
    assert np.array_equal(np.isnan(fast.s.values), np.isnan(ref.s.values))
    limited = dataclasses_replace(sim, grid={"p0": [0.5] * 2, "eta": [0.01]},
                                  solver=Solver(method="rk4", dt=0.05, max_steps=30))
    fast, ref = _numba_and_torch(limited, "max steps")
    assert set(fast.status.values) == {"max steps"}
    assert np.array_equal(fast.nfev.values, ref.nfev.values)
    assert np.allclose(fast.t_fail.values, ref.t_fail.values, rtol=1e-12)
