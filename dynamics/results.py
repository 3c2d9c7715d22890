"""From an integration to the contract Dataset: collapse verdicts, the config string, the stored initial state."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import xarray as xr

from stopgrad.analysis import build_dataset

from .initial import STORED_DIMS, InitialState, stored_name
from .runs import RunTable
from .solvers import STATUS_NAMES, IntegrationResult
from .specs import Simulation

__all__ = ["collapse_verdicts", "config_json", "saved_bytes_per_run", "to_dataset"]


def collapse_verdicts(s: np.ndarray, status: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-run verdict from s (R, S, k) at the last save: "collapsed" (no mode above tol * max s(0)),
    "partial", "non-collapsed", or the failure ("blow-up", ...). Returns (verdicts, n_alive)."""
    ref = np.nanmax(np.abs(s[:, 0, :]), axis=-1)
    ref = np.where(ref > 0, ref, 1.0)
    alive = s[:, -1, :] > tol * ref[:, None]
    n_alive = alive.sum(-1)
    k = s.shape[-1]
    names = np.concatenate([["collapsed", "partial", "non-collapsed"], STATUS_NAMES[1:]])
    code = np.where(n_alive == 0, 0, np.where(n_alive == k, 2, 1))
    failed = status != 0
    code[failed] = 2 + status[failed]  # failure c -> STATUS_NAMES[c]
    n_alive[failed] = -1
    return names[code], n_alive



def saved_bytes_per_run(sim: Simulation) -> int:
    """Bytes of one run's saved trajectories in the result (float64): s, p, alignment, tau per mode and
    about 8 scalars per save time. The part of a result that grows with the runs and the saves."""
    return len(sim.times()) * (4 * sim.model.n2 + 8) * 8


def config_json(sim: Simulation) -> str:
    """The simulation as canonical JSON (sorted keys), stored in every result's ``config`` attribute;
    explicit initial states appear as shapes and digests (their values are the ``init_*`` variables)."""
    def enc(o):
        if isinstance(o, InitialState):  # shapes and digests; the values are stored as init_* variables
            return o.describe()
        if dataclasses.is_dataclass(o):
            return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
        if isinstance(o, np.ndarray):
            return o.tolist()
        return repr(o)

    return json.dumps(sim, default=enc, sort_keys=True)



def to_dataset(sim: Simulation, table: RunTable, res: IntegrationResult, backend: str, source: str,
                extra: dict | None = None, attrs: dict | None = None, initial: dict | None = None) -> xr.Dataset:
    """The contract Dataset of one integration.

    Args:
        sim: the simulation that ran.
        table: its RunTable (the run coordinates: each swept value along ``run``).
        res: the integration's recorded values, each (R, S, ...), times, nfev and failures.
        backend: "numba" or "torch", stored in ``attrs["backend"]``.
        source: the ``source`` attribute ("theory" or "sampled").
        extra: more per-run variables to store, {name: (R, ...) array}.
        attrs: more attributes.
        initial: the initial state {name: (R, ...) array}, stored as ``init_*`` variables for replay.

    Returns:
        Dataset with dims run, time (units "flow"), mode; s, p, alignment, tau (run, time, mode), the
        scalar diagnostics (run, time), collapse verdicts and the config string.
    """
    vals = {k: v.numpy() for k, v in res.values.items()}
    contract = {k: v for k, v in vals.items() if k in ("s", "p", "alignment", "tau", "commutator", "balance",
                                                      "asymmetry", "loss", "weight_norm")}
    fail_non_finite(res, vals)
    verdict, n_alive = collapse_verdicts(vals["s"], res.status, sim.collapse_tol)
    below, t_below = below_atol(sim, res, vals["s"])
    extra_vars = {
        "status": (("run",), STATUS_NAMES[res.status]),
        "t_fail": (("run",), res.t_fail),
        "verdict": (("run",), verdict),
        "n_alive": (("run",), n_alive.astype(np.int64)),
        "nfev": (("run",), res.nfev.astype(np.int64)),
        "below_atol": (("run",), below.astype(np.int8)),
        "t_below_atol": (("run",), t_below),
    }
    m = sim.model
    theorem1 = m.stop_grad & (table["eta_p"] == table["eta"])  # Theorem 1 needs stop-gradient and eta_p = eta
    if "balance" in contract and not theorem1.all():
        contract["balance"] = np.where(theorem1[:, None], contract["balance"], np.nan)
    for k, v in vals.items():
        if k not in contract:
            extra_vars[k] = (("run", "time") + tuple(f"dim_{k}_{i}" for i in range(v.ndim - 2)), v)
    extra_vars.update(extra or {})
    if sim.store_initial:
        for name, arr in (initial or {}).items():
            extra_vars[stored_name(name)] = (("run",) + STORED_DIMS[name], arr)
    method = m.method if m.stop_grad else f"{m.method}-no-stopgrad"
    ds = build_dataset(
        contract, time=res.t, time_units="flow", source=source, method=method, config=config_json(sim),
        run_coords=table.coords(), extra_vars=extra_vars,
        attrs={
            "engine": sim.engine, "backend": backend, "predictor": m.predictor, "solver": sim.solver.method,
            "rtol": sim.solver.rtol, "atol": sim.solver.atol, "wall_seconds": res.wall, **(attrs or {}),
        },
    )
    if table.offset:  # a chunk of a sweep: its runs keep their index in the whole sweep
        ds = ds.assign_coords(run=np.arange(table.offset, table.offset + table.n_runs))
    if "balance" in ds and not theorem1.all():
        ds["balance"].attrs["note"] = ("NaN for runs without stop-gradient or with eta_p != eta: Theorem 1's "
                                       "invariant does not hold there, so its residual measures nothing")
    ds["below_atol"].attrs["long_name"] = (f"1 where a mode's amplitude sqrt(s_j) fell below the solver's atol "
                                           f"({sim.solver.atol:g}) at a save time: it is no longer resolved")
    ds["t_below_atol"].attrs["long_name"] = "first save time with a mode below atol (NaN: never)"
    ds.attrs["below_atol_runs"] = int(below.sum())  # recorded, not warned: a collapsing mode gets there by design
    fails = res.failures()
    if fails:
        head = "; ".join(fails[:5]) + (f"; ... ({len(fails)} runs in all)" if len(fails) > 5 else "")
        warnings.warn(f"{len(fails)} of {len(res.status)} runs failed: {head}", RuntimeWarning, stacklevel=3)
    return ds


def fail_non_finite(res: IntegrationResult, vals: dict) -> None:
    """A run reported "ok" whose observed s, loss or weight norm is not finite is a blow-up (status 1,
    t_fail the first such save time): a non-finite output is never a silent success. Edits ``res``."""
    ok = res.status == 0
    if not ok.any():
        return
    R, S = vals["s"].shape[:2]
    bad = np.zeros((R, S), dtype=bool)
    for key in ("s", "loss", "weight_norm"):  # not p: it is NaN by design along a collapsed mode
        if key in vals:
            bad |= ~np.isfinite(vals[key].reshape(R, S, -1)).all(-1)
    newly = ok & bad.any(1)
    if newly.any():
        res.status = res.status.copy()
        res.t_fail = res.t_fail.copy()
        res.status[newly] = 1
        res.t_fail[newly] = res.t[bad.argmax(1)[newly]]


def below_atol(sim: Simulation, res: IntegrationResult, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per run: whether some mode's amplitude sqrt(s_j) (the size of the state along it) fell below the
    adaptive solver's absolute tolerance at a save time t > 0, and the first such time (NaN: never).
    Below atol the error control no longer resolves the mode, so its later decay is not reliable."""
    R = s.shape[0]
    if sim.engine == "sampled" or sim.solver.method == "rk4" or sim.solver.atol <= 0 or s.shape[1] < 2:
        return np.zeros(R, dtype=bool), np.full(R, np.nan)
    with np.errstate(invalid="ignore"):
        low = (np.sqrt(np.clip(s[:, 1:], 0, None)) < sim.solver.atol).any(-1)  # (R, S-1); NaN compares False
    hit = low.any(1)
    t_below = np.where(hit, res.t[1:][low.argmax(1)], np.nan)
    return hit, t_below
