"""The data contract (build, validate, atomic netCDF round trip) and the unit mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stopgrad.analysis import (DatasetError, FlowUnits, OptimizerUnits, build_dataset, open_dataset,
                               spectral_quantities, to_flow, to_optimizer, validate_dataset, write_netcdf)


def _ds():
    t = np.linspace(0, 1, 4)
    return build_dataset({"s": np.ones((2, 4, 3)), "loss": np.zeros((2, 4))}, time=t, time_units="flow", source="theory",
                         method="byol", config='{"a": 1}', run_coords={"eta": np.array([0.0, 0.1])},
                         attrs={"flag": True, "none": None, "d": {"x": 1}})


def test_roundtrip_keeps_every_variable_and_attribute(tmp_path):
    ds = _ds()
    path = write_netcdf(ds, tmp_path / "a.nc")
    back = open_dataset(path, require=("s",))
    assert np.array_equal(back.s.values, ds.s.values) and np.array_equal(back.eta.values, ds.eta.values)
    for k, v in ds.attrs.items():
        assert back.attrs[k] == v
    assert back.time.attrs["units"] == "flow"
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_contract_violations_are_named(tmp_path):
    ds = _ds()
    with pytest.raises(DatasetError, match="lacks the variable 'p'"):
        validate_dataset(ds, require=("p",))
    bad = ds.copy()
    bad["time"].attrs["units"] = "seconds"
    with pytest.raises(DatasetError, match="units"):
        validate_dataset(bad)
    with pytest.raises(DatasetError, match="not in the data contract"):
        build_dataset({"zeta": np.ones((4,))}, time=np.arange(4.0), time_units="flow", source="theory", method="x", config="")
    corrupt = tmp_path / "c.nc"
    corrupt.write_bytes(b"CDF\x01 this is not a netCDF file")
    with pytest.raises(DatasetError, match="not a readable netCDF"):
        open_dataset(corrupt)
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(tmp_path / "missing.nc")


def test_spectral_quantities_on_commuting_and_non_commuting_pairs():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 5))
    F = torch.as_tensor(A @ A.T)
    s, U = torch.linalg.eigh(F)
    Wp = U @ torch.diag(torch.sqrt(s)) @ U.T  # a function of F: commutes, aligned
    q = spectral_quantities(F, Wp)
    assert torch.allclose(q["s"], s.flip(0)) and torch.allclose(q["p"], torch.sqrt(s).flip(0))
    assert torch.allclose(q["alignment"], torch.ones(5, dtype=torch.float64))
    assert float(q["commutator"]) < 1e-12 and float(q["asymmetry"]) < 1e-12
    B = torch.as_tensor(rng.standard_normal((5, 5)))
    q = spectral_quantities(F, B)
    assert float(q["commutator"]) > 0.05 and float(q["asymmetry"]) > 0.1
    assert (q["alignment"].abs() <= 1 + 1e-12).all()


def test_spectral_quantities_of_a_failed_run_are_nan_not_an_error():
    F = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    F[1, 0, 0] = float("nan")
    q = spectral_quantities(F, torch.eye(3, dtype=torch.float64).repeat(2, 1, 1))
    assert torch.isnan(q["s"][1]).all() and torch.allclose(q["s"][0], torch.ones(3, dtype=torch.float64))
    assert torch.isnan(q["p"][1]).all()


def test_unit_mapping_paper_defaults_and_round_trip():
    """theory.md §1.2: lr 0.03, wd 4e-4 (paper convention), gamma_a 0.996 -> eta = 0.0133, beta = 0.133."""
    f = to_flow(OptimizerUnits(lr=0.03, weight_decay=4e-4, ema_momentum=0.996, steps=1000, convention="paper"))
    assert f.eta == pytest.approx(0.01333, rel=1e-3) and f.beta == pytest.approx(0.1333, rel=1e-3)
    assert f.t == pytest.approx(30.0) and f.alpha_p == 1.0 and f.theorem1_exact
    g = to_flow(OptimizerUnits(lr=0.05, weight_decay=5e-4, predictor_lr=0.5, ema_momentum=0.99, steps=200))
    assert g.alpha_p == pytest.approx(10.0) and not g.theorem1_exact  # coupled decay: eta_p = alpha_p * wd
    back = to_flow(to_optimizer(FlowUnits(t=3.0, alpha_p=2.0, eta=0.01, eta_p=0.01, beta=0.4), lr=0.01))
    assert back.alpha_p == pytest.approx(2.0) and back.beta == pytest.approx(0.4) and back.theorem1_exact
    assert back.t == pytest.approx(3.0)
