"""The per-run parameter table: one typed table from the config to the kernels and back.

A simulation of R runs reads each hyperparameter once per run. :class:`RunTable` holds them as (R,)
float64 numpy columns (``seed`` and ``batch`` int64; the per-mode engine adds (R, k) columns
``lam_s`` and ``lam_d``), built once from a :class:`~stopgrad.dynamics.Simulation`, and gives the
three views the engines need:

* :meth:`RunTable.torch`: a dict of float64 tensors for the torch flows' ``rhs``/``observe``;
* :meth:`RunTable.kernel`: the (R, P) float64 rows the numba kernels read, in the column layout
  named by the constants below (the only place that layout is written);
* the numpy columns themselves (``table["eta"]``) for initial draws, coordinates and Datasets.

Kernel rows
-----------
matrix: ``[alpha_p, eta, eta_p, beta, sigma2]``
modes:  ``[alpha_p, eta, eta_p, beta, rule_power, rule_eps, rule_floor, lam_s (k), lam_d (k)]``
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ALPHA_P", "BETA", "ETA", "ETA_P", "FLOW_PARAMS", "LAM", "RULE_EPS", "RULE_FLOOR", "RULE_POWER",
           "RunTable", "SIGMA2"]

# kernel columns, shared by both layouts
ALPHA_P, ETA, ETA_P, BETA = 0, 1, 2, 3
SIGMA2 = 4  # matrix rows
RULE_POWER, RULE_EPS, RULE_FLOOR, LAM = 4, 5, 6, 7  # modes rows; lam_s at LAM.., lam_d at LAM + k..
MATRIX_COLUMNS = ("alpha_p", "eta", "eta_p", "beta", "sigma2")
MODE_COLUMNS = ("alpha_p", "eta", "eta_p", "beta")
#: the hyperparameters every flow reads (as torch tensors)
FLOW_PARAMS = ("alpha_p", "eta", "eta_p", "beta", "sigma2")
INTEGER_COLUMNS = ("seed", "batch")
DEFAULT_BATCH = 256
#: a run that is not a DirectSet-family rule evaluates no rule: power 1, eps 0, floor 0, normalised
NO_RULE = (1.0, 0.0, 0.0, True)


def _dtype(key: str) -> type:
    """A column's dtype: int64 for the integer columns, float64 otherwise."""
    return np.int64 if key in INTEGER_COLUMNS else np.float64


class RunTable:
    """Per-run hyperparameters (see the module docstring).

    Args:
        columns: name -> (R,) array (or (R, k) for lam_s, lam_d).
        swept: the names that vary along ``run`` by the config (the Dataset's run coordinates).
    """

    def __init__(self, columns: dict[str, np.ndarray], swept: tuple[str, ...] = (), offset: int = 0,
                 n_sweep: int | None = None):
        self.columns = dict(columns)
        self.swept = tuple(swept)
        self.n_runs = len(next(iter(self.columns.values())))
        #: the first run of this table in its sweep, and the sweep's run count (a chunk of a sweep is
        #: rows offset .. offset + n_runs of a sweep of n_sweep runs; a whole sweep has 0, n_runs)
        self.offset = int(offset)
        self.n_sweep = self.n_runs if n_sweep is None else int(n_sweep)

    @property
    def rows(self) -> slice:
        """This table's rows in its sweep's run axis."""
        return slice(self.offset, self.offset + self.n_runs)

    @classmethod
    def from_simulation(cls, sim, rows: tuple[int, int] | None = None) -> RunTable:
        """The table of ``sim``: its scalar settings, with ``grid`` (Cartesian product, last key
        fastest) or ``runs`` (zipped lists) varying along ``run``.

        rows: ``(lo, hi)`` builds only runs lo .. hi - 1 of the sweep (a chunk), with the values those
        runs have in the whole table, without building the whole table."""
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
            "batch": sim.sampled.batch if sim.sampled is not None else DEFAULT_BATCH,
        }
        keys = list(sim.grid)
        # integer columns (seed, batch) stay int64 end to end: through a float, seeds 2**53 and 2**53 + 1 coincide
        axes = [np.asarray(sim.grid[k], dtype=_dtype(k)) for k in keys]
        n_sweep = sim.n_runs
        lo, hi = (0, n_sweep) if rows is None else (int(rows[0]), int(rows[1]))
        if not 0 <= lo < hi <= n_sweep:
            raise ValueError(f"rows {lo}..{hi} are not a non-empty range of the sweep's {n_sweep} runs")
        table = {k: np.full(hi - lo, v, dtype=_dtype(k)) for k, v in base.items()}
        if keys:  # the Cartesian product in itertools.product order (last key fastest), without a Python loop
            index = np.unravel_index(np.arange(lo, hi), [len(a) for a in axes])
            for key, axis, i in zip(keys, axes, index):
                table[key] = axis[i]
        for key, values in sim.runs.items():  # zipped per-run values
            table[key] = np.asarray(values, dtype=_dtype(key))[lo:hi].copy()
        swept = tuple(keys) + tuple(sim.runs)
        if "eta" in swept and "eta_p" not in swept and m.eta_p is None:
            table["eta_p"] = table["eta"].copy()  # eta_p defaults to eta, run by run
        return cls(table, swept, offset=lo, n_sweep=n_sweep)

    def __len__(self) -> int:
        return self.n_runs

    def __getitem__(self, key: str) -> np.ndarray:
        return self.columns[key]

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        self.columns[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.columns

    def coords(self) -> dict[str, np.ndarray]:
        """The Dataset's run coordinates: the swept columns, or ``seed`` when nothing is swept."""
        return {k: self.columns[k] for k in self.swept} or {"seed": self.columns["seed"]}

    def torch(self, keys=FLOW_PARAMS, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """float64 tensors (R,) (or (R, k)) of ``keys`` on ``device``, for the torch flows."""
        return {k: torch.as_tensor(self.columns[k], dtype=torch.float64, device=device) for k in keys}

    def kernel(self, system: str, rule_params: tuple | None = None) -> np.ndarray:
        """The (R, P) float64 rows the numba kernels of ``system`` ("matrix" or "modes") read.

        rule_params: (power, eps, floor, normalize) of a DirectSet-family rule (modes only)."""
        if system == "matrix":
            return np.stack([self.columns[k] for k in MATRIX_COLUMNS], axis=1).astype(np.float64)
        R = self.n_runs
        power, eps, floor, _ = rule_params if rule_params is not None else NO_RULE
        scalars = np.stack([self.columns[k] for k in MODE_COLUMNS], axis=1)
        rule = np.broadcast_to(np.array([power, eps, floor], dtype=np.float64), (R, 3))
        return np.concatenate([scalars, rule, self.columns["lam_s"], self.columns["lam_d"]], axis=1).astype(np.float64)
