"""Matched runs (`stopgrad experiment`) and measured phase diagrams (`stopgrad phase`) on real CIFAR-10."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stopgrad.analysis import open_dataset
from stopgrad.cli import main
from stopgrad.experiment import load_experiment, run_experiment
from stopgrad.phase import eta_critical_modes, phase_verdicts

RUNG1 = """
[experiment]
rung = 1
forward_from = 0.5

[linear]
method = "byol"
n1 = 12
n2 = 4
lr = 0.02
weight_decay = 0.05
ema_momentum = 0.95
batch_size = 64
steps = 40
probe_every = 10
train_subset = 512
moment_images = 256
moment_views = 4

[linear.augment]
jitter_p = 0.0
grayscale_p = 0.0
"""

RUNG2 = """
[experiment]
rung = 2
forward_from = 0.5

[method]
name = "byol"
momentum = 0.95
momentum_schedule = "constant"

[encoder]
arch = "convnet"
width = 4

[projector]
layers = 2
hidden_dim = 32
out_dim = 8
last_bn = false
last_bias = true

[predictor]
kind = "linear"
init = "default"

[data]
name = "synthetic"
synthetic_size = 256

[optim]
lr = 0.05
weight_decay = 5e-4
schedule = "constant"

[train]
epochs = 1
batch_size = 32
max_steps = 8
checkpoint_every = 0
progress = false

[probe]
every = 2
cross_view = true

[eval]
knn_every = 0
"""


@pytest.fixture(scope="module")
def rung1(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("rung1")
    cfg = folder / "rung1.toml"
    cfg.write_text(RUNG1)
    summary = run_experiment(cfg, folder / "out", data_root=data_root, progress=False)
    return cfg, folder / "out", summary


def test_rung1_writes_every_stage_and_the_theory_starts_from_the_measured_state(rung1):
    """Theory from initialisation starts at the measured initial weights, and forward from the measured
    weights at k0: their s and p at their first time equal the measured ones at step 0 and at k0 (both are
    eigen-quantities of the same float64 matrices: agreement to round-off, 1e-9 relative)."""
    _, out, summary = rung1
    for name in ("measured.nc", "theory_init.nc", "theory_forward.nc", "compare_init.nc", "compare_forward.nc",
                 "state.npz", "summary.json", "compare_init.txt", "figures/trajectories-init.png"):
        assert (out / name).is_file(), name
    measured = open_dataset(out / "measured.nc")
    k0 = int(measured.attrs["forward_step"])
    assert k0 == 20
    for name, step in (("theory_init.nc", 0), ("theory_forward.nc", k0)):
        theory = open_dataset(out / name)
        assert int(theory.attrs["start_step"]) == step
        assert float(theory["time"][0]) == pytest.approx(0.02 * step, abs=1e-12)
        m = measured.sel(time=step)
        np.testing.assert_allclose(theory["s"].isel(time=0).values, m["s"].values, rtol=1e-9)
        np.testing.assert_allclose(theory["p"].isel(time=0).values, m["p"].values, rtol=1e-9, atol=1e-12)
    assert set(summary["scores"]) == {"init", "forward"}
    assert np.isfinite(summary["scores"]["init"]["s_rel_error_final"])


def test_rung1_stages_are_cached_and_an_override_reruns_them(rung1, data_root):
    cfg, out, _ = rung1
    before = {f: (out / f).stat().st_mtime_ns for f in ("measured.nc", "theory_init.nc", "theory_forward.nc")}
    summary = run_experiment(cfg, out, data_root=data_root, progress=False)
    assert {f: (out / f).stat().st_mtime_ns for f in before} == before
    assert summary["timings_seconds"]["measured"] < 5  # read from the cache, not trained
    exp = load_experiment(cfg, ["linear.steps=20"])
    assert exp.run.steps == 20 and exp.key != load_experiment(cfg).key


def test_rung2_forward_theory_starts_from_the_measured_modes(tmp_path, data_root):
    """The per-mode theory of a network run starts from the measured (s_cross, p, tau) of the modes with a
    positive cross-view eigenvalue, with lambda_s / lambda_d = s_hat / s_cross (stored as sigma2_modes)."""
    cfg = tmp_path / "rung2.toml"
    cfg.write_text(RUNG2)
    run_experiment(cfg, tmp_path / "out", data_root=data_root, progress=False)
    measured = open_dataset(tmp_path / "out" / "measured.nc")
    theory = open_dataset(tmp_path / "out" / "theory_forward.nc")
    k0 = int(theory.attrs["start_step"])
    m = measured.sel(time=k0, mode=theory["mode"].values)
    np.testing.assert_allclose(theory["s"].isel(time=0).values, m["s_cross"].values, rtol=1e-6)
    np.testing.assert_allclose(theory["p"].isel(time=0).values, m["p"].values, rtol=1e-6, atol=1e-9)
    sigma2 = np.array(json.loads(theory.attrs["sigma2_modes"]))
    np.testing.assert_allclose(sigma2, np.maximum(m["s"].values / m["s_cross"].values - 1, 0), rtol=1e-5)


def test_experiment_verb_refuses_a_file_without_experiment_table(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[linear]\nn1 = 4\n")
    assert main(["experiment", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stopgrad: error: experiment") and len(err.splitlines()) == 1


def test_eta_critical_modes_on_commuting_moments():
    """With diagonal X = diag(l), X' = diag(n) the per-mode thresholds are l^2 / (4 (l + n)) (§3.7, tau = 1)."""
    lam = np.array([3.0, 1.0, 0.5, 0.1])
    noise = np.array([1.0, 2.0, 0.5, 0.3])
    got = eta_critical_modes(np.diag(lam), np.diag(noise))
    np.testing.assert_allclose(got, np.sort(lam**2 / (4 * (lam + noise)))[::-1], rtol=1e-14)


def test_phase_verdicts_count_modes_above_the_tolerance():
    s = np.array([[[1.0, 0.5, 0.2], [0.9, 2e-4, 0.0]], [[2.0, 1.0, 0.1], [1e-3, 1e-4, np.nan]]])
    np.testing.assert_array_equal(phase_verdicts(s, 1e-3), [1, 0])


@pytest.mark.slow
def test_phase_grid_rung1_end_to_end(tmp_path, data_root):
    cfg = tmp_path / "phase.toml"
    cfg.write_text(RUNG1 + '\n[phase]\nx = "weight_decay"\ny = "ema_momentum"\nweight_decay = [0.01, 3.0]\n'
                   'ema_momentum = [0.9, 0.99]\n')
    assert main(["phase", str(cfg), "--out", str(tmp_path / "p"), "--data-root", str(data_root), "--quiet"]) == 0
    ds = open_dataset_any(tmp_path / "p" / "phase.nc")
    assert ds.sizes["run"] == 4
    agree = float(np.mean(ds["n_alive_measured"].values == ds["n_alive_predicted"].values))
    assert ds.attrs["agreement_n_alive"] == pytest.approx(agree)
    assert (tmp_path / "p" / "phase.png").is_file()


def open_dataset_any(path):
    import xarray as xr

    with xr.open_dataset(path) as ds:
        return ds.load()
