"""Backend choice and the numba driver: a flow object and its RunTable in, an IntegrationResult out.

:func:`integrate_flow` integrates a built-in flow with a numba backend where one applies (the CPU,
an adaptive method, a flow with a ``numba_system``), else with the torch loop
(:func:`~stopgrad.dynamics.solvers.torch_rk.integrate`). :func:`solve_batch` picks the numba backend
for the shape of the problem: numba_one_mode (one mode per run, dopri5), numba_lanes (many small
per-mode systems) or numba_runs (one run per thread task).
"""

from __future__ import annotations

import time as _time

import numpy as np
import torch

from .._checks import ConfigError
from .numba_lanes import LANES, mode_lanes_solve
from .numba_one_mode import one_mode_applies, solve_one_mode
from .numba_rhs import SYSTEMS
from .numba_runs import solve_runs_rk4_share, solve_runs_share
from .scheduling import n_shares, run_shares
from .tableaux import tableau_arrays
from .torch_rk import IntegrationResult, integrate

__all__ = ["integrate_flow", "solve_batch"]

#: saved states held at once by the numba driver (float64 entries): ~256 MB
SAVED_STATE_BUDGET = 2**25


def solve_batch(system: str, Y0, PRM, cfg, t_save, tableau, rtol, atol, max_steps, blowup, work_size,
                schedule: str | None = None, dt: float | None = None, n_sweep: int | None = None):
    """Integrate every row of Y0 (R, n) with kernel rows PRM (R, P); returns states (R, S, n), stats
    (R, 4) and t_fail (R,). ``tableau`` (tableaux.tableau_arrays) for an adaptive method, or None for
    fixed-step rk4 with step ``dt`` (then rtol and atol are unused).

    stats columns: status (0 ok, 1 blow-up, 2 step-size underflow, 3 max steps), nfev, steps, rejected.
    Shares of runs go to numba's thread count of threads (``NUMBA_NUM_THREADS``,
    ``numba.set_num_threads``) with ``schedule`` (default dynamic; see
    :func:`.scheduling.run_shares`); neither changes a result.
    n_sweep: the run count of the whole sweep these rows belong to (default R). It picks the kernel, so
    that every block and every chunk of one sweep takes the same kernel, whatever its own size: the
    kernels agree to the tolerance, not to the bit, and a run's result must not depend on how the
    sweep was cut.
    """
    Y0 = np.ascontiguousarray(Y0, dtype=np.float64)
    PRM = np.ascontiguousarray(PRM, dtype=np.float64)
    R, n = Y0.shape
    S = len(t_save)
    out = np.empty((R, S, n))
    stats = np.zeros((R, 4), dtype=np.int64)
    tfail = np.full(R, np.nan)
    if tableau is None:  # rk4: one run at a time per share, as numba_runs integrates the adaptive pairs
        sys_id, work_size, c, ts = SYSTEMS[system], int(work_size), np.asarray(cfg, dtype=np.int64), np.asarray(
            t_save, dtype=np.float64)

        def share(first: int, stride: int) -> None:
            solve_runs_rk4_share(sys_id, Y0, PRM, c, ts, float(dt), int(max_steps), float(blowup), work_size, out,
                                 stats, tfail, first, stride)

        run_shares(share, n_shares(R), schedule=schedule)
        return out, stats, tfail
    tab = tableau
    E = tab["E"] if tab["E"] is not None else np.zeros(tab["s"] + 1)
    E3 = tab["E3"] if tab["E3"] is not None else np.zeros(tab["s"] + 1)
    E5 = tab["E5"] if tab["E5"] is not None else np.zeros(tab["s"] + 1)
    args = (np.asarray(cfg, dtype=np.int64), np.asarray(t_save, dtype=np.float64), tab["A"], tab["B"], tab["C"], E, E3,
            E5, tab["s"], tab["dop853"], tab["exponent"], tab["order"], float(rtol), float(atol), int(max_steps),
            float(blowup))
    n_choice = R if n_sweep is None else int(n_sweep)
    if one_mode_applies(system, cfg, tab, n_choice):
        solve_one_mode(Y0, PRM, cfg, t_save, tab, rtol, atol, max_steps, blowup, out, stats, tfail, schedule)
    elif system == "modes" and n_choice >= 4 * LANES:  # many tiny systems: SIMD lanes, shares of lane packs

        def share(first: int, stride: int) -> None:
            mode_lanes_solve(Y0, PRM, *args, out, stats, tfail, first, stride)

        run_shares(share, n_shares(R // LANES), schedule=schedule)
    else:
        sys_id, work_size = SYSTEMS[system], int(work_size)

        def share(first: int, stride: int) -> None:
            solve_runs_share(sys_id, Y0, PRM, *args, work_size, out, stats, tfail, first, stride)

        run_shares(share, n_shares(R), schedule=schedule)
    return out, stats, tfail


def integrate_flow(flow, table, sim, t_save: np.ndarray, progress) -> tuple[IntegrationResult, str]:
    """Integrate a flow object (``y0``, ``rhs``, ``observe``, ``params``, optional ``numba_system``)
    for the runs of ``table`` with ``sim``'s solver and backend; returns the result and the backend."""
    solver = sim.solver
    numba_sys = flow.numba_system() if hasattr(flow, "numba_system") else None
    # rk4 runs on numba when asked for; "auto" keeps it on the torch loop, whose results it has always had
    use_numba = numba_sys is not None and sim.backend != "torch" and (solver.method != "rk4" or sim.backend == "numba")
    if sim.backend == "numba" and not use_numba:
        raise ConfigError("backend", "numba", "does not apply here (needs the CPU and a built-in flow: "
                          "isotropic matrix flow or per-mode system, no user rule)")
    if not use_numba:
        res = integrate(flow.rhs, flow.y0, t_save, solver, params=flow.params, observe=flow.observe,
                        progress="integrating" if progress else False)
        return res, "torch"
    return _integrate_numba(flow, numba_sys, table, sim, t_save, progress), "numba"


def _integrate_numba(flow, numba_sys, table, sim, t_save: np.ndarray, progress) -> IntegrationResult:
    from tqdm.auto import tqdm

    name, cfg, work = numba_sys
    prm = table.kernel(name, getattr(flow.rule, "directset_params", None) if flow.rule is not None else None)
    solver = sim.solver
    Y0 = flow.y0.numpy()
    R, n = Y0.shape
    S = len(t_save)
    tab = None if solver.method == "rk4" else tableau_arrays(solver.method)
    block = int(max(1, min(R, SAVED_STATE_BUDGET // max(1, S * n))))
    values: dict[str, torch.Tensor] = {}
    stats = np.zeros((R, 4), dtype=np.int64)
    t_fail = np.full(R, np.nan)
    start = _time.perf_counter()
    t_t = torch.as_tensor(t_save)
    with tqdm(total=R, desc="integrating", unit="run", disable=not progress, leave=False) as bar:
        for lo in range(0, R, block):
            hi = min(R, lo + block)
            out, st, tf = solve_batch(name, Y0[lo:hi], prm[lo:hi], cfg, t_save, tab, solver.rtol, solver.atol,
                                      solver.max_steps, solver.blowup, work, dt=solver.dt, n_sweep=table.n_sweep)
            stats[lo:hi], t_fail[lo:hi] = st, tf
            if S <= hi - lo:  # observe one save time at a time: no per-row copies of the parameters
                sub = {k: v[lo:hi] for k, v in flow.params.items()}
                for i in range(S):
                    obs = flow.observe(t_t[i].expand(hi - lo), torch.from_numpy(out[:, i]), sub)
                    for key, val in obs.items():
                        _store(values, key, val, (R, S, *val.shape[1:]), (slice(lo, hi), i))
            else:
                sub = {k: v[lo:hi].repeat_interleave(S, dim=0) for k, v in flow.params.items()}
                obs = flow.observe(t_t.repeat(hi - lo), torch.from_numpy(out.reshape(-1, n)), sub)
                for key, val in obs.items():
                    val = val.reshape(hi - lo, S, *val.shape[1:])
                    _store(values, key, val, (R, *val.shape[1:]), slice(lo, hi))
            bar.update(hi - lo)
    return IntegrationResult(
        t=t_save, values=values, status=stats[:, 0].astype(np.int8), t_fail=t_fail, nfev=stats[:, 1],
        steps=stats[:, 2], rejected=stats[:, 3], wall=_time.perf_counter() - start,
        info={"method": solver.method, "block": block, "device": "cpu"},
    )


def _store(values: dict, key: str, val: torch.Tensor, shape: tuple, where) -> None:
    """values[key][where] = val, allocating values[key] of ``shape`` on first use."""
    if key not in values:
        values[key] = torch.empty(shape, dtype=val.dtype)
    values[key][where] = val
