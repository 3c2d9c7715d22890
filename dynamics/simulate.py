"""Run a linear model (one run or a batched sweep) and return a data-contract Dataset.

Engines:
  "matrix"      the matrix flow of (W, W_p, W_a), Eqs. 2-4 (exact isotropic reduction when it applies)
  "modes"       the exact per-mode system (p_j, w_j, w_a,j) of §3.1
  "symmetrized" Eq. 7 in (F, W_p) with W_a = tau W, constant tau (Theorem 3's setting)
  "sampled"     finite-batch SGD on Gaussian samples (see :mod:`.sampled`)

A sweep is a grid of hyperparameters (each a coordinate along ``run``) integrated in one batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from stopgrad.analysis import build_dataset

from ._checks import ConfigError, check, check_choice, check_range
from .initial import STATE_FIELDS as STATE_FIELDS_SHAPES
from .initial import STORED_DIMS, InitialState, stored_name
from .integrate import STATUS_NAMES, IntegrationResult, Solver, integrate, tableau_arrays
from .matrix_flow import MatrixFlow, SymmetrizedFlow, draw_initial_matrices
from .mode_flow import ModeFlow
from .model import LinearModel
from .sampled import SampledSpec

__all__ = ["ENGINES", "ModeInit", "Simulation", "collapse_verdicts", "simulate", "sweep"]

ENGINES = ("matrix", "modes", "symmetrized", "sampled")
# hyperparameters that may vary along ``run`` in one batched integration, per engine
_COMMON = ("eta", "eta_p", "alpha_p", "beta", "sigma2")
SWEEPABLE = {
    "matrix": _COMMON + ("seed", "w_scale", "wp_scale"),
    "modes": _COMMON + ("p0", "s0"),
    "symmetrized": ("eta", "alpha_p", "sigma2", "tau", "seed", "w_scale", "wp_scale"),
    "sampled": _COMMON + ("seed", "w_scale", "wp_scale", "batch"),
}


@dataclass(frozen=True)
class ModeInit:
    """Initial state of the per-mode engine: p_j(0) and s_j(0) = lambda_d w_j(0)^2, one value for all
    modes or one per mode. ``on_parabola = true`` starts on the invariant parabola instead,
    s_j(0) = lambda_d p_j(0)^2 / alpha_p (c_j = 0; s0 is then ignored). ``tau0`` sets
    tau_j(0) = w_a,j(0) / w_j(0) (BYOL); by default w_a(0) follows ``model.init.wa`` ("zero": tau 0,
    "copy": tau 1). Per-run values: :class:`InitialState` (``Simulation.initial``)."""

    p0: float | tuple[float, ...] = 0.2
    s0: float | tuple[float, ...] = 0.2
    on_parabola: bool = False
    tau0: float | tuple[float, ...] | None = None

    def __post_init__(self):
        for key in ("p0", "s0", "tau0"):  # lists and arrays become tuples (hashable)
            v = getattr(self, key)
            if isinstance(v, (list, np.ndarray)):
                object.__setattr__(self, key, tuple(map(float, np.ravel(v))) if np.ndim(v) else float(v))
        check_range("p0", self.p0, None, None)
        check_range("s0", self.s0, 0, None, lo_open=True)
        if self.tau0 is not None:
            check_range("tau0", self.tau0, None, None)


@dataclass(frozen=True)
class Simulation:
    """What to run: the model, the engine, the time grid, the solver and an optional sweep grid.

    grid maps a hyperparameter name to its values; the runs are the Cartesian product, in the order
    the keys are given. ``collapse_tol``: a mode counts as collapsed at t_end when s_j < collapse_tol
    times the largest s at t = 0.

    Observation times: ``n_save`` equally spaced times on [0, t_end], or ``save_times`` (strictly
    increasing, in (0, t_end]); t = 0 is always observed first, and the run ends at the last time.

    ``initial``: an explicit initial state (an :class:`InitialState`, a result Dataset, or a path to
    a ``.npz``/``.nc``), replacing the random draw; see :mod:`stopgrad.dynamics.initial`. With
    ``store_initial`` (default) the Dataset keeps the state each run started from (``init_*``
    variables), so ``Simulation(..., initial=result)`` replays it.
    """

    model: LinearModel = field(default_factory=LinearModel)
    engine: str = "matrix"
    t_end: float = 100.0
    n_save: int = 101
    solver: Solver = field(default_factory=Solver)
    grid: dict = field(default_factory=dict)
    modes: ModeInit = field(default_factory=ModeInit)
    tau: float = 1.0  # the symmetrized engine's constant tau
    backend: str = "auto"
    collapse_tol: float = 1e-6
    sampled: SampledSpec | None = None  # finite-batch SGD settings for engine = "sampled"
    save_times: tuple[float, ...] | None = None
    initial: InitialState | str | None = None
    store_initial: bool = True

    def __post_init__(self):
        check_choice("engine", self.engine, ENGINES)
        check_range("t_end", self.t_end, 0, None, lo_open=True)
        if self.save_times is not None:
            times = tuple(map(float, np.ravel(np.asarray(self.save_times, dtype=float))))
            object.__setattr__(self, "save_times", times)
            check("save_times", times, len(times) >= 1, "must hold at least one time")
            check_range("save_times", times, 0, self.t_end, lo_open=True)
            check("save_times", times, bool(np.all(np.diff(times) > 0)), "must be strictly increasing")
            check("save_times", times, len(times) < 100_000, "at most 99,999 times")
        check_range("n_save", self.n_save, 2, 100_000, integer=True)
        check_choice("backend", self.backend, ("auto", "torch", "numba"))
        check_range("collapse_tol", self.collapse_tol, 0, 1, lo_open=True, hi_open=True)
        check_range("tau", self.tau, 0, None)
        check("grid", self.grid, isinstance(self.grid, dict), "must be a table of name = [values]")
        # accept any sequence of values (range, numpy array), stored as lists
        norm = {k: list(v) if isinstance(v, (range, tuple, np.ndarray)) else v for k, v in self.grid.items()}
        object.__setattr__(self, "grid", norm)
        allowed = SWEEPABLE[self.engine]
        for key, values in self.grid.items():
            check(f"grid.{key}", values, key in allowed,
                  f"cannot be swept with engine = '{self.engine}'; sweepable: {', '.join(allowed)}")
            check(f"grid.{key}", values, isinstance(values, list) and len(values) > 0,
                  "must be a non-empty list of values")
            for v in values:
                _check_value(self, key, v)
        if self.engine == "symmetrized":
            check("model.data.kind", self.model.data.kind, self.model.isotropic, "the symmetrized engine needs isotropic data")
        if self.engine == "modes":
            check("model.init.wa", self.model.init.wa, self.model.init.wa != "random",
                  "the per-mode engine supports 'zero' or 'copy'")
            try:
                _, lam_d = self.model.data.mode_moments(self.model.n1, self.model.n2)
            except ConfigError as err:
                raise err.prefixed("model.data.") from None
            # s_j = lambda_d,j w_j^2: a mode without signal cannot start at s_j(0) > 0 (w_j(0) would be inf)
            check("model.data", f"signal eigenvalues {np.round(lam_d, 6).tolist()}", bool(np.all(lam_d > 0)),
                  f"the per-mode engine needs a positive signal eigenvalue in each of its n2 = {self.model.n2} modes")
            if self.modes.on_parabola:  # s_j(0) = lambda_d p_j(0)^2 / alpha_p must be positive
                p0s = np.asarray(list(np.ravel(self.modes.p0)) + list(self.grid.get("p0", [])), dtype=float)
                alphas = np.asarray([self.model.alpha_p] + list(self.grid.get("alpha_p", [])), dtype=float)
                s0 = float(lam_d.min()) * np.min(p0s**2) / np.max(alphas)
                check("modes.p0", self.modes.p0, s0 > 0,
                      "must be non-zero when on_parabola = true (s0 = lambda_d p0^2 / alpha_p must not underflow)")
            rule = self.model.predictor_rule()
            check("model.rule", getattr(rule, "name", rule), rule is None or rule.spectral,
                  "the per-mode engine needs a spectral rule (a function of the eigenvalues of F-hat)")
            check("modes.tau0", self.modes.tau0, self.modes.tau0 is None or not self.model.simsiam,
                  "is not used by method = 'simsiam' (w_a = w)")
            for key in ("p0", "s0", "tau0"):
                v = getattr(self.modes, key)
                if isinstance(v, (list, tuple)):
                    check(f"modes.{key}", v, len(v) == self.model.n2, f"needs one value per mode (n2 = {self.model.n2})")
        check("sampled", self.sampled, self.sampled is None or isinstance(self.sampled, SampledSpec),
              "must be a SampledSpec")
        if self.initial is not None:
            init = self.initial
            if isinstance(init, (str, Path)):
                init = InitialState.from_file(init)
            elif isinstance(init, xr.Dataset):
                init = InitialState.from_dataset(init)
            check("initial", type(init).__name__, isinstance(init, InitialState),
                  "must be an InitialState, a result Dataset or a path to a .npz/.nc file")
            object.__setattr__(self, "initial", init)
            init.validate(self.engine, self.model.n1, self.model.n2, self.n_runs)
            if "tau" in init.given():
                check("initial.tau", "given", not self.model.simsiam, "is not used by method = 'simsiam' (w_a = w)")
        check("store_initial", self.store_initial, isinstance(self.store_initial, bool), "must be true or false")

    @property
    def n_runs(self) -> int:
        """The grid's size; without a grid, the run axis of a per-run initial state (else 1)."""
        if self.grid:
            return math.prod(len(v) for v in self.grid.values())
        if isinstance(self.initial, InitialState):
            return self.initial.leading_runs(self.engine, self.model.n1, self.model.n2) or 1
        return 1

    def times(self) -> np.ndarray:
        """The observation times (S,), t = 0 first."""
        if self.save_times is None:
            return np.linspace(0.0, self.t_end, self.n_save)
        return np.concatenate([[0.0], self.save_times])


def _check_value(sim: Simulation, key: str, value) -> None:
    """Validate one swept value with the same rules as the scalar config field."""
    where = f"grid.{key}"
    try:
        if key in ("eta", "eta_p", "alpha_p", "beta"):
            kw = {key: value}
            if key == "beta" and sim.model.method == "simsiam":
                raise ConfigError(key, value, "is not used by method = 'simsiam' (W_a = W)")
            dataclasses.replace(sim.model, **kw)
        elif key == "sigma2":
            check("sigma2", value, sim.model.isotropic, "can be swept with isotropic data only")
            check_range("sigma2", value, 0, None)
        elif key in ("seed", "w_scale", "wp_scale"):
            dataclasses.replace(sim.model.init, **{key: value})
        elif key == "p0":
            check_range("p0", value, None, None)
        elif key == "s0":
            check_range("s0", value, 0, None, lo_open=True)
        elif key == "tau":
            check_range("tau", value, 0, None)
        elif key == "batch":
            check_range("batch", value, 1, 10**7, integer=True)
            grad = sim.sampled.gradient if sim.sampled is not None else "autograd"
            check("batch", value, grad == "wishart", "can be swept only with sampled.gradient = 'wishart'")
    except ConfigError as err:
        raise ConfigError(where, err.value, err.rule) from None


_INT_COLUMNS = ("seed", "batch")


def _run_table(sim: Simulation) -> dict[str, np.ndarray]:
    """Per-run hyperparameters (R,) for every parameter the engines read, swept or not."""
    m = sim.model
    base = {
        "eta": m.eta,
        "eta_p": m.eta_pred,
        "alpha_p": m.alpha_p,
        "beta": m.beta if m.beta is not None else 0.0,
        "sigma2": m.data.sigma2,
        "seed": m.init.seed,
        "w_scale": m.init.w_scale,
        "wp_scale": m.init.wp_scale,
        "tau": sim.tau,
        "batch": sim.sampled.batch if sim.sampled is not None else 256,
    }
    keys = list(sim.grid)
    # integer columns (seed, batch) stay int64 end to end: through a float, seeds 2**53 and 2**53 + 1 coincide
    dtype = lambda k: np.int64 if k in _INT_COLUMNS else float  # noqa: E731
    axes = [np.asarray(sim.grid[k], dtype=dtype(k)) for k in keys]
    R = int(np.prod([len(a) for a in axes])) if keys else sim.n_runs
    table = {k: np.full(R, v, dtype=dtype(k)) for k, v in base.items()}
    # the Cartesian product in itertools.product order (last key fastest), without a Python loop
    for key, col in zip(keys, np.meshgrid(*axes, indexing="ij") if keys else []):
        table[key] = col.reshape(-1)
    if "eta" in sim.grid and "eta_p" not in sim.grid and m.eta_p is None:
        table["eta_p"] = table["eta"].copy()  # eta_p defaults to eta, run by run
    return table


def _config_json(sim: Simulation) -> str:
    def enc(o):
        if isinstance(o, InitialState):  # shapes and digests; the values are stored as init_* variables
            return o.describe()
        if dataclasses.is_dataclass(o):
            return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
        if isinstance(o, np.ndarray):
            return o.tolist()
        return repr(o)

    return json.dumps(sim, default=enc, sort_keys=True)


def _integrate_system(flow, sim: Simulation, t_save: np.ndarray, progress) -> tuple[IntegrationResult, str]:
    """Integrate a flow object with the numba kernel where it applies, else with torch."""
    solver = sim.solver
    numba_sys = flow.numba_system() if hasattr(flow, "numba_system") else None
    use_numba = numba_sys is not None and solver.method != "rk4" and sim.backend != "torch"
    if sim.backend == "numba" and not use_numba:
        raise ConfigError("backend", "numba", "does not apply here (needs the CPU, an adaptive method and a "
                          "built-in flow: isotropic matrix flow or per-mode system, no user rule)")
    if not use_numba:
        res = integrate(flow.rhs, flow.y0, t_save, solver, params=flow.params, observe=flow.observe,
                        progress="integrating" if progress else False)
        return res, "torch"
    return _integrate_numba(flow, numba_sys, sim, t_save, progress), "numba"


def _integrate_numba(flow, numba_sys, sim: Simulation, t_save: np.ndarray, progress) -> IntegrationResult:
    import time as _time

    from tqdm.auto import tqdm

    from . import _cpu_kernels

    name, prm, cfg, work = numba_sys
    solver = sim.solver
    Y0 = flow.y0.numpy()
    R, n = Y0.shape
    S = len(t_save)
    tab = tableau_arrays(solver.method)
    block = int(max(1, min(R, 2**25 // max(1, S * n))))  # <= ~256 MB of saved states per block
    values: dict[str, torch.Tensor] = {}
    stats = np.zeros((R, 4), dtype=np.int64)
    t_fail = np.full(R, np.nan)
    start = _time.perf_counter()
    t_t = torch.as_tensor(t_save)
    with tqdm(total=R, desc="integrating", unit="run", disable=not progress, leave=False) as bar:
        for lo in range(0, R, block):
            hi = min(R, lo + block)
            out, st, tf = _cpu_kernels.solve_batch(name, Y0[lo:hi], prm[lo:hi], cfg, t_save, tab, solver.rtol,
                                                   solver.atol, solver.max_steps, solver.blowup, work)
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


def initial_state(sim: Simulation, table: dict) -> dict[str, np.ndarray]:
    """The state each run starts from, per engine, as float64 arrays with a leading run axis R.

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
    shape = lambda name: STATE_FIELDS_SHAPES[sim.engine][name](m.n1, m.n2)  # noqa: E731
    if sim.engine in ("matrix", "sampled"):
        if all(k in given for k in ("W", "Wp", "Wa")):
            out = {}
        else:
            out = draw_initial_matrices(m, table["seed"], table["w_scale"], table["wp_scale"])
        for name in ("W", "Wp", "Wa"):
            if name in given:
                out[name] = init.per_run(name, R, shape(name))
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
                out[name] = init.per_run(name, R, shape(name))
        return out
    # modes: lambda per run (sigma2 may be swept) and initial values per run and mode
    k = m.n2
    lam_s, lam_d = _mode_lambdas(sim, table)

    def per_mode(key, value):
        if key in sim.grid:
            return np.repeat(table[key][:, None], k, axis=1)
        return np.broadcast_to(np.asarray(value, dtype=float), (R, k)).copy()

    p0 = init.per_run("p", R, (k,)) if "p" in given else per_mode("p0", sim.modes.p0)
    if "s" in given:
        s0 = init.per_run("s", R, (k,))
    elif sim.modes.on_parabola:  # w^2 = p^2 / alpha_p, i.e. c = 0 in Theorem 1's invariant
        s0 = lam_d * p0**2 / table["alpha_p"][:, None]
        check("modes.p0", "0", bool(np.all(s0 > 0)), "must be non-zero when on_parabola = true")
    else:
        s0 = per_mode("s0", sim.modes.s0)
    if "tau" in given:
        tau0 = init.per_run("tau", R, (k,))
    elif sim.modes.tau0 is not None:
        tau0 = per_mode("tau0", sim.modes.tau0)
    else:
        tau0 = np.full((R, k), 0.0 if m.init.wa == "zero" else 1.0)
    out = {"p": p0, "s": s0}
    if not m.simsiam:
        out["tau"] = tau0
    return out


def _mode_lambdas(sim: Simulation, table: dict) -> tuple[np.ndarray, np.ndarray]:
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


def _build_flow(sim: Simulation, table: dict, init: dict, device):
    m = sim.model
    tt = lambda key: torch.as_tensor(table[key], dtype=torch.float64, device=device)  # noqa: E731
    params = {k: tt(k) for k in ("alpha_p", "eta", "eta_p", "beta", "sigma2")}
    T = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device)  # noqa: E731
    if sim.engine == "matrix":
        return MatrixFlow(m, params, init, device=device)
    if sim.engine == "symmetrized":
        params["tau"] = tt("tau")
        return SymmetrizedFlow(T(init["F"]), T(init["Wp"]), params)
    lam_s, lam_d = _mode_lambdas(sim, table)
    w0 = np.sqrt(init["s"] / lam_d)
    wa0 = w0 if m.simsiam else init["tau"] * w0
    return ModeFlow(m, params, T(lam_s), T(lam_d), T(init["p"]), T(init["s"]), T(wa0))


def simulate(sim: Simulation, progress: bool = False) -> xr.Dataset:
    """Integrate ``sim`` and return the contract Dataset (dims run, time, mode).

    Per-run extras: ``status`` and ``t_fail`` (a blow-up, step-size underflow or step limit, with the
    time it happened; values after it are NaN), ``verdict`` and ``n_alive`` (collapse at t_end),
    ``nfev`` (right-hand-side evaluations). Failures also raise a RuntimeWarning naming the runs.
    """
    if sim.engine == "sampled":
        from .sampled import simulate_sampled

        return simulate_sampled(sim, progress=progress)
    device = sim.solver.torch_device()
    table = _run_table(sim)
    init = initial_state(sim, table)
    flow = _build_flow(sim, table, init, device)
    res, backend = _integrate_system(flow, sim, sim.times(), progress)
    return _to_dataset(sim, table, res, backend, source="theory", attrs={"reduced": int(getattr(flow, "reduced", 0))},
                       initial=init)


def _to_dataset(sim: Simulation, table: dict, res: IntegrationResult, backend: str, source: str,
                extra: dict | None = None, attrs: dict | None = None, initial: dict | None = None) -> xr.Dataset:
    vals = {k: v.numpy() for k, v in res.values.items()}
    contract = {k: v for k, v in vals.items() if k in ("s", "p", "alignment", "tau", "commutator", "balance",
                                                      "asymmetry", "loss", "weight_norm")}
    _fail_non_finite(res, vals)
    verdict, n_alive = collapse_verdicts(vals["s"], res.status, sim.collapse_tol)
    below, t_below = _below_atol(sim, res, vals["s"])
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
        contract, time=res.t, time_units="flow", source=source, method=method, config=_config_json(sim),
        run_coords={k: table[k] for k in sim.grid} or {"seed": table["seed"]}, extra_vars=extra_vars,
        attrs={
            "engine": sim.engine, "backend": backend, "predictor": m.predictor, "solver": sim.solver.method,
            "rtol": sim.solver.rtol, "atol": sim.solver.atol, "wall_seconds": res.wall, **(attrs or {}),
        },
    )
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


def _fail_non_finite(res: IntegrationResult, vals: dict) -> None:
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


def _below_atol(sim: Simulation, res: IntegrationResult, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def sweep(sim: Simulation, progress: bool = False) -> xr.Dataset:
    """:func:`simulate` over ``sim.grid``; the same batched integration, named for the CLI verb."""
    check("grid", sim.grid, bool(sim.grid), "a sweep needs at least one swept parameter")
    return simulate(sim, progress=progress)
