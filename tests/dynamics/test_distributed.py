"""Sweeps in chunks of runs: a chunk's table and Dataset are rows of the whole sweep's, bit for bit, and
the dask.distributed sweep (a LocalCluster of two worker processes) writes what the in-process sweep gives."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import xarray as xr

from stopgrad.analysis import open_dataset
from stopgrad.dynamics import (ConfigError, DataSpec, InitialState, InitSpec, LinearModel, ModeInit, RunTable,
                               SampledSpec, Simulation, Solver, chunk_folder, draw_initial_matrices, plan_chunks,
                               require_distributed, sweep, sweep_distributed)
from stopgrad.dynamics.simulate import simulate_table


def matrix_sim(**kw) -> Simulation:
    model = LinearModel(n1=8, n2=4, method="byol", beta=0.5, data=DataSpec(sigma2=0.5))
    return Simulation(model=model, engine="matrix", t_end=40.0, n_save=6,
                      grid={"eta": [0.0, 0.02, 0.05], "seed": list(range(7))}, **kw)


def modes_sim(n2: int = 1) -> Simulation:
    """A per-mode (p0, eta) grid of 600 runs: the one-mode kernel (n2 = 1) or SIMD lanes (n2 > 1)."""
    model = LinearModel(n1=max(1, n2), n2=n2, method="byol", beta=0.5, eta=0.05, data=DataSpec(sigma2=0.5),
                        init=InitSpec(wa="zero"))
    return Simulation(model=model, engine="modes", t_end=100.0, n_save=3, modes=ModeInit(s0=0.1),
                      grid={"p0": np.linspace(-0.5, 1.0, 30).tolist(), "eta": np.linspace(0.0, 0.2, 20).tolist()},
                      solver=Solver(method="dopri5", rtol=1e-6, atol=1e-8))


def chunked(sim: Simulation, edges: list[int]) -> xr.Dataset:
    parts = [simulate_table(sim, RunTable.from_simulation(sim, rows=(lo, hi))) for lo, hi in zip(edges[:-1], edges[1:])]
    return xr.concat(parts, dim="run", data_vars="minimal", coords="minimal", compat="override",
                     combine_attrs="override")


def test_a_chunk_table_is_rows_of_the_whole_table():
    for sim in (matrix_sim(), modes_sim(), Simulation(model=LinearModel(n1=4, n2=2), runs={"eta": [0.0, 0.1, 0.2],
                                                                                          "seed": [5, 6, 7]})):
        whole = RunTable.from_simulation(sim)
        lo, hi = 1, sim.n_runs - 1
        part = RunTable.from_simulation(sim, rows=(lo, hi))
        assert part.offset == lo and part.n_sweep == sim.n_runs and len(part) == hi - lo
        assert part.swept == whole.swept and set(part.columns) == set(whole.columns)
        for key, col in whole.columns.items():
            assert part[key].dtype == col.dtype and np.array_equal(part[key], col[lo:hi]), key
    with pytest.raises(ValueError, match="rows"):
        RunTable.from_simulation(matrix_sim(), rows=(5, 5))


@pytest.mark.parametrize("n2", [1, 3])
def test_per_mode_chunks_equal_the_sweep_bitwise(n2, assert_bitwise):
    """Chunks of 1, 50 and 63 runs (below the kernels' batch thresholds) take the kernel of the whole
    sweep: a run's result does not depend on how the sweep is cut."""
    sim = modes_sim(n2)
    assert_bitwise(chunked(sim, [0, 1, 51, 114, 300, 600]), sweep(sim))


def test_matrix_chunks_with_a_per_run_initial_state_equal_the_sweep_bitwise(assert_bitwise):
    sim = matrix_sim()
    W = draw_initial_matrices(sim.model, seeds=np.arange(100, 100 + sim.n_runs))["W"]  # (R, n2, n1), one per run
    sim = matrix_sim(initial=InitialState(W=W))
    ds = sweep(sim)
    assert np.array_equal(ds["init_W"].values, W)
    assert_bitwise(chunked(sim, [0, 4, 5, 20, sim.n_runs]), ds)


def test_refusals_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "r.nc"
    sampled = Simulation(model=LinearModel(n1=4, n2=2), engine="sampled", t_end=1.0, grid={"seed": [0, 1]},
                         sampled=SampledSpec(lr=0.1))
    with pytest.raises(ConfigError, match="engine = 'sampled': is not chunked"):
        plan_chunks(sampled, out)
    with pytest.raises(ConfigError, match="a sweep needs at least one swept parameter"):
        plan_chunks(Simulation(model=LinearModel(n1=4, n2=2)), out)
    with pytest.raises(ConfigError, match="chunk_runs = 0: must lie in"):
        plan_chunks(matrix_sim(), out, chunk_runs=0)
    assert not chunk_folder(out).exists()
    # a manifest without any chunk (a sweep that never got to work) does not hold the folder
    chunk_folder(out).mkdir()
    (chunk_folder(out) / "manifest.json").write_text(json.dumps({"format": 1, "config_sha256": "0" * 64,
                                                                  "n_runs": 7, "chunk_runs": 3, "n_chunks": 3}))
    assert plan_chunks(matrix_sim(), out, chunk_runs=5).chunk_runs == 5
    chunk_folder(out).joinpath("manifest.json").unlink()
    chunk_folder(out).rmdir()
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'stopgrad\[distributed\]'"):
        require_distributed()
    with pytest.raises(ConfigError, match=r"pip install 'stopgrad\[distributed\]'"):
        sweep_distributed(matrix_sim(), out, scheduler="local")
    assert not chunk_folder(out).exists() and not out.exists()


def test_default_chunking_is_bounded_by_memory_and_spread():
    plan = plan_chunks(modes_sim(), "unused.nc")
    assert plan.n_chunks == 60 and plan.chunk_runs == 10  # at least 64 chunks: ceil(600 / 64) runs each
    assert [plan.bounds(i) for i in (0, 59)] == [(0, 10), (590, 600)]


def test_distributed_sweep_equals_the_in_process_sweep_bitwise(dask_client, tmp_path, assert_bitwise):
    for name, sim, chunk in (("matrix", matrix_sim(), 4), ("modes", modes_sim(), 110)):
        out = tmp_path / f"{name}.nc"
        rep = sweep_distributed(sim, out, scheduler=dask_client, chunk_runs=chunk)
        assert (rep.n_runs, rep.chunk_runs, rep.chunks_run, rep.chunks_skipped) == (
            sim.n_runs, chunk, -(-sim.n_runs // chunk), 0)
        assert not chunk_folder(out).exists()  # removed once the result is written
        want = sweep(sim)
        got = open_dataset(out)
        assert_bitwise(got, want)
        assert rep.verdicts == {v: int((want.verdict.values == v).sum()) for v in np.unique(want.verdict.values)}
        assert got.attrs["n_chunks"] == rep.n_chunks and got.attrs["backend"] == "numba"
        assert got.attrs["below_atol_runs"] == want.attrs["below_atol_runs"]
        assert got.attrs["config"] == want.attrs["config"]


def test_another_config_refuses_to_resume_in_the_chunk_folder(dask_client, tmp_path, assert_bitwise):
    out = tmp_path / "m.nc"
    sim = modes_sim()
    sweep_distributed(sim, out, scheduler=dask_client, chunk_runs=200, keep_chunks=True)
    folder = chunk_folder(out)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["n_chunks"] == 3 and len(list(folder.glob("chunk-*.nc"))) == 3
    assert plan_chunks(sim, out).done == (0, 1, 2)  # the same config: all done, nothing to run
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    other = Simulation(**{**{f: getattr(sim, f) for f in sim.__dataclass_fields__}, "t_end": 99.0})
    with pytest.raises(ConfigError, match="holds the chunks of another config"):
        sweep_distributed(other, out, scheduler=dask_client)
    with pytest.raises(ConfigError, match="differs from the 200 runs per chunk"):
        sweep_distributed(sim, out, scheduler=dask_client, chunk_runs=100)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # nothing touched
    rep = sweep_distributed(sim, out, scheduler=dask_client)  # resumes: every chunk is there, only the combine runs
    assert (rep.chunks_skipped, rep.chunks_run) == (3, 0)
    assert_bitwise(open_dataset(out), sweep(sim))
