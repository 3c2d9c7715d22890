"""Benchmark: the numba backends' dynamic schedule against a static split, quiet and beside a busy process.

The numba backends split a batch into shares of runs (dynamics.solvers.scheduling). A static split
(each thread a fixed block, as ``prange`` makes) leaves the batch waiting for its slowest thread; with
one other busy process on a 2-core host that thread is the one sharing its core. The dynamic schedule
hands shares out as threads free up. Measured side by side in one run, on the same kernels:

A. the 64 x 32 BYOL matrix flow (numba_runs), a slice of bench_dynamics.py's sweep, DOP853 rtol 1e-7;
B. a per-mode (p0, eta) grid (numba_one_mode), dopri5 rtol 1e-6.

Each is timed with 1 thread, and with all threads under each schedule, quiet and with one busy
neighbour process (a pure-Python spin loop, not pinned; and pinned to the last core with taskset
where available). Each timing is the median of ``--repeats``.

    python benchmarks/bench_scheduling.py [--configs 128] [--grid-side 400] [--repeats 3]

Prints a table and writes benchmarks/results/scheduling-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np

from stopgrad.dynamics import DataSpec, InitSpec, LinearModel, ModeInit, Simulation, Solver, simulate
from stopgrad.dynamics.solvers.scheduling import using_schedule

RESULTS = Path(__file__).resolve().parent / "results"
SPIN = "while True:\n    pass\n"


def matrix_sweep(n_configs: int) -> Simulation:
    seeds = max(1, n_configs // 32)
    grid = {"eta": [0.0, 0.01, 0.02, 0.04], "beta": [0.1, 0.4, 0.7, 1.0], "alpha_p": [0.5, 2.0],
            "seed": list(range(seeds))}
    model = LinearModel(n1=64, n2=32, method="byol", beta=0.5, data=DataSpec(sigma2=0.5), init=InitSpec(wa="zero"))
    return Simulation(model=model, t_end=200.0, n_save=11, grid=grid,
                      solver=Solver(method="dop853", rtol=1e-7, atol=1e-9))


def mode_grid(side: int) -> Simulation:
    model = LinearModel(n1=1, n2=1, method="byol", beta=0.5, eta=0.05, data=DataSpec(sigma2=0.5),
                        init=InitSpec(wa="zero"))
    grid = {"p0": np.linspace(-0.5, 1.0, side).tolist(), "eta": np.linspace(0.0, 0.2, side).tolist()}
    return Simulation(model=model, engine="modes", t_end=100.0, n_save=3, grid=grid, modes=ModeInit(s0=0.1),
                      solver=Solver(method="dopri5", rtol=1e-6, atol=1e-8))


def timed(sim: Simulation, threads: int, schedule: str, repeats: int) -> tuple[float, list[float], np.ndarray]:
    """Median kernel seconds over repeats (ds.attrs['wall_seconds']), all of them, and s for a bitwise check."""
    numba.set_num_threads(threads)
    walls, s = [], None
    with using_schedule(schedule):
        for _ in range(repeats):
            ds = simulate(sim)
            walls.append(float(ds.attrs["wall_seconds"]))
            s = ds.s.values
    return statistics.median(walls), walls, s


def neighbour(pinned: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-c", SPIN]
    if pinned:
        cmd = ["taskset", "-c", str(os.cpu_count() - 1)] + cmd
    proc = subprocess.Popen(cmd)
    time.sleep(0.5)  # let it start spinning
    return proc


def bench(name: str, sim: Simulation, repeats: int, pin_available: bool) -> dict:
    threads = numba.config.NUMBA_NUM_THREADS
    simulate(sim.__class__(**{**sim.__dict__, "grid": {k: v[:2] for k, v in sim.grid.items()}}))  # compile
    rows, ref = {}, None
    settings = [("1 thread, quiet", 1, "dynamic", None)]
    for schedule in ("static", "dynamic"):
        settings.append((f"{threads} threads {schedule}, quiet", threads, schedule, None))
        settings.append((f"{threads} threads {schedule}, busy neighbour", threads, schedule, False))
        if pin_available:
            settings.append((f"{threads} threads {schedule}, busy neighbour pinned", threads, schedule, True))
    for label, n, schedule, pinned in settings:
        proc = neighbour(pinned) if pinned is not None else None
        try:
            med, walls, s = timed(sim, n, schedule, repeats)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
        if ref is None:
            ref = s
        rows[label] = {"seconds_median": med, "seconds": walls, "bitwise_equal_to_1_thread": bool(
            np.array_equal(s, ref, equal_nan=True))}
        print(f"  {name:28s} {label:44s} {med:8.2f} s", flush=True)
    runs = int(np.prod([len(v) for v in sim.grid.values()]))
    quiet = rows[f"{threads} threads dynamic, quiet"]["seconds_median"]
    for label, row in rows.items():
        row["ms_per_run"] = 1e3 * row["seconds_median"] / runs
        row["relative_to_dynamic_quiet"] = row["seconds_median"] / quiet
    return {"runs": runs, "threads": threads, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=128)
    ap.add_argument("--grid-side", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "numba_threads": numba.config.NUMBA_NUM_THREADS, "numba": numba.__version__,
                          "loadavg_before": os.getloadavg()}}
    result["matrix_sweep"] = bench("64x32 sweep (numba_runs)", matrix_sweep(args.configs), args.repeats, pin)
    result["mode_grid"] = bench("per-mode grid (one_mode)", mode_grid(args.grid_side), args.repeats, pin)
    result["machine"]["loadavg_after"] = os.getloadavg()
    out = Path(args.out or RESULTS / "scheduling-cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{'workload':28s} {'setting':44s} {'time':>8s} {'vs quiet':>9s} {'bitwise':>8s}")
    for key in ("matrix_sweep", "mode_grid"):
        for label, row in result[key]["rows"].items():
            print(f"{key:28s} {label:44s} {row['seconds_median']:7.2f}s {row['relative_to_dynamic_quiet']:8.2f}x "
                  f"{str(row['bitwise_equal_to_1_thread']):>8s}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
