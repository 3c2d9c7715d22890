"""Matched runs: one TOML file describes a real run; train it, build and integrate the matched theory,
compare the two and render the figures, caching every stage in one folder.

Rungs of the ladder (``[experiment] rung``):

1. the theory's own linear model on real CIFAR-10 (``[linear]``, :class:`~stopgrad.ssl_models.LinearRun`).
   The matched theory is the matrix flow (Eqs. 2-4) with the X, X' estimated from the same augmented data,
   from the measured initial weights ("init") and from the measured weights at step k0 ("forward");
2. a small nonlinear network (the other tables are a ``stopgrad train`` config: convnet, BN, cosine loss,
   linear predictor). Its matched theory is the per-mode system (§3.1) started from the measured
   (s_j, p_j, tau_j) at step 0 ("init") and at step k0 ("forward"), each mode with the effective
   augmentation ratio measured by the cross-view probe: lambda_d = 1, lambda_s = s_hat_j / s_cross_j
   (F-hat = W (X + X') W^T against the cross-view correlation W X W^T), so s_theory = s_cross.
3. the ResNet-18 recipe: a rung-2 file with a ResNet encoder, run on a GPU (``stopgrad experiment
   configs/experiment-rung3-byol.toml --out DIR --device cuda``).

Folder layout (each stage is skipped when its file exists and the config is unchanged; ``force`` redoes all):

    config.toml          the experiment file as given
    measured.nc          the measured run (rung 2: also train/ with the trainer's run folder)
    state.npz            rung 1: X, X', the initial weights and the weights at k0
    theory_init.nc, theory_forward.nc      the matched theory
    compare_init.nc, compare_forward.nc    analysis.compare of each against the measurement
    figures/             the gallery (re-rendered on every call; cheap)
    summary.json         the comparison tables' scores
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from stopgrad.dynamics import ConfigError, check, check_range

from .config import apply_overrides, build, load_toml

__all__ = ["ExperimentSpec", "load_experiment", "run_experiment", "measured_as_theory"]

STAGES = ("measured", "theory_init", "theory_forward", "compare_init", "compare_forward")


@dataclass(frozen=True)
class ExperimentSpec:
    """The ``[experiment]`` table.

    Attributes:
        rung: 1 (linear model, ``[linear]`` table) or 2 (a network: the other tables are a train config).
        forward_from: k0 as a fraction of the run's steps, where the forward prediction starts.
        solver, rtol, atol: the theory's integrator.
        collapse_tol: a mode is dead at the end when s_j < collapse_tol * max_j s_j(0) (both worlds).
    """

    rung: int = 1
    name: str = ""
    forward_from: float = 0.5
    solver: str = "dop853"
    rtol: float = 1e-8
    atol: float = 1e-12
    collapse_tol: float = 1e-3

    def __post_init__(self):
        check("rung", self.rung, self.rung in (1, 2), "must be 1 (linear) or 2 (network; a ResNet config is rung 3)")
        check_range("forward_from", self.forward_from, 0, 1, hi_open=True)
        check_range("rtol", self.rtol, 1e-14, 1e-2)
        check_range("atol", self.atol, 0, 1e-2)
        check_range("collapse_tol", self.collapse_tol, 0, 1, lo_open=True, hi_open=True)


@dataclass(frozen=True)
class Experiment:
    spec: ExperimentSpec
    run: object  # LinearRunConfig (rung 1) or TrainConfig (rung 2)
    text: str
    phase: dict | None = None  # the [phase] table (stopgrad phase), unvalidated here

    @property
    def key(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read an experiment TOML file (plus ``table.key=value`` overrides) into a validated :class:`Experiment`."""
    from stopgrad.ssl_models import LinearRunConfig, TrainConfig

    path = Path(path)
    table = apply_overrides(load_toml(path), overrides)
    if "experiment" not in table:
        raise ConfigError("experiment", None, "missing table [experiment] (rung = 1 or 2); see configs/experiment-*.toml")
    spec = build(ExperimentSpec, table.pop("experiment"), "experiment.")
    phase = table.pop("phase", None)
    if spec.rung == 1:
        unknown = [k for k in table if k != "linear"]
        check(unknown[0] if unknown else "linear", table.get(unknown[0]) if unknown else None, not unknown,
              "rung 1 takes only the tables [experiment] and [linear]")
        run = build(LinearRunConfig, table.get("linear", {}), "linear.")
    else:
        check("linear", table.get("linear"), "linear" not in table, "is for rung 1; rung 2 takes a train config")
        run = build(TrainConfig, table)
    text = path.read_text()
    if overrides:
        text += "\n# overrides: " + ", ".join(overrides) + "\n"
    return Experiment(spec, run, text, phase)


# ------------------------------------------------------------------------------------------------ helpers
def _cached(out: Path, name: str, key: str, force: bool) -> bool:
    stamp = out / "stages.json"
    done = json.loads(stamp.read_text()) if stamp.is_file() else {}
    return not force and done.get(name) == key and (out / f"{name}.nc").is_file()


def _mark(out: Path, name: str, key: str) -> None:
    from stopgrad.analysis import atomic_path

    stamp = out / "stages.json"
    done = json.loads(stamp.read_text()) if stamp.is_file() else {}
    done[name] = key
    with atomic_path(stamp) as tmp:
        Path(tmp).write_text(json.dumps(done, indent=1))


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def measured_as_theory(measured: xr.Dataset) -> xr.Dataset:
    """A rung-2 measurement in the theory's variables: ``s`` := ``s_cross`` (u_j^T E[z1 z2^T] u_j, the
    analogue of eig(W X W^T)); the probe's F-hat eigenvalues are kept as ``s_hat``."""
    if "s_cross" not in measured:
        raise ConfigError("probe.cross_view", False, "rung 2 needs the cross-view probe (set probe.cross_view = true)")
    ds = measured.rename({"s": "s_hat"})
    ds = ds.assign(s=measured["s_cross"]).drop_vars("s_cross")
    return ds.sel(time=np.isfinite(ds["s"].values).any(axis=-1))  # probes without spectra (e.g. kNN only)


def _flow_of(ds: xr.Dataset) -> dict:
    """Flow-unit eta, eta_p, alpha_p, beta of a measured Dataset (analysis.flow_hyperparameters)."""
    from stopgrad.analysis import flow_hyperparameters

    return flow_hyperparameters(ds, "measured")[0]


def _flow_times(ds: xr.Dataset) -> np.ndarray:
    """Flow time of each measured step through the unit mapping (the recorded lr schedule). A record
    without an lr (a kNN-only record at the last step) takes the previous record's lr."""
    from stopgrad.analysis import steps_to_flow_time

    steps = ds["time"].values.astype(float)
    lr = ds["lr"].values.astype(float) if "lr" in ds else np.full(steps.shape, float(ds.attrs["lr"]))
    for i in range(1, lr.size):
        if not np.isfinite(lr[i]):
            lr[i] = lr[i - 1]
    return steps_to_flow_time(steps, lr, float(ds.attrs.get("sgd_momentum", 0.0)))


def _shift_time(ds: xr.Dataset, t0: float) -> xr.Dataset:
    """The theory run's flow time counted from the start of the measured run (keeps the units)."""
    return ds.assign_coords(time=("time", ds["time"].values + t0, dict(ds["time"].attrs)))


# ------------------------------------------------------------------------------------------------ rung 1
def _rung1_measured(exp: Experiment, out: Path, data_root, progress: bool):
    from stopgrad.analysis import write_netcdf
    from stopgrad.ssl_models import DataConfig, LinearRun, load_image_data

    cfg = exp.run
    k0 = int(round(exp.spec.forward_from * cfg.steps))
    data = load_image_data(DataConfig(name="cifar10", train_subset=cfg.train_subset, test_subset=1), data_root)
    run = LinearRun(cfg, data, progress=progress)
    _say(progress, f"rung 1: estimating X, X' from {cfg.moment_views} views of {cfg.moment_images} images")
    run.estimate_moments()
    _say(progress, f"rung 1: training {cfg.n_runs} linear run(s), {cfg.steps} steps of batch {cfg.batch_size}")
    run.run(snapshot_steps=(k0,))
    ds = run.to_dataset(exp.text)
    ds.attrs["forward_step"] = k0
    write_netcdf(ds, out / "measured.nc")
    snap = run.snapshots[k0]
    np.savez(out / "state.npz", X=run.X, X_prime=run.X_prime, W0=run.init["W"].numpy(), Wp0=run.init["Wp"].numpy(),
             Wa0=run.init["Wa"].numpy(), Wk=snap["W"][0].numpy(), Wpk=snap["Wp"][0].numpy(),
             Wak=snap["Wa"][0].numpy(), k0=k0)
    return ds


def _rung1_theory(exp: Experiment, out: Path, measured: xr.Dataset, which: str):
    from stopgrad.dynamics import DataSpec, InitialState, LinearModel, Simulation, Solver, simulate

    cfg = exp.run
    st = np.load(out / "state.npz")
    flow = _flow_of(measured)
    t = _flow_times(measured)
    k0 = int(st["k0"]) if which == "forward" else 0
    t0 = float(t[int(np.searchsorted(measured["time"].values, k0))])
    W, Wp, Wa = (st["Wk"], st["Wpk"], st["Wak"]) if which == "forward" else (st["W0"], st["Wp0"], st["Wa0"])
    model = LinearModel(n1=cfg.n1, n2=cfg.n2, method=cfg.method, beta=flow["beta"], alpha_p=flow["alpha_p"],
                        eta=flow["eta"], eta_p=flow["eta_p"], predictor="learned",
                        data=DataSpec(kind="general", X=st["X"], X_prime=st["X_prime"]))
    save = t[t > t0] - t0
    sim = Simulation(model=model, engine="matrix", t_end=float(save[-1]), save_times=tuple(save),
                     solver=Solver(method=exp.spec.solver, rtol=exp.spec.rtol, atol=exp.spec.atol),
                     initial=InitialState(W=W, Wp=Wp, Wa=Wa), collapse_tol=exp.spec.collapse_tol, backend="torch")
    ds = simulate(sim)
    if "run" in ds.dims:
        ds = ds.isel(run=0, drop=True)
    return _shift_time(ds, t0).assign_attrs(start_step=k0, start_time=t0)


# ------------------------------------------------------------------------------------------------ rung 2
def _rung2_measured(exp: Experiment, out: Path, data_root, device: str, progress: bool):
    from dataclasses import replace

    from stopgrad.analysis import open_dataset, write_netcdf
    from stopgrad.ssl_models import Trainer

    cfg = exp.run
    if not cfg.probe.cross_view:
        raise ConfigError("probe.cross_view", False, "rung 2 needs the cross-view probe (set it to true)")
    cfg = replace(cfg, train=replace(cfg.train, progress=progress))
    if (out / "train").is_dir():  # this stage's own earlier run (another config, or --force): redo it
        shutil.rmtree(out / "train")
    Trainer(cfg, out / "train", data_root=data_root, device=device).run()
    ds = open_dataset(out / "train" / "metrics.nc")
    k0 = int(ds["time"].values[int(round(exp.spec.forward_from * (ds.sizes["time"] - 1)))])
    ds = ds.assign_attrs(forward_step=k0)
    write_netcdf(ds, out / "measured.nc")
    return ds


def _rung2_theory(exp: Experiment, measured: xr.Dataset, which: str):
    """The per-mode system from the measured state at step 0 ("init") or k0 ("forward")."""
    from stopgrad.dynamics import DataSpec, InitialState, LinearModel, Simulation, Solver, simulate

    view = measured_as_theory(measured)
    k0 = int(measured.attrs["forward_step"]) if which == "forward" else int(view["time"].values[0])
    flow = _flow_of(measured)
    t_all = _flow_times(view)
    i0 = int(np.searchsorted(view["time"].values, k0))
    at = view.isel(time=i0)
    s_cross = at["s"].values
    s_hat = at["s_hat"].values
    alive = np.isfinite(s_cross) & (s_cross > 0) & np.isfinite(at["p"].values)
    k = int(alive.sum())
    check("measured", k, k > 0, f"no mode has a positive cross-view eigenvalue at step {k0}")
    idx = np.flatnonzero(alive)
    sigma2 = np.maximum(s_hat[idx] / s_cross[idx] - 1.0, 0.0)
    tau = at["tau"].values[idx] if "tau" in at and measured.attrs.get("method", "").startswith("byol") else None
    model = LinearModel(n1=k, n2=k, method="byol" if tau is not None else "simsiam",
                        beta=flow["beta"] if tau is not None else None, alpha_p=flow["alpha_p"], eta=flow["eta"],
                        eta_p=flow["eta_p"], predictor="learned",
                        data=DataSpec(kind="additive", signal=tuple(np.ones(k)), noise=tuple(sigma2)))
    t0 = t_all[i0]
    save = t_all[i0 + 1 :] - t0
    init = InitialState(p=at["p"].values[idx], s=s_cross[idx], **({"tau": np.where(np.isfinite(tau), tau, 1.0)} if tau is not None else {}))
    sim = Simulation(model=model, engine="modes", t_end=float(save[-1]), save_times=tuple(save),
                     solver=Solver(method=exp.spec.solver, rtol=exp.spec.rtol, atol=exp.spec.atol),
                     initial=init, collapse_tol=exp.spec.collapse_tol, backend="torch")
    ds = simulate(sim)
    if "run" in ds.dims:
        ds = ds.isel(run=0, drop=True)
    ds = _shift_time(ds, float(t0)).assign_coords(mode=view["mode"].values[idx])
    return ds.assign_attrs(start_step=k0, start_time=float(t0), sigma2_modes=json.dumps(sigma2.round(6).tolist()))


def network_statements(measured: xr.Dataset, theory: xr.Dataset, collapse_tol: float) -> dict:
    """Rung 2's qualitative statements, measured (numbers for the report, good or bad).

    * alignment rises: the median alignment of the top 8 and top 32 modes at the first and last probe;
    * W_p becomes symmetric: the asymmetry ||W_p - W_p^T|| / ||W_p|| at the first and last probe;
    * modes that end below the basin edge die: each mode's edge p*_-(eta, tau_j, lambda_s,j) (§3.4 with
      lambda_d = 1, lambda_s = 1 + sigma_j^2 from the theory run) against its last measured p_j; a mode below
      its edge (or with eta above its eta_c) is predicted to die; it has died when s_cross_j(T) <
      collapse_tol max s_cross(0). Reported as the counts of the 2 x 2 table.
    """
    from stopgrad.dynamics import closed_forms

    view = measured_as_theory(measured)
    first, last = view.isel(time=0), view.isel(time=-1)
    out: dict = {}
    for k in (8, 32):
        for name, row in (("first", first), ("last", last)):
            out[f"alignment_top{k}_{name}"] = float(np.nanmedian(row["alignment"].values[:k]))
    a = view["asymmetry"].values
    out["asymmetry_first"], out["asymmetry_last"] = float(a[0]), float(a[-1])
    sigma2 = np.array(json.loads(theory.attrs["sigma2_modes"]))
    modes = theory["mode"].values
    eta = _flow_of(measured)["eta"]
    tau = last["tau"].values[modes] if "tau" in last else np.ones(modes.size)
    tau = np.where(np.isfinite(tau), tau, 1.0)
    edge = closed_forms.basin_edge(eta, tau, lam_s=1.0 + sigma2, lam_d=1.0)
    p_end = last["p"].values[modes]
    below = ~(p_end > edge)  # NaN p (a collapsed direction) counts as below
    s_end = np.nan_to_num(last["s"].values[modes], nan=0.0)
    died = s_end < collapse_tol * np.nanmax(first["s"].values)
    out["basin_table"] = {"below_edge_died": int((below & died).sum()), "below_edge_survived": int((below & ~died).sum()),
                          "above_edge_died": int((~below & died).sum()), "above_edge_survived": int((~below & ~died).sum())}
    out["basin_agreement"] = float(np.mean(below == died))
    return out


# ------------------------------------------------------------------------------------------------ pipeline
def run_experiment(path: str | Path, out: str | Path, data_root=None, device: str = "cpu", force: bool = False,
                   progress: bool = True, overrides: list[str] | None = None) -> dict:
    """Run (or resume from its cache) the experiment in ``path`` into the folder ``out``; returns the summary.

    ``overrides``: ``table.key=value`` items applied to the file (as ``--set``); they are part of the
    cache key, so a changed override reruns every stage."""
    from stopgrad.analysis import compare, comparison_scores, format_comparison, open_dataset, write_netcdf

    exp = load_experiment(path, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(exp.text)
    key = exp.key
    timings = {}
    t = time.perf_counter()
    if _cached(out, "measured", key, force):
        measured = open_dataset(out / "measured.nc")
        _say(progress, "measured: cached")
    else:
        measured = (_rung1_measured(exp, out, data_root, progress) if exp.spec.rung == 1
                    else _rung2_measured(exp, out, data_root, device, progress))
        _mark(out, "measured", key)
    timings["measured"] = time.perf_counter() - t
    summary = {"rung": exp.spec.rung, "method": measured.attrs.get("method"), "key": key, "scores": {}}
    for which in ("init", "forward"):
        t = time.perf_counter()
        name = f"theory_{which}"
        if _cached(out, name, key, force):
            theory = open_dataset(out / f"{name}.nc")
        else:
            _say(progress, f"theory ({which}): integrating")
            theory = (_rung1_theory(exp, out, measured, which) if exp.spec.rung == 1
                      else _rung2_theory(exp, measured, which))
            write_netcdf(theory, out / f"{name}.nc")
            _mark(out, name, key)
        timings[name] = time.perf_counter() - t
        meas = measured if exp.spec.rung == 1 else measured_as_theory(measured)
        meas = meas.sel(time=meas["time"] >= theory.attrs["start_step"])
        if exp.spec.rung == 2:
            meas = meas.sel(mode=theory["mode"].values)
        cmp = compare(theory, meas, collapse_tol=exp.spec.collapse_tol,
                      allow_mismatch=("sigma2",) if exp.spec.rung == 2 else ())
        write_netcdf(cmp, out / f"compare_{which}.nc")
        table = format_comparison(cmp)
        (out / f"compare_{which}.txt").write_text(table + "\n")
        _say(progress, f"\ncomparison ({which}, from step {theory.attrs['start_step']}):\n{table}")
        summary["scores"][which] = comparison_scores(cmp)
    if exp.spec.rung == 2:
        summary["statements"] = network_statements(measured, open_dataset(out / "theory_init.nc"),
                                                   exp.spec.collapse_tol)
    summary["timings_seconds"] = timings
    render_figures(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_jsonable))
    return summary


def render_figures(out: Path) -> list[Path]:
    """Render the gallery from the cached stage files of an experiment folder, all in flow time (the
    measured run through the unit mapping), labelled measured, theory-init, theory-forward, init, forward."""
    from stopgrad.analysis import open_dataset
    from stopgrad.figures import render_gallery

    names = {"measured": "measured.nc", "theory-init": "theory_init.nc", "theory-forward": "theory_forward.nc",
             "init": "compare_init.nc", "forward": "compare_forward.nc"}
    datasets = {label: open_dataset(out / f) for label, f in names.items() if (out / f).is_file()}
    if "measured" in datasets:
        m = datasets["measured"]
        datasets["measured"] = m.assign_coords(
            time=("time", _flow_times(m), {"units": "flow", "steps": "mapped by analysis.steps_to_flow_time"}))
    comparisons = {k: datasets.pop(k) for k in ("init", "forward") if k in datasets}
    # the comparisons repeat both runs: they draw the trajectory figures, the runs themselves the rest
    return render_gallery(comparisons, out / "figures") + render_gallery(datasets, out / "figures")


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
