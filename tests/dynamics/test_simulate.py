"""Simulations and sweeps: grids as run coordinates, verdicts, backends, determinism, the data contract."""

from __future__ import annotations

import numpy as np
import pytest

from stopgrad.analysis import open_dataset, validate_dataset, write_netcdf
from stopgrad.dynamics import ConfigError, DataSpec, LinearModel, ModeInit, Simulation, Solver, simulate, sweep


def test_sweep_is_one_batch_with_swept_coordinates(tmp_path):
    model = LinearModel(n1=8, n2=4, method="byol", beta=0.5)
    sim = Simulation(model=model, t_end=20.0, n_save=5, grid={"eta": [0.0, 0.3], "beta": [0.1, 1.0], "seed": [0, 1, 2]})
    ds = sweep(sim)
    assert {d: ds.sizes[d] for d in ("run", "time", "mode")} == {"run": 12, "time": 5, "mode": 4}
    assert list(ds.eta.values[:6]) == [0.0] * 6 and list(ds.beta.values[:3]) == [0.1] * 3
    assert list(ds.seed.values[:3]) == [0, 1, 2]
    validate_dataset(ds, require=("s", "p", "alignment", "commutator", "balance", "asymmetry", "tau", "loss", "weight_norm"))
    assert ds.time.attrs["units"] == "flow" and ds.attrs["source"] == "theory"
    path = write_netcdf(ds, tmp_path / "sweep.nc")
    back = open_dataset(path)
    assert np.array_equal(back.s.values, ds.s.values) and list(back.verdict.values) == list(ds.verdict.values)
    # eta_p follows eta run by run (Theorem 1 holds in every run)
    assert float(ds.balance.max()) < 1e-6


def test_each_run_equals_its_own_simulation():
    model = LinearModel(n1=10, n2=5, method="byol", beta=0.5, eta=0.02)
    grid = simulate(Simulation(model=model, t_end=10.0, n_save=3, grid={"seed": [3, 7]}))
    import dataclasses

    alone = simulate(Simulation(model=dataclasses.replace(model, init=dataclasses.replace(model.init, seed=7)), t_end=10.0,
                                n_save=3))
    assert np.allclose(grid.s.values[1], alone.s.values[0], rtol=1e-12, atol=1e-14)


def test_numba_and_torch_backends_agree_and_are_deterministic():
    model = LinearModel(n1=12, n2=6, method="simsiam", beta=None, eta=0.02, predictor="symmetric")
    a = simulate(Simulation(model=model, t_end=30.0, n_save=4, grid={"seed": [0, 1]}, backend="numba"))
    b = simulate(Simulation(model=model, t_end=30.0, n_save=4, grid={"seed": [0, 1]}, backend="torch"))
    c = simulate(Simulation(model=model, t_end=30.0, n_save=4, grid={"seed": [0, 1]}, backend="numba"))
    assert a.attrs["backend"] == "numba" and b.attrs["backend"] == "torch"
    assert np.allclose(a.s.values, b.s.values, rtol=1e-10, atol=1e-13)
    assert np.array_equal(a.s.values, c.s.values)
    general = LinearModel(n1=4, n2=2, data=DataSpec(kind="general", X=np.eye(4).tolist(), X_prime=np.eye(4).tolist()))
    with pytest.raises(ConfigError, match="backend"):  # no numba kernel for general moments: said, not ignored
        simulate(Simulation(model=general, t_end=1.0, backend="numba"))


def test_mode_engine_with_additive_noise_data():
    model = LinearModel(n1=3, n2=3, method="simsiam", beta=None, eta=0.05,
                        data=DataSpec(kind="additive", signal=(1.0, 0.6, 0.3), noise=(0.1, 0.5, 1.0)))
    ds = simulate(Simulation(model=model, engine="modes", t_end=3000.0, n_save=3, modes=ModeInit(p0=0.6, s0=0.4),
                             solver=Solver(rtol=1e-9, atol=1e-12)))
    alive = ds.s.isel(run=0, time=-1).values > 1e-8
    # lam_x^2/(lam_x+lam_n) vs 4 eta = 0.2: 0.909, 0.327, 0.069
    assert list(alive) == [True, True, False]


@pytest.mark.parametrize("bad,match", [
    (dict(engine="nope"), "engine"),
    (dict(t_end=-1.0), "t_end"),
    (dict(grid={"eta": [0.1, -0.2]}), "grid.eta"),
    (dict(grid={"p0": [0.1]}), "cannot be swept"),
    (dict(grid={"eta": []}), "non-empty"),
    (dict(n_save=1), "n_save"),
])
def test_bad_simulations_are_rejected_with_the_field_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        Simulation(model=LinearModel(n1=4, n2=2), **bad)


@pytest.mark.parametrize("bad,match", [
    (dict(n1=-3), "n1"),
    (dict(n1=4, n2=8), "n2"),
    (dict(eta=float("nan")), "eta"),
    (dict(alpha_p=0.0), "alpha_p"),
    (dict(method="simsiam", stop_grad=True, beta=None, predictor="oracle"), "predictor"),
    (dict(method="byol", stop_grad=False), "stop_grad"),
    (dict(method="byol", beta=None), "beta"),
    (dict(n1=2, n2=1, data=DataSpec(kind="general", X=[[1, 0], [0, -1]], X_prime=[[1, 0], [0, 1]])), "positive semi-definite"),
    (dict(n1=2, n2=1, data=DataSpec(kind="general", X=[[1, 2], [0, 1]], X_prime=[[1, 0], [0, 1]])), "symmetric"),
    (dict(n1=3, n2=1, data=DataSpec(kind="general", X=[[1, 0], [0, 1]], X_prime=[[1, 0], [0, 1]])), "3x3"),
])
def test_bad_models_are_rejected_with_the_field_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        LinearModel(**bad)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_a_run_that_cannot_finish_is_reported_with_its_time(backend):
    model = LinearModel(n1=8, n2=4, method="byol", beta=0.5)
    sim = Simulation(model=model, t_end=100.0, n_save=11, grid={"seed": [0, 1]}, backend=backend,
                     solver=Solver(rtol=1e-10, atol=1e-12, max_steps=40))
    with pytest.warns(RuntimeWarning, match="max steps at t ="):
        ds = simulate(sim)
    assert list(ds.status.values) == ["max steps", "max steps"]
    t_fail = ds.t_fail.values
    assert np.all((t_fail > 0) & (t_fail < 100))
    reached = ds.time.values <= t_fail[0]
    assert np.isfinite(ds.s.values[0][reached]).all() and np.isnan(ds.s.values[0][~reached]).all()
    assert list(ds.verdict.values) == ["max steps", "max steps"]
