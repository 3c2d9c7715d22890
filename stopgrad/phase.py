"""Measured phase diagrams: a grid of short real runs (one batched job) against the theory's verdicts.

The ``[phase]`` table of a rung-1 experiment file names two optimizer hyperparameters and their values::

    [phase]
    x = "weight_decay"            # any of stopgrad.ssl_models.LINEAR_GRID_KEYS
    y = "ema_momentum"
    weight_decay = [0.01, 0.1, 1.0]
    ema_momentum = [0.9, 0.99]

Rung 1: every grid point is trained in one batched :class:`~stopgrad.ssl_models.LinearRun` (all runs see
the same batches). The matched theory is one batched ``simulate`` sweep of the matrix flow over the same grid in flow
units (eta = weight_decay, beta = (1 - m) / lr, alpha_p = ratio; analysis.to_flow), from the same initial
weights and the X, X' estimated from the same augmented data.

Rung 2 (a network experiment file): one short run per grid point, in one job (each run already uses every
core), and the per-mode theory of each run from its own measured state at step 0 (see
:mod:`stopgrad.experiment`); the boundary is max_j 1 / (4 (1 + sigma_j^2)) (tau = 1, lambda_d = 1).

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


def _stamp(out: Path) -> dict:
    stamp = out / "stages.json"
    return json.loads(stamp.read_text()) if stamp.is_file() else {}


def _rung1_grid(exp, x: str, y: str, out: Path, data_root, force: bool, progress: bool):
    """Rung 1: one batched LinearRun over the grid and one batched theory sweep.

    Returns (s_measured, s_predicted, coords, eta_c, t_end): s arrays (run, time, mode)."""
    from stopgrad.analysis import open_dataset, write_netcdf
    from stopgrad.dynamics import DataSpec, InitialState, LinearModel, Simulation, Solver, simulate
    from stopgrad.ssl_models import DataConfig, LinearRun, load_image_data

    cfg = dataclasses.replace(exp.run, grid={x: exp.phase[x], y: exp.phase[y]})
    done = _stamp(out)
    if not force and done.get("measured") == exp.key and (out / "measured.nc").is_file():
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
        done["measured"] = exp.key
    if not force and done.get("theory") == exp.key and (out / "theory.nc").is_file():
        theory = open_dataset(out / "theory.nc")
    else:
        base = cfg.run_table()
        model = LinearModel(n1=cfg.n1, n2=cfg.n2, method=cfg.method,
                            beta=(1.0 - float(base["ema_momentum"][0])) / cfg.lr if cfg.method == "byol" else None,
                            alpha_p=float(base["predictor_lr_ratio"][0]), eta=float(base["weight_decay"][0]),
                            predictor="learned", data=DataSpec(kind="general", X=X, X_prime=Xp))
        times = cfg.lr * measured["time"].values.astype(float)  # constant lr, no momentum: t = lr * step
        sim = Simulation(model=model, engine="matrix", t_end=float(times[-1]), save_times=tuple(times[1:]),
                         grid=_flow_grid(cfg, x, y), solver=Solver(method=exp.spec.solver, rtol=exp.spec.rtol,
                                                                   atol=exp.spec.atol),
                         initial=InitialState(W=init["W"], Wp=init["Wp"], Wa=init["Wa"]),
                         collapse_tol=exp.spec.collapse_tol)
        if progress:
            print(f"phase: theory sweep of {sim.n_runs} matrix flows", flush=True)
        theory = simulate(sim)
        write_netcdf(theory, out / "theory.nc")
        done["theory"] = exp.key
    (out / "stages.json").write_text(json.dumps(done, indent=1))
    coords = {x: measured[x].values, y: measured[y].values}
    eta_c = eta_critical_modes(X, Xp)[: cfg.n2]
    return measured["s"].values, theory["s"].values, coords, eta_c, float(cfg.lr * cfg.steps)


#: rung 2's grid keys in the train config
TRAIN_KEYS = {"weight_decay": ("optim", "weight_decay"), "ema_momentum": ("method", "momentum"),
              "predictor_lr_ratio": ("optim", "predictor_lr_ratio")}


def _rung2_grid(exp, x: str, y: str, out: Path, data_root, force: bool, progress: bool):
    """Rung 2: one short network run per grid point, in one job (each run already uses every core: parallel
    runs would share the same two cores), and the per-mode theory of each from its measured step-0 state.

    Returns (s_measured, s_predicted, coords, eta_c, t_end) as :func:`_rung1_grid`; s on the modes that
    the theory follows (the others count as dead in both worlds)."""
    import itertools

    from stopgrad.analysis import open_dataset, write_netcdf

    from .experiment import Experiment, _rung2_measured, _rung2_theory, measured_as_theory

    pairs = list(itertools.product(exp.phase[x], exp.phase[y]))
    s_meas, s_pred, eta_c, t_end = [], [], [], math.nan
    for r, (vx, vy) in enumerate(pairs):
        cfg = exp.run
        for key, val in ((x, vx), (y, vy)):
            table, field = TRAIN_KEYS[key]
            cfg = dataclasses.replace(cfg, **{table: dataclasses.replace(getattr(cfg, table), **{field: float(val)})})
        folder = out / f"run{r:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        key = f"{exp.key}-{x}={vx}-{y}={vy}"
        done = _stamp(folder)
        one = Experiment(exp.spec, cfg, exp.text + f"\n# phase point {x} = {vx}, {y} = {vy}\n")
        if not force and done.get("measured") == key and (folder / "measured.nc").is_file():
            measured = open_dataset(folder / "measured.nc")
        else:
            if progress:
                print(f"phase: run {r + 1}/{len(pairs)}: {x} = {vx}, {y} = {vy}", flush=True)
            measured = _rung2_measured(one, folder, data_root, "cpu", progress=False)
            done["measured"] = key
            (folder / "stages.json").write_text(json.dumps(done))
        theory = _rung2_theory(one, measured, "init")
        write_netcdf(theory, folder / "theory_init.nc")
        view = measured_as_theory(measured)
        full = np.zeros((view.sizes["time"], view.sizes["mode"]))
        pred = np.zeros((2, view.sizes["mode"]))
        modes = theory["mode"].values
        full[:, :] = np.nan_to_num(view["s"].values, nan=0.0)
        pred[0, modes] = theory["s"].values[0]
        pred[1, modes] = theory["s"].values[-1]
        s_meas.append(full[[0, -1]])
        s_pred.append(pred)
        sigma2 = np.array(json.loads(theory.attrs["sigma2_modes"]))
        eta_c.append(float(np.max(1.0 / (4.0 * (1.0 + sigma2)))))  # tau = 1, lambda_d = 1 (§3.7)
        t_end = float(theory["time"].values[-1])
    coords = {x: np.array([p[0] for p in pairs], float), y: np.array([p[1] for p in pairs], float)}
    return np.stack(s_meas), np.stack(s_pred), coords, np.array([np.median(eta_c)]), t_end


def run_phase_diagram(path: str | Path, out: str | Path, data_root=None, force: bool = False,
                      progress: bool = True) -> dict:
    """Train the grid of ``path``'s [phase] table, integrate the matched theory, and write the verdicts."""
    from stopgrad.analysis import write_netcdf
    from stopgrad.figures import phase_diagram_measured, save_figure

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
    check("phase.x", x, x == "weight_decay", "the diagrams put weight_decay on the x axis (the boundary is in eta)")
    extra = [k for k in phase if k not in ("x", "y", x, y)]
    check(f"phase.{extra[0]}" if extra else "phase", None, not extra, "unknown key in [phase]")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    grid = _rung1_grid if exp.spec.rung == 1 else _rung2_grid
    s_meas, s_pred, coords, eta_c, t_end = grid(exp, x, y, out, data_root, force, progress)
    seconds = time.perf_counter() - t0

    tol = exp.spec.collapse_tol
    n_meas = phase_verdicts(s_meas, tol)
    n_pred = phase_verdicts(s_pred, tol)
    xs, ys = coords[x], coords[y]
    ds = xr.Dataset(
        {
            "collapsed_measured": ("run", (n_meas == 0).astype(np.int8)),
            "collapsed_predicted": ("run", (n_pred == 0).astype(np.int8)),
            "n_alive_measured": ("run", n_meas.astype(np.int64)),
            "n_alive_predicted": ("run", n_pred.astype(np.int64)),
            "n_alive_analytic": ("run", np.array([int((eta_c > e).sum()) for e in xs])),
            "boundary_x": ("boundary_point", np.full(2, eta_c[0])),
            "boundary_y": ("boundary_point", np.array([min(ys), max(ys)], float)),
            "eta_critical": ("critical_mode", eta_c),
        },
        coords={x: ("run", xs), y: ("run", ys), "run": np.arange(xs.size)},
        attrs={"source": "phase", "x": x, "y": y, "method": str(getattr(exp.run, "method", "")) if exp.spec.rung == 1
               else exp.run.method.name, "rung": exp.spec.rung, "collapse_tol": tol, "t_end": t_end,
               "config": exp.text,
               "boundary": ("eta_c of the top mode along X's eigenvectors (tau = 1, t -> inf)" if exp.spec.rung == 1
                            else "median over runs of max_j 1 / (4 (1 + sigma_j^2)) (tau = 1, lambda_d = 1, t -> inf)")},
    )
    agree_collapse = float(np.mean(ds["collapsed_measured"].values == ds["collapsed_predicted"].values))
    agree_alive = float(np.mean(n_meas == n_pred))
    within_one = float(np.mean(np.abs(n_meas - n_pred) <= 1))
    ds.attrs.update(agreement_collapse=agree_collapse, agreement_n_alive=agree_alive, agreement_n_alive_pm1=within_one)
    write_netcdf(ds, out / "phase.nc")
    save_figure(phase_diagram_measured(ds), out / "phase")
    summary = {"rung": exp.spec.rung, "runs": int(xs.size), "x": x, "y": y,
               "agreement_collapse_percent": 100 * agree_collapse, "agreement_n_alive_percent": 100 * agree_alive,
               "agreement_n_alive_within_1_percent": 100 * within_one, "eta_critical_top": float(eta_c[0]),
               "n_alive_measured": n_meas.tolist(), "n_alive_predicted": n_pred.tolist(), "seconds": seconds}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if progress:
        print(f"phase ({x} x {y}, {xs.size} runs): collapse verdicts agree at {100 * agree_collapse:.1f} %, "
              f"surviving-mode counts equal at {100 * agree_alive:.1f} % (within one: {100 * within_one:.1f} %)")
    return summary
