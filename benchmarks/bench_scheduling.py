"""Benchmark: the numba backends' dynamic schedule against a static split, quiet and beside a busy process.

The numba backends split a batch into shares of runs (dynamics.solvers.scheduling). A static split
(each thread a fixed block, as ``prange`` makes) leaves the batch waiting for its slowest thread; with
one other busy process on a 2-core host that thread is the one sharing its core. The dynamic schedule
hands shares out as threads free up. Measured side by side in one run, on the same kernels:

A. the 64 x 32 BYOL matrix flow (numba_runs), a slice of bench_dynamics.py's sweep, DOP853 rtol 1e-7;
B. a per-mode (p0, eta) grid (numba_one_mode), dopri5 rtol 1e-6.

Each is timed with 1 thread, and with all threads under each schedule, quiet and with one busy
neighbour process (a pure-Python spin loop, not pinned; and pinned to the last core with taskset
where available). Each timing is the median of ``--repeats``, the settings interleaved in each repeat.

Our threads are not pinned by default, so the OS time-slices them fairly beside the neighbour and
neither schedule has a straggler: both pay about the fair share, (threads + 1) / threads. Where
threads are bound one per core (as OMP_PROC_BIND or a bound runtime does), the thread on the
neighbour's core runs at half speed: a static split then waits for it (about 2x on 2 cores), while
the dynamic schedule lets the free thread take more shares (about 2 threads / 1.5 = 1.33x). The
"bound" rows measure that, binding each pool thread of ``run_shares`` to its own core (Linux only).

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
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np

from stopgrad.dynamics import DataSpec, InitSpec, LinearModel, ModeInit, Simulation, Solver, simulate
from stopgrad.dynamics.solvers import scheduling
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


class BoundExecutor(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose k-th thread binds itself to core k (benchmark only: emulates a
    runtime that binds threads, e.g. OMP_PROC_BIND=close)."""

    def __init__(self, max_workers=None, thread_name_prefix="", **kwargs):
        cores, lock = iter(sorted(os.sched_getaffinity(0))), threading.Lock()

        def bind() -> None:
            with lock:
                core = next(cores)
            os.sched_setaffinity(0, {core})  # pid 0: the calling thread only

        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix, initializer=bind)


@contextmanager
def bound_threads(bound: bool) -> Iterator[None]:
    """Within the block, run_shares's pool threads are bound one per core (when ``bound``)."""
    old = scheduling.ThreadPoolExecutor
    scheduling.ThreadPoolExecutor = BoundExecutor if bound else old
    try:
        yield
    finally:
        scheduling.ThreadPoolExecutor = old


def timed_once(sim: Simulation, threads: int, schedule: str, bound: bool = False) -> tuple[float, np.ndarray]:
    """Kernel seconds of one run (ds.attrs['wall_seconds']) and s for a bitwise check."""
    numba.set_num_threads(threads)
    with using_schedule(schedule), bound_threads(bound):
        ds = simulate(sim)
    return float(ds.attrs["wall_seconds"]), ds.s.values


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
    settings = [("1 thread, quiet", 1, "dynamic", None, False)]
    for schedule in ("static", "dynamic"):
        settings.append((f"{threads} threads {schedule}, quiet", threads, schedule, None, False))
        settings.append((f"{threads} threads {schedule}, busy neighbour", threads, schedule, False, False))
        if pin_available:
            settings.append((f"{threads} threads {schedule}, busy neighbour pinned", threads, schedule, True, False))
    if pin_available and hasattr(os, "sched_setaffinity"):
        for schedule in ("static", "dynamic"):
            settings.append((f"{threads} threads {schedule} bound, quiet", threads, schedule, None, True))
            settings.append((f"{threads} threads {schedule} bound, busy neighbour pinned", threads, schedule, True, True))
    walls = {label: [] for label, *_ in settings}
    equal = dict.fromkeys(walls, True)
    for rep in range(repeats):  # settings interleaved, so that the host's drift spreads over all of them
        for label, n, schedule, pinned, bound in settings:
            proc = neighbour(pinned) if pinned is not None else None
            try:
                wall, s = timed_once(sim, n, schedule, bound)
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
            if ref is None:
                ref = s
            walls[label].append(wall)
            equal[label] &= bool(np.array_equal(s, ref, equal_nan=True))
        print(f"  {name}: repeat {rep + 1}/{repeats} done, load {os.getloadavg()[0]:.2f}", flush=True)
    for label in walls:
        rows[label] = {"seconds_median": statistics.median(walls[label]), "seconds": walls[label],
                       "bitwise_equal_to_1_thread": equal[label]}
    runs = int(np.prod([len(v) for v in sim.grid.values()]))
    for label, row in rows.items():
        row["ms_per_run"] = 1e3 * row["seconds_median"] / runs
        quiet = rows[label.split(",")[0] + ", quiet"]["seconds_median"]  # the same schedule and binding, quiet
        row["relative_to_quiet"] = row["seconds_median"] / quiet
    return {"runs": runs, "threads": threads, "fair_share": (threads + 1) / threads,
            "bound_expected": {"static": 2.0, "dynamic": threads / (threads - 0.5)} if threads > 1 else None,
            "rows": rows}


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
            print(f"{key:28s} {label:44s} {row['seconds_median']:7.2f}s {row['relative_to_quiet']:8.2f}x "
                  f"{str(row['bitwise_equal_to_1_thread']):>8s}")
    expected = result["matrix_sweep"]
    print("vs quiet: against the same schedule and binding with no neighbour. Expected from CPU shares alone: "
          f"{expected['fair_share']:.2f}x unbound (fair share)" + (
              f"; bound, static {expected['bound_expected']['static']:.2f}x and dynamic "
              f"{expected['bound_expected']['dynamic']:.2f}x" if expected["bound_expected"] else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
