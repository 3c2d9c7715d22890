"""Measured phase diagrams: a grid of short real runs (one batched job) against the theory's verdicts.

The ``[phase]`` table of a rung-1 experiment file names two optimizer hyperparameters and their values::

    [phase]
    x = "weight_decay"            # any of stopgrad.ssl_models.LINEAR_GRID_KEYS
    y = "ema_momentum"
    weight_decay = [0.01, 0.1, 1.0]
    ema_momentum = [0.9, 0.99]

Every grid point is trained in one batched :class:`~stopgrad.ssl_models.LinearRun` (all runs see the same
batches). The matched theory is one batched ``simulate`` sweep of the matrix flow over the same grid in flow
units (eta = weight_decay, beta = (1 - m) / lr, alpha_p = ratio; analysis.to_flow), from the same initial
weights and the X, X' estimated from the same augmented data.

Verdicts at the end of the run, identical in both worlds: a mode is alive when s_j(T) > collapse_tol *
max_j s_j(0); ``n_alive`` counts them; a run has collapsed when none is alive. The analytic boundary is the
per-mode threshold of §3.7 (tau = 1): along the eigenvectors v_j of X, mode j survives as t -> inf iff
eta < eta_c,j = (v_j^T X v_j)^2 / (4 v_j^T (X + X') v_j); the run collapses iff eta > max_j eta_c,j. (This
treats X and X' as sharing eigenvectors, which they do only approximately; the sweep of the exact matrix
flow is the theory's verdict, the analytic line its infinite-time, decoupled-mode limit.)

Output folder: ``measured.nc``, ``theory.nc`` (the sweep), ``phase.nc`` (verdicts in the figures'
contract: ``collapsed_measured``, ``collapsed_predicted``, ``n_alive_measured``, ``n_alive_predicted``,
``boundary_x``, ``boundary_y``), ``phase.png/pdf`` and ``summary.json`` (agreement in percent).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import xarray as xr

from stopgrad.dynamics import check

__all__ = ["eta_critical_modes", "phase_verdicts", "run_phase_diagram"]

FLOW_NAME = {"weight_decay": "eta", "ema_momentum": "beta", "predictor_lr_ratio": "alpha_p"}


def eta_critical_modes(X: np.ndarray, X_prime: np.ndarray) -> np.ndarray:
    """eta_c,j = lambda_d,j^2 / (4 lambda_s,j) along the eigenvectors of X, sorted descending (tau = 1)."""
    lam, V = np.linalg.eigh(X)
    lam_d = np.einsum("ij,ik,kj->j", V, X, V)
    lam_s = lam_d + np.einsum("ij,ik,kj->j", V, X_prime, V)
    eta_c = np.where(lam_s > 0, lam_d**2 / (4 * np.where(lam_s > 0, lam_s, 1.0)), 0.0)
    return np.sort(eta_c)[::-1]


def phase_verdicts(s: np.ndarray, collapse_tol: float) -> np.ndarray:
    """Alive modes per run from s (run, time, mode): s_j(T) > collapse_tol * max_j s_j(0) (NaN counts dead)."""
    ref = np.nanmax(s[:, 0, :], axis=-1, keepdims=True)
    final = np.nan_to_num(s[:, -1, :], nan=0.0)
    return (final > collapse_tol * ref).sum(axis=-1)


def _flow_grid(cfg, x: str, y: str) -> dict:
    """The simulate grid (flow units) of the optimizer grid {x, y}."""
    grid = {}
    for key in (x, y):
        vals = np.asarray(cfg.grid[key], dtype=float)
        if key == "ema_momentum":
            vals = (1.0 - vals) / cfg.lr
        grid[FLOW_NAME[key]] = [float(v) for v in vals]
    return grid


def run_phase_diagram(path: str | Path, out: str | Path, data_root=None, force: bool = False,
                      progress: bool = True) -> dict:
    """Train the grid of ``path``'s [phase] table, integrate the theory sweep, and write the verdicts."""
    from stopgrad.analysis import open_dataset, write_netcdf
    from stopgrad.dynamics import DataSpec, InitialState, LinearModel, Simulation, Solver, simulate
    from stopgrad.figures import phase_diagram_measured, save_figure
    from stopgrad.ssl_models import DataConfig, LinearRun, load_image_data

    from .experiment import load_experiment

    path, out = Path(path), Path(out)
    exp = load_experiment(path)
    phase = exp.phase
    check("phase", phase, isinstance(phase, dict), "missing table [phase] (x, y and their values)")
    x, y = phase.get("x"), phase.get("y")
    for key, v in (("phase.x", x), ("phase.y", y)):
        check(key, v, v in FLOW_NAME, f"must be one of {', '.join(FLOW_NAME)}")
        check(f"phase.{v}", phase.get(v), isinstance(phase.get(v), list) and len(phase[v]) > 0,
              "must be a non-empty list of values")
    extra = [k for k in phase if k not in ("x", "y", x, y)]
    check(f"phase.{extra[0]}" if extra else "phase", None, not extra, "unknown key in [phase]")
    check("experiment.rung", exp.spec.rung, exp.spec.rung == 1, "the batched phase grid is built for rung 1")
    cfg = dataclasses.replace(exp.run, grid={x: phase[x], y: phase[y]})
    out.mkdir(parents=True, exist_ok=True)
    key = exp.key
    stamp = out / "stages.json"
    done = json.loads(stamp.read_text()) if stamp.is_file() else {}
    t0 = time.perf_counter()
    if not force and done.get("measured") == key and (out / "measured.nc").is_file():
        measured = open_dataset(out / "measured.nc")
        st = np.load(out / "state.npz")
        X, Xp, init = st["X"], st["X_prime"], {k: st[k] for k in ("W", "Wp", "Wa")}
    else:
        data = load_image_data(DataConfig(name="cifar10", train_subset=cfg.train_subset, test_subset=1), data_root)
        run = LinearRun(cfg, data, progress=progress)
        if progress:
            print(f"phase: {cfg.n_runs} linear runs in one batch, {cfg.steps} steps each", flush=True)
        run.run()
        measured = run.to_dataset(exp.text)
        write_netcdf(measured, out / "measured.nc")
        X, Xp = run.X, run.X_prime
        init = {k: v.numpy() for k, v in run.init.items()}
        np.savez(out / "state.npz", X=X, X_prime=Xp, **init)
        done["measured"] = key
    t_measured = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not force and done.get("theory") == key and (out / "theory.nc").is_file():
        theory = open_dataset(out / "theory.nc")
    else:
        base = cfg.run_table()
        model = LinearModel(n1=cfg.n1, n2=cfg.n2, method=cfg.method,
                            beta=(1.0 - float(base["ema_momentum"][0])) / cfg.lr if cfg.method == "byol" else None,
                            alpha_p=float(base["predictor_lr_ratio"][0]), eta=float(base["weight_decay"][0]),
                            predictor="learned", data=DataSpec(kind="general", X=X, X_prime=Xp))
        times = cfg.lr * measured["time"].values.astype(float)
        sim = Simulation(model=model, engine="matrix", t_end=float(times[-1]), save_times=tuple(times[1:]),
                         grid=_flow_grid(cfg, x, y), solver=Solver(method=exp.spec.solver, rtol=exp.spec.rtol,
                                                                   atol=exp.spec.atol),
                         initial=InitialState(W=init["W"], Wp=init["Wp"], Wa=init["Wa"]),
                         collapse_tol=exp.spec.collapse_tol)
        if progress:
            print(f"phase: theory sweep of {sim.n_runs} matrix flows", flush=True)
        theory = simulate(sim)
        write_netcdf(theory, out / "theory.nc")
        done["theory"] = key
    stamp.write_text(json.dumps(done, indent=1))
    t_theory = time.perf_counter() - t0

    tol = exp.spec.collapse_tol
    n_meas = phase_verdicts(measured["s"].values, tol)
    n_pred = phase_verdicts(theory["s"].values, tol)
    eta_c = eta_critical_modes(X, Xp)[: cfg.n2]
    xs, ys = measured[x].values, measured[y].values
    xb = np.full(2, eta_c[0]) if x == "weight_decay" else np.array([min(xs), max(xs)])
    yb = np.array([min(ys), max(ys)]) if x == "weight_decay" else np.full(2, eta_c[0])
    ds = xr.Dataset(
        {
            "collapsed_measured": ("run", (n_meas == 0).astype(np.int8)),
            "collapsed_predicted": ("run", (n_pred == 0).astype(np.int8)),
            "n_alive_measured": ("run", n_meas.astype(np.int64)),
            "n_alive_predicted": ("run", n_pred.astype(np.int64)),
            "n_alive_analytic": ("run", np.array([int((eta_c > e).sum()) for e in measured["weight_decay"].values])
                                 if "weight_decay" in measured.coords else np.full(len(xs), int((eta_c > cfg.weight_decay).sum()))),
            "boundary_x": ("boundary_point", xb), "boundary_y": ("boundary_point", yb),
            "eta_critical": ("critical_mode", eta_c),
        },
        coords={x: ("run", xs), y: ("run", ys), "run": measured["run"].values},
        attrs={"source": "phase", "x": x, "y": y, "method": cfg.method, "rung": 1, "collapse_tol": tol,
               "t_end": float(cfg.lr * cfg.steps), "config": exp.text,
               "boundary": "eta_c of the top mode along X's eigenvectors (tau = 1, t -> inf)"},
    )
    agree_collapse = float(np.mean(ds["collapsed_measured"].values == ds["collapsed_predicted"].values))
    agree_alive = float(np.mean(n_meas == n_pred))
    within_one = float(np.mean(np.abs(n_meas - n_pred) <= 1))
    ds.attrs.update(agreement_collapse=agree_collapse, agreement_n_alive=agree_alive, agreement_n_alive_pm1=within_one)
    write_netcdf(ds, out / "phase.nc")
    fig = phase_diagram_measured(ds)
    save_figure(fig, out / "phase")
    summary = {"runs": int(cfg.n_runs), "x": x, "y": y, "agreement_collapse_percent": 100 * agree_collapse,
               "agreement_n_alive_percent": 100 * agree_alive, "agreement_n_alive_within_1_percent": 100 * within_one,
               "eta_critical_top": float(eta_c[0]), "seconds_measured": t_measured, "seconds_theory": t_theory}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if progress:
        print(f"phase ({x} x {y}, {cfg.n_runs} runs): collapse verdicts agree at {100 * agree_collapse:.1f} %, "
              f"surviving-mode counts equal at {100 * agree_alive:.1f} % (within one: {100 * within_one:.1f} %)")
    return summary
