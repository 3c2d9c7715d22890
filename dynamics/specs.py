"""What to run: the specs of a simulation (:class:`Simulation`, :class:`ModeInit`, :class:`SampledSpec`).

Every dataclass checks itself in ``__post_init__`` and raises :class:`ConfigError` naming the
offending field; the TOML loader of the CLI builds these same objects. The model itself is
:class:`~stopgrad.dynamics.LinearModel` (model.py) and an explicit initial state an
:class:`~stopgrad.dynamics.InitialState` (initial.py).

Engines:
  "matrix"      the matrix flow of (W, W_p, W_a), Eqs. 2-4 (exact isotropic reduction when it applies)
  "modes"       the exact per-mode system (p_j, w_j, w_a,j) of §3.1
  "symmetrized" Eq. 7 in (F, W_p) with W_a = tau W, constant tau (Theorem 3's setting)
  "sampled"     finite-batch SGD on Gaussian samples (see :mod:`.sampled`)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from ._checks import ConfigError, check, check_choice, check_range
from .initial import InitialState
from .model import LinearModel
from .solvers import Solver

__all__ = ["ENGINES", "ModeInit", "SWEEPABLE", "SampledSpec", "Simulation"]

@dataclass(frozen=True)
class SampledSpec:
    """Finite-batch SGD settings.

    gradient = "autograd": draw the batch and differentiate the loss (stop-gradient by ``detach``).
    gradient = "moments": the same batch, the same gradient in closed form from its second moments.
    gradient = "wishart": draw the batch's second moments directly from their Wishart distribution
    (exact in distribution for Gaussian data, since the quadratic loss sees the batch only through
    them); the cost no longer grows with the batch size. Needs batch >= 2 n1.
    gradient = "expected": the population moments, i.e. full-batch gradient descent (no sampling
    noise; what is left of the gap to the flow is the discretisation error of the step).
    ``data_seed`` seeds the sample stream (one stream for the whole batch of runs).
    """

    lr: float = 0.01
    batch: int = 256
    gradient: str = "autograd"
    rho: float = 0.3
    freq: int = 1
    data_seed: int = 12345

    def __post_init__(self):
        check_range("lr", self.lr, 0, 1, lo_open=True)
        check_range("batch", self.batch, 1, 10**7, integer=True)
        check_choice("gradient", self.gradient, ("autograd", "moments", "wishart", "expected"))
        check_range("rho", self.rho, 0, 1, hi_open=True)
        check_range("freq", self.freq, 1, None, integer=True)
        check_range("data_seed", self.data_seed, 0, 2**63 - 1, integer=True)



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
    the keys are given (last key fastest). ``runs`` instead zips lists of per-run values (all of one
    length R): run r takes the r-th value of each. Both accept the sweepable names of the engine. ``collapse_tol``: a mode counts as collapsed at t_end when s_j < collapse_tol
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
    runs: dict = field(default_factory=dict)
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
        allowed = SWEEPABLE[self.engine]
        for table in ("grid", "runs"):
            check(table, getattr(self, table), isinstance(getattr(self, table), dict),
                  "must be a table of name = [values]")
            # accept any sequence of values (range, numpy array), stored as lists
            norm = {k: np.asarray(v).tolist() if isinstance(v, (range, tuple, np.ndarray)) else v
                    for k, v in getattr(self, table).items()}
            object.__setattr__(self, table, norm)
            for key, values in norm.items():
                check(f"{table}.{key}", values, key in allowed,
                      f"cannot be swept with engine = '{self.engine}'; sweepable: {', '.join(allowed)}")
                check(f"{table}.{key}", values, isinstance(values, list) and len(values) > 0,
                      "must be a non-empty list of values")
                for v in values:
                    _check_value(self, key, v, table)
        check("runs", "with a grid", not (self.grid and self.runs), "give either grid (a product) or runs (zipped)")
        lengths = {len(v) for v in self.runs.values()}
        check("runs", {k: len(v) for k, v in self.runs.items()}, len(lengths) <= 1, "all lists need one length")
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
                swept = {**self.grid, **self.runs}
                p0s = np.asarray(list(np.ravel(self.modes.p0)) + list(swept.get("p0", [])), dtype=float)
                alphas = np.asarray([self.model.alpha_p] + list(swept.get("alpha_p", [])), dtype=float)
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
        if self.runs:
            return len(next(iter(self.runs.values())))
        if isinstance(self.initial, InitialState):
            return self.initial.leading_runs(self.engine, self.model.n1, self.model.n2) or 1
        return 1

    def times(self) -> np.ndarray:
        """The observation times (S,), t = 0 first."""
        if self.save_times is None:
            return np.linspace(0.0, self.t_end, self.n_save)
        return np.concatenate([[0.0], self.save_times])


def _check_value(sim: Simulation, key: str, value, table: str = "grid") -> None:
    """Validate one swept value with the same rules as the scalar config field."""
    where = f"{table}.{key}"
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


