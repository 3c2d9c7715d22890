"""Explicit initial conditions: given states reproduce independent integrations, results replay bitwise.

References are scipy ``solve_ivp`` integrations written here from the equations of
reference/theory.md (Eqs. 2-4 and the per-mode system of §3.1), not from the package's code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from stopgrad.analysis import write_netcdf
from stopgrad.dynamics import (
    ConfigError,
    DataSpec,
    InitialState,
    InitSpec,
    LinearModel,
    ModeInit,
    SampledSpec,
    Simulation,
    Solver,
    draw_initial_matrices,
    simulate,
)

# Both integrators run at rtol <= 1e-10 over flow times <= 6 on O(1) states: their global errors are
# a few 1e-9 at most, so agreement to 1e-7 relative leaves a wide margin and still fails for any
# wrong term of the equations (those change s at O(1e-2) or more over these times).
AGREE = 1e-7
TIGHT = Solver(method="dop853", rtol=1e-11, atol=1e-13)


def _same_results(a, b) -> bool:
    """Every data variable and coordinate equal (values, dims; NaN equal to NaN), attrs aside."""
    return a.equals(b) and set(a.data_vars) == set(b.data_vars)


@pytest.mark.parametrize("kind", ["general", "isotropic"])
def test_explicit_matrices_reproduce_a_scipy_integration_of_eqs_2_to_4(kind):
    """General moments (torch backend) and isotropic ones (the exact reduction on the numba backend,
    whose span must include the rows of a given W_a(0) although init.wa is "zero")."""
    rng = np.random.default_rng(11)
    n1, n2, R = 5, 3, 2
    A = rng.standard_normal((n1, n1))
    X = A @ A.T / n1 + 0.1 * np.eye(n1)
    B = rng.standard_normal((n1, n1))
    Xp = 0.3 * B @ B.T / n1
    data = DataSpec(kind="general", X=X, X_prime=Xp)  # numpy arrays accepted
    if kind == "isotropic":
        X, Xp = np.eye(n1), 0.3 * np.eye(n1)
        data = DataSpec(sigma2=0.3)
    alpha_p, eta, eta_p, beta = 1.7, 0.03, 0.05, 0.4
    model = LinearModel(n1=n1, n2=n2, method="byol", beta=beta, alpha_p=alpha_p, eta=eta, eta_p=eta_p, data=data)
    W0 = rng.standard_normal((R, n2, n1)) / math.sqrt(n1)
    Wp0 = rng.standard_normal((R, n2, n2)) / math.sqrt(n2)
    Wa0 = rng.standard_normal((R, n2, n1)) / math.sqrt(n1)
    times = (0.5, 1.5, 4.0)
    sim = Simulation(model=model, t_end=4.0, save_times=times, grid={"eta": [eta, eta]}, solver=TIGHT,
                     initial=InitialState(W=W0, Wp=Wp0, Wa=Wa0))
    ds = simulate(sim)
    assert ds.attrs["backend"] == ("torch" if kind == "general" else "numba")
    assert list(ds.time.values) == [0.0, *times]
    for r in range(R):
        def rhs(t, y):
            W = y[: n2 * n1].reshape(n2, n1)
            Wp = y[n2 * n1 : n2 * n1 + n2 * n2].reshape(n2, n2)
            Wa = y[n2 * n1 + n2 * n2 :].reshape(n2, n1)
            G = Wa @ X - Wp @ W @ (X + Xp)  # Eq. 2-3: the residual of the prediction
            return np.concatenate([(Wp.T @ G - eta * W).ravel(), (alpha_p * G @ W.T - eta_p * Wp).ravel(),
                                   (beta * (W - Wa)).ravel()])

        y0 = np.concatenate([W0[r].ravel(), Wp0[r].ravel(), Wa0[r].ravel()])
        sol = solve_ivp(rhs, (0, 4.0), y0, method="DOP853", t_eval=[0.0, *times], rtol=1e-12, atol=1e-14)
        W = sol.y[: n2 * n1].T.reshape(-1, n2, n1)
        s_ref = np.linalg.eigvalsh(W @ X @ W.transpose(0, 2, 1))[:, ::-1]
        assert np.abs(ds.s.values[r] - s_ref).max() <= AGREE * s_ref.max()
        norm_ref = np.linalg.norm(W, axis=(1, 2))
        assert np.allclose(ds.weight_norm.values[r], norm_ref, rtol=AGREE, atol=0)
    # the stored initial state is the given one
    assert np.array_equal(ds.init_W.values, W0) and np.array_equal(ds.init_Wa.values, Wa0)


def test_explicit_mode_states_reproduce_the_per_mode_ode():
    rng = np.random.default_rng(5)
    k, R = 3, 4
    signal, noise = np.array([1.0, 0.7, 0.4]), np.array([0.2, 0.5, 0.9])
    lam_s, lam_d = signal + noise, signal
    alpha_p, eta, beta = 1.3, 0.02, 0.6
    model = LinearModel(n1=k, n2=k, method="byol", beta=beta, alpha_p=alpha_p, eta=eta,
                        data=DataSpec(kind="additive", signal=signal, noise=noise))
    p0 = rng.uniform(-0.3, 1.0, (R, k))
    s0 = rng.uniform(0.05, 1.0, (R, k))
    tau0 = rng.uniform(-0.5, 1.5, (R, k))
    times = (0.7, 2.0, 6.0)
    sim = Simulation(model=model, engine="modes", t_end=6.0, save_times=times, solver=TIGHT,
                     initial=InitialState(p=p0, s=s0, tau=tau0))  # R runs: the initial state's run axis
    ds = simulate(sim)
    assert ds.sizes["run"] == R
    for r in range(R):
        w0 = np.sqrt(s0[r] / lam_d)

        def rhs(t, y):
            p, w, wa = y[:k], y[k : 2 * k], y[2 * k :]
            g = wa * lam_d - p * w * lam_s
            return np.concatenate([alpha_p * w * g - eta * p, p * g - eta * w, beta * (w - wa)])

        sol = solve_ivp(rhs, (0, 6.0), np.concatenate([p0[r], w0, tau0[r] * w0]), method="DOP853",
                        t_eval=[0.0, *times], rtol=1e-12, atol=1e-14)
        p, w, wa = sol.y[:k].T, sol.y[k : 2 * k].T, sol.y[2 * k :].T
        assert np.allclose(ds.p.values[r], p, rtol=AGREE, atol=AGREE)
        assert np.allclose(ds.s.values[r], lam_d * w * w, rtol=AGREE, atol=AGREE * (lam_d * w * w).max())
        assert np.allclose(ds.tau.values[r], wa / w, rtol=AGREE, atol=AGREE)
    assert np.array_equal(ds.init_tau.values, tau0) and np.array_equal(ds.init_p.values, p0)


def test_mode_tau0_sets_the_target_start():
    model = LinearModel(n1=2, n2=2, method="byol", beta=0.5)
    ds = simulate(Simulation(model=model, engine="modes", t_end=1.0, n_save=2, modes=ModeInit(p0=0.5, s0=0.3, tau0=(0.25, 2.0))))
    assert np.array_equal(ds.tau.values[0, 0], [0.25, 2.0])
    with pytest.raises(ConfigError, match="modes.tau0"):
        Simulation(model=LinearModel(n1=2, n2=2, method="simsiam", beta=None), engine="modes",
                   modes=ModeInit(tau0=0.5))


def _replays(sim, tmp_path):
    first = simulate(sim)
    again = simulate(Simulation(**{**sim.__dict__, "initial": first}))
    assert _same_results(first, again)
    path = write_netcdf(first, tmp_path / "first.nc")
    from_file = simulate(Simulation(**{**sim.__dict__, "initial": str(path)}))
    assert _same_results(first, from_file)
    return first


def test_matrix_sweep_replays_bitwise_from_its_stored_initial_state(tmp_path):
    model = LinearModel(n1=10, n2=4, method="byol", beta=0.5, init=InitSpec(wa="random"))
    ds = _replays(Simulation(model=model, t_end=20.0, n_save=5, grid={"seed": [0, 1, 2], "eta": [0.0, 0.05]}), tmp_path)
    assert ds.attrs["backend"] == "numba" and ds.init_W.dims == ("run", "row", "col")
    assert ds.init_Wp.dims == ("run", "row", "row2")


def test_general_data_and_symmetrized_and_sampled_engines_replay_bitwise(tmp_path):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 4))
    general = LinearModel(n1=4, n2=2, data=DataSpec(kind="general", X=A @ A.T / 4, X_prime=0.2 * np.eye(4)))
    assert _replays(Simulation(model=general, t_end=5.0, n_save=3, grid={"seed": [0, 1]}), tmp_path).attrs["backend"] == "torch"
    sym = LinearModel(n1=6, n2=3, method="simsiam", beta=None, predictor="symmetric")
    ds = _replays(Simulation(model=sym, engine="symmetrized", t_end=5.0, n_save=3, grid={"tau": [0.5, 1.0]}), tmp_path)
    assert set(ds.data_vars) >= {"init_F", "init_Wp"}
    small = LinearModel(n1=4, n2=2, method="byol", beta=0.5)
    _replays(Simulation(model=small, engine="sampled", t_end=0.05, n_save=3, grid={"seed": [0, 1]},
                        sampled=SampledSpec(lr=0.01, batch=16)), tmp_path)


def test_mode_grid_replays_bitwise_through_the_lane_kernel(tmp_path):
    model = LinearModel(n1=1, n2=1, method="byol", beta=0.5)
    grid = {"p0": np.linspace(-0.2, 1.0, 8), "eta": np.linspace(0.0, 0.1, 8)}  # 64 runs: the one-mode kernel
    ds = _replays(Simulation(model=model, engine="modes", t_end=30.0, n_save=4, grid=grid, modes=ModeInit(s0=0.2),
                             solver=Solver(method="dopri5", rtol=1e-6, atol=1e-8)), tmp_path)
    assert np.array_equal(ds.init_p.values[:, 0], ds.p0.values)
    ds2 = _replays(Simulation(model=model, engine="modes", t_end=10.0, n_save=3, grid={"p0": [0.1, 0.5]},
                              modes=ModeInit(on_parabola=True)), tmp_path)
    assert np.allclose(ds2.init_s.values[:, 0], ds2.p0.values**2, rtol=1e-15)


def test_draw_follows_its_documented_order_and_the_models_scales():
    model = LinearModel(n1=5, n2=3, predictor="learned", init=InitSpec(w_scale=0.7, wp_scale=1.3, wa="random", seed=9))
    got = draw_initial_matrices(model)  # scales and seed from the model
    rng = np.random.default_rng(9)
    W = rng.standard_normal((3, 5)) * (0.7 / math.sqrt(5))  # (w_scale / sqrt(n1)) N(0, 1), as documented
    Wp = rng.standard_normal((3, 3)) * (1.3 / math.sqrt(3))
    Wa = rng.standard_normal((3, 5)) * (0.7 / math.sqrt(5))
    assert np.array_equal(got["W"][0], W) and np.array_equal(got["Wp"][0], Wp) and np.array_equal(got["Wa"][0], Wa)


def test_specs_with_numpy_arrays_stay_hashable_and_compare_by_value():
    X = np.diag([1.0, 0.5, 0.25])
    a = LinearModel(n1=3, n2=2, data=DataSpec(kind="general", X=X, X_prime=0.1 * np.eye(3)))
    b = LinearModel(n1=3, n2=2, data=DataSpec(kind="general", X=X.tolist(), X_prime=(0.1 * np.eye(3)).tolist()))
    assert hash(a) == hash(b) and a == b
    W = np.ones((2, 3))
    s1, s2 = InitialState(W=W), InitialState(W=W.copy())
    assert hash(s1) == hash(s2) and s1 == s2 and s1 != InitialState(W=2 * W)
    W[0, 0] = 5.0  # the state holds its own read-only copy
    assert s1.W.array[0, 0] == 1.0 and not s1.W.array.flags.writeable


@pytest.mark.parametrize("kwargs,match", [
    (lambda: dict(initial=InitialState(W=np.ones((3, 3)))), "initial.W"),
    (lambda: dict(initial=InitialState(p=0.3)), "not read by engine"),
    (lambda: dict(engine="modes", initial=InitialState(s=np.array([0.1, -0.1]))), "^s = "),
    (lambda: dict(engine="modes", initial=InitialState(p=np.ones(3))), "initial.p"),
    (lambda: dict(initial=InitialState(W=[[1.0, math.nan, 0, 0], [0, 0, 0, 0]])), "finite"),
    (lambda: dict(save_times=(1.0, 0.5)), "strictly increasing"),
    (lambda: dict(save_times=(0.5, 200.0)), "save_times"),
])
def test_bad_initial_states_are_rejected_with_the_field_named(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Simulation(model=LinearModel(n1=4, n2=2), t_end=100.0, **kwargs())


def test_initial_state_from_npz_and_npy(tmp_path):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((2, 4))
    np.save(tmp_path / "W.npy", W)
    np.savez(tmp_path / "state.npz", W=W, Wp=np.eye(2))
    model = LinearModel(n1=4, n2=2, init=InitSpec(wa="copy"))
    a = simulate(Simulation(model=model, t_end=2.0, n_save=2, initial=InitialState(W=str(tmp_path / "W.npy"))))
    b = simulate(Simulation(model=model, t_end=2.0, n_save=2, initial=str(tmp_path / "state.npz")))
    assert np.array_equal(a.init_W.values[0], W) and np.array_equal(a.init_Wa.values[0], W)  # wa = "copy" copies W
    assert np.array_equal(b.init_Wp.values[0], np.eye(2))
