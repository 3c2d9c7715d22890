"""From a Simulation to a flow: the per-run table's per-mode columns, the initial state, the flow object."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ._checks import check
from .initial import STATE_FIELDS, InitialState
from .matrix_flow import MatrixFlow, SymmetrizedFlow, draw_initial_matrices
from .mode_flow import ModeFlow
from .runs import RunTable
from .specs import Simulation

__all__ = ["build_flow", "initial_state", "mode_lambdas"]


def initial_state(sim: Simulation, table: RunTable) -> dict[str, np.ndarray]:
    """The state each run of ``table`` starts from, per engine, as float64 arrays with a leading run axis R
    (a chunk of a sweep gets the rows of the whole sweep's state).

    matrix / sampled: W (R, n2, n1), Wp (R, n2, n2), Wa (R, n2, n1), from :func:`draw_initial_matrices`
    with the given fields of ``sim.initial`` replacing the draw (W_a = W for ``init.wa = "copy"``).
    symmetrized: F (R, n2, n2) = W W^T of the draw and Wp (R, n2, n2), or the given ones.
    modes: p, s (R, k) from ``sim.modes`` or the grid, tau (R, k) from ``modes.tau0`` or
    ``init.wa``; the given fields of ``sim.initial`` replace them (``on_parabola`` sets s from p).
    """
    m = sim.model
    R = len(table["eta"])
    init = sim.initial or InitialState()
    given = init.given()
    shape = lambda name: STATE_FIELDS[sim.engine][name](m.n1, m.n2)  # noqa: E731
    # a per-run field of the whole sweep, cut to this table's rows (the table may be a chunk of it)
    per_run = lambda name, shp: init.per_run(name, table.n_sweep, shp, table.rows)  # noqa: E731
    if sim.engine in ("matrix", "sampled"):
        if all(k in given for k in ("W", "Wp", "Wa")):
            out = {}
        else:
            out = draw_initial_matrices(m, table["seed"], table["w_scale"], table["wp_scale"])
        for name in ("W", "Wp", "Wa"):
            if name in given:
                out[name] = per_run(name, shape(name))
        if "W" in given and "Wa" not in given and m.init.wa == "copy":
            out["Wa"] = out["W"].copy()
        return out
    if sim.engine == "symmetrized":
        out = {}
        if "F" not in given or "Wp" not in given:
            drawn = draw_initial_matrices(dataclasses.replace(m, predictor="symmetric"), table["seed"],
                                          table["w_scale"], table["wp_scale"])
            W0 = torch.as_tensor(drawn["W"])
            out = {"F": (W0 @ W0.mT).numpy(), "Wp": drawn["Wp"]}
        for name in ("F", "Wp"):
            if name in given:
                out[name] = per_run(name, shape(name))
        return out
    # modes: lambda per run (sigma2 may be swept) and initial values per run and mode
    k = m.n2
    lam_s, lam_d = mode_lambdas(sim, table)

    def per_mode(key, value):
        if key in table.swept:
            return np.repeat(table[key][:, None], k, axis=1)
        return np.broadcast_to(np.asarray(value, dtype=float), (R, k)).copy()

    p0 = per_run("p", (k,)) if "p" in given else per_mode("p0", sim.modes.p0)
    if "s" in given:
        s0 = per_run("s", (k,))
    elif sim.modes.on_parabola:  # w^2 = p^2 / alpha_p, i.e. c = 0 in Theorem 1's invariant
        s0 = lam_d * p0**2 / table["alpha_p"][:, None]
        check("modes.p0", "0", bool(np.all(s0 > 0)), "must be non-zero when on_parabola = true")
    else:
        s0 = per_mode("s0", sim.modes.s0)
    if "tau" in given:
        tau0 = per_run("tau", (k,))
    elif sim.modes.tau0 is not None:
        tau0 = per_mode("tau0", sim.modes.tau0)
    else:
        tau0 = np.full((R, k), 0.0 if m.init.wa == "zero" else 1.0)
    out = {"p": p0, "s": s0}
    if not m.simsiam:
        out["tau"] = tau0
    return out


def mode_lambdas(sim: Simulation, table: RunTable) -> tuple[np.ndarray, np.ndarray]:
    """(lambda_s, lambda_d), each (R, k): the per-mode data moments of every run (sigma2 may be swept)."""
    m = sim.model
    R, k = len(table["eta"]), m.n2
    lam_s = np.empty((R, k))
    lam_d = np.empty((R, k))
    for s2 in np.unique(table["sigma2"]):
        rows = table["sigma2"] == s2
        ls, ld = m.data.mode_moments(m.n1, k, sigma2=float(s2))
        lam_s[rows], lam_d[rows] = ls, ld
    return lam_s, lam_d


def build_flow(sim: Simulation, table: RunTable, init: dict, device):
    """The flow object of ``sim`` for the runs of ``table`` from the initial state ``init``
    (:func:`initial_state`). For the per-mode engine this also stores ``lam_s``, ``lam_d`` (R, k) in
    the table (the kernel rows read them)."""
    m = sim.model
    params = table.torch(device=device)
    T = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device)  # noqa: E731
    if sim.engine == "matrix":
        return MatrixFlow(m, params, init, device=device)
    if sim.engine == "symmetrized":
        params.update(table.torch(("tau",), device))
        return SymmetrizedFlow(T(init["F"]), T(init["Wp"]), params)
    table["lam_s"], table["lam_d"] = mode_lambdas(sim, table)
    w0 = np.sqrt(init["s"] / table["lam_d"])
    wa0 = w0 if m.simsiam else init["tau"] * w0
    return ModeFlow(m, params, T(table["lam_s"]), T(table["lam_d"]), T(init["p"]), T(init["s"]), T(wa0))

