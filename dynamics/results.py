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

__all__ = ["collapse_verdicts", "config_json", "to_dataset"]


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



def config_json(sim: Simulation) -> str:
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
    vals = {k: v.numpy() for k, v in res.values.items()}
    contract = {k: v for k, v in vals.items() if k in ("s", "p", "alignment", "tau", "commutator", "balance",
                                                      "asymmetry", "loss", "weight_norm")}
    verdict, n_alive = collapse_verdicts(vals["s"], res.status, sim.collapse_tol)
    extra_vars = {
        "status": (("run",), STATUS_NAMES[res.status]),
        "t_fail": (("run",), res.t_fail),
        "verdict": (("run",), verdict),
        "n_alive": (("run",), n_alive.astype(np.int64)),
        "nfev": (("run",), res.nfev.astype(np.int64)),
    }
    for k, v in vals.items():
        if k not in contract:
            extra_vars[k] = (("run", "time") + tuple(f"dim_{k}_{i}" for i in range(v.ndim - 2)), v)
    extra_vars.update(extra or {})
    if sim.store_initial:
        for name, arr in (initial or {}).items():
            extra_vars[stored_name(name)] = (("run",) + STORED_DIMS[name], arr)
    m = sim.model
    method = m.method if m.stop_grad else f"{m.method}-no-stopgrad"
    ds = build_dataset(
        contract, time=res.t, time_units="flow", source=source, method=method, config=config_json(sim),
        run_coords=table.coords(), extra_vars=extra_vars,
        attrs={
            "engine": sim.engine, "backend": backend, "predictor": m.predictor, "solver": sim.solver.method,
            "rtol": sim.solver.rtol, "atol": sim.solver.atol, "wall_seconds": res.wall, **(attrs or {}),
        },
    )
    fails = res.failures()
    if fails:
        head = "; ".join(fails[:5]) + (f"; ... ({len(fails)} runs in all)" if len(fails) > 5 else "")
        warnings.warn(f"{len(fails)} of {len(res.status)} runs failed: {head}", RuntimeWarning, stacklevel=3)
    return ds


