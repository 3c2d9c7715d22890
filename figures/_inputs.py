"""Reading what a figure needs from contract Datasets: labels, runs, hyperparameters, variable families."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from ._mode_theory import ModeParams

#: where a flow-unit hyperparameter may live in a Dataset's ``config`` string (JSON or TOML), in order
CONFIG_PATHS = {
    "eta": (("model", "eta"), ("eta",)),
    "alpha_p": (("model", "alpha_p"), ("alpha_p",)),
    "sigma2": (("model", "data", "sigma2"), ("sigma2",)),
    "tau": (("tau",), ("simulate", "tau")),
}
#: the fixed EMA ratio of the mode portrait when a Dataset names none: SimSiam has tau = 1, and every
#: non-collapsed fixed point of BYOL's 3-D system has tau = 1 (theory.md §3.5)
DEFAULT_TAU = 1.0
#: suffixes a comparison Dataset gives a compared variable (``s_predicted``, ``alignment_measured``)
SIDES = ("", "_predicted", "_measured")


def labelled(datasets) -> list[tuple[str, xr.Dataset]]:
    """(label, Dataset) pairs from a Dataset, a sequence of them, or a mapping label -> Dataset."""
    if isinstance(datasets, xr.Dataset):
        datasets = [datasets]
    if isinstance(datasets, Mapping):
        return [(str(k), v) for k, v in datasets.items()]
    if isinstance(datasets, Sequence):
        return [(default_label(ds), ds) for ds in datasets]
    raise TypeError(f"expected a Dataset, a sequence or a mapping of Datasets, got {type(datasets).__name__}")


def default_label(ds: xr.Dataset) -> str:
    """'method (source)', e.g. 'byol (theory)'."""
    return f"{ds.attrs.get('method', '?')} ({ds.attrs.get('source', '?')})"


def one_run(ds: xr.Dataset, run: int = 0) -> xr.Dataset:
    """The Dataset without its ``run`` dim (member ``run`` of a sweep)."""
    return ds.isel(run=run) if "run" in ds.dims else ds


def time_units(ds: xr.Dataset) -> str:
    return str(ds["time"].attrs.get("units", "")) if "time" in ds.coords else ""


def shared_units(pairs: list[tuple[str, xr.Dataset]]) -> str:
    """The one time unit of all Datasets; ValueError when they mix flow time and optimizer steps."""
    units = {label: time_units(ds) for label, ds in pairs}
    if len(set(units.values())) > 1:
        raise ValueError("the Datasets mix time units (" + ", ".join(f"{k}: {v!r}" for k, v in units.items())
                         + "); put them on one time axis first (stopgrad compare maps steps to flow time)")
    return next(iter(units.values()), "")


def config_doc(ds: xr.Dataset) -> dict:
    """The Dataset's ``config`` attribute parsed (JSON or TOML), {} when absent or unreadable."""
    text = ds.attrs.get("config", "")
    if not isinstance(text, str) or not text.strip():
        return {}
    for parse in (json.loads, tomllib.loads):
        try:
            doc = parse(text)
        except (ValueError, tomllib.TOMLDecodeError):
            continue
        return doc if isinstance(doc, dict) else {}
    return {}


def dig(doc: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def param(ds: xr.Dataset, name: str, run: int = 0) -> float | None:
    """A flow-unit hyperparameter: a coordinate (scalar or along ``run``), an attribute, or the config.

    Returns None when the Dataset does not say. ``tau`` is read from coordinates and attributes only
    (the data variable ``tau`` is the measured EMA ratio per mode, not a parameter).
    """
    if name in ds.coords:
        v = ds.coords[name]
        if v.ndim == 0:
            return float(v)
        if v.dims == ("run",):
            return float(v.values[run])
    if name in ds.attrs:
        try:
            return float(ds.attrs[name])
        except (TypeError, ValueError):
            return None
    doc = config_doc(ds)
    if name == "sigma2" and dig(doc, ("model", "data", "kind")) not in (None, "isotropic"):
        return None  # a non-isotropic data model has no single sigma2 (theory.md §3.7)
    for path in CONFIG_PATHS.get(name, ()):
        v = dig(doc, path)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def mode_params(ds: xr.Dataset | None, run: int = 0, **overrides) -> ModeParams:
    """The (sigma2, tau, eta, alpha_p) of a mode portrait: keyword overrides, else the Dataset, else
    tau = 1 (DEFAULT_TAU); ValueError naming any that stays unknown."""
    values = {}
    for name in ("sigma2", "tau", "eta", "alpha_p"):
        v = overrides.get(name)
        if v is None and ds is not None:
            v = param(ds, name, run)
        if v is None and name == "tau":
            v = DEFAULT_TAU
        values[name] = v
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ValueError(f"the phase portrait needs {', '.join(missing)} in flow units: the Dataset does not "
                         "carry them (coords, attrs or config); pass them as keywords")
    return ModeParams(**{k: float(v) for k, v in values.items()})


def family(ds: xr.Dataset, base: str) -> list[tuple[str, xr.DataArray]]:
    """Variables ``base``, ``base_predicted``, ``base_measured`` present in ``ds``, with a label suffix."""
    out = []
    for side in SIDES:
        if base + side in ds.data_vars:
            out.append((f" ({side[1:]})" if side else "", ds[base + side]))
    return out


def has_any(ds: xr.Dataset, *bases: str) -> bool:
    return any(family(ds, b) for b in bases)


def predictor_kind(ds: xr.Dataset) -> str:
    """'directpred', 'directcopy', 'directset', 'learned', 'none', ...: how W_p was set in this run."""
    rule = ds.attrs.get("predictor_rule")
    if isinstance(rule, str) and rule not in ("", "none"):
        return rule
    kind = str(ds.attrs.get("predictor", "learned"))
    if kind == "rule":
        name = dig(config_doc(ds), ("model", "rule", "name"))
        return str(name) if name else "rule"
    if kind in ("linear", "mlp"):
        return "learned"
    if kind in ("identity",):
        return "none"
    return kind


def positive_scale(values: np.ndarray) -> str:
    """'log' when every finite value is > 0 (and there is one), else 'linear'."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return "log" if v.size and np.all(v > 0) else "linear"
