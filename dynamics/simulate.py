"""Run a linear model (one run or a batched sweep) and return a data-contract Dataset.

A sweep is a grid of hyperparameters (each a coordinate along ``run``) integrated in one batch. The
specs are in :mod:`.specs`; the flow is built by :mod:`.build`, integrated by :mod:`.solvers` and
turned into a Dataset by :mod:`.results`.
"""

from __future__ import annotations

import xarray as xr

from ._checks import check
from .build import build_flow, initial_state
from .results import to_dataset
from .runs import RunTable
from .sampled import simulate_sampled
from .solvers import integrate_flow
from .specs import Simulation

__all__ = ["simulate", "sweep"]


def simulate(sim: Simulation, progress: bool = False) -> xr.Dataset:
    """Integrate ``sim`` and return the contract Dataset (dims run, time, mode).

    Per-run extras: ``status`` and ``t_fail`` (a blow-up, step-size underflow or step limit, with the
    time it happened; values after it are NaN), ``verdict`` and ``n_alive`` (collapse at t_end),
    ``nfev`` (right-hand-side evaluations). Failures also raise a RuntimeWarning naming the runs.
    """
    if sim.engine == "sampled":
        return simulate_sampled(sim, progress=progress)
    return simulate_table(sim, RunTable.from_simulation(sim), progress)


def simulate_table(sim: Simulation, table: RunTable, progress: bool = False) -> xr.Dataset:
    """:func:`simulate` for the runs of ``table``: the whole sweep, or a chunk of it
    (``RunTable.from_simulation(sim, rows=(lo, hi))``), whose Dataset holds runs lo .. hi - 1 with the
    values, run index and kernel they have in the whole sweep (not the sampled engine: its runs share
    one sample stream)."""
    init = initial_state(sim, table)
    flow = build_flow(sim, table, init, sim.solver.torch_device())
    res, backend = integrate_flow(flow, table, sim, sim.times(), progress)
    return to_dataset(sim, table, res, backend, source="theory", attrs={"reduced": int(getattr(flow, "reduced", 0))},
                      initial=init)


def sweep(sim: Simulation, progress: bool = False) -> xr.Dataset:
    """:func:`simulate` over ``sim.grid``; the same batched integration, named for the CLI verb."""
    check("grid", sim.grid, bool(sim.grid or sim.runs), "a sweep needs at least one swept parameter")
    return simulate(sim, progress=progress)

