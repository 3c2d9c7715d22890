"""The xarray data contract shared by theory, sampled simulation and measured runs (design.md).

Dims: ``run`` (optional, a sweep member), ``time``, ``mode``. Each swept hyperparameter is a coord
along ``run``. Files are netCDF, written atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
from importlib import metadata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = [
    "atomic_path",
    "MODE_VARIABLES",
    "SCALAR_VARIABLES",
    "SOURCES",
    "DatasetError",
    "build_dataset",
    "open_dataset",
    "validate_dataset",
    "write_netcdf",
]

SOURCES = ("theory", "sampled", "measured", "comparison")  # comparison: analysis.compare's output
TIME_UNITS = ("flow", "step")
#: variables with a trailing ``mode`` dim, and their meaning (long_name attribute).
MODE_VARIABLES = {
    "s": "eigenvalue of F = W X W^T (theory) or of the measured feature correlation",
    "p": "predictor eigenvalue along F's eigenvector, u_j^T W_p u_j",
    "alignment": "cos(W_p u_j, u_j)",
    "tau": "EMA ratio w_a,j / w_j",
}
#: variables over ``time`` only.
SCALAR_VARIABLES = {
    "commutator": "||[F, W_p]||_F / (||F||_F ||W_p||_F)",
    "balance": "Theorem 1 residual ||W W^T - W_p^T W_p / alpha_p - exp(-2 eta t) C||_F / ||C||_F",
    "asymmetry": "||W_p - W_p^T||_F / ||W_p||_F",
    "loss": "objective value",
    "weight_norm": "||W||_F",
    "std_l2": "mean per-channel std of l2-normalised outputs",
    "effective_rank": "Roy-Vetterli effective rank",
    "rankme": "RankMe",
    "uniformity": "Wang-Isola uniformity",
    "align_loss": "Wang-Isola alignment",
    "knn_acc": "weighted kNN accuracy",
    "neg_dist": "mean Euclidean distance of negative pairs",
}


class DatasetError(ValueError):
    """A Dataset or netCDF file that breaks the data contract; the message names what is wrong."""


def _version() -> str:
    try:
        return metadata.version("stopgrad")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _flat_attr(value):
    """netCDF accepts numbers, strings and 1-D arrays of them: map the rest onto those."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if value is None:
        return "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return np.asarray(value)
    if isinstance(value, (int, float, str, np.integer, np.floating, np.ndarray)):
        return value
    return str(value)


def build_dataset(
    data: dict[str, np.ndarray],
    *,
    time: np.ndarray,
    time_units: str,
    source: str,
    method: str,
    config: str,
    run_coords: dict[str, np.ndarray] | None = None,
    extra_vars: dict[str, tuple[tuple[str, ...], np.ndarray]] | None = None,
    attrs: dict | None = None,
) -> xr.Dataset:
    """Assemble a contract Dataset.

    ``data`` maps contract names to arrays shaped (run, time[, mode]) when ``run_coords`` is given,
    else (time[, mode]). ``run_coords`` maps each swept hyperparameter to a (run,) array;
    ``extra_vars`` adds free-form variables as ``name: (dims, array)``.
    """
    if source not in SOURCES:
        raise DatasetError(f"source = {source!r}: must be one of {SOURCES}")
    if time_units not in TIME_UNITS:
        raise DatasetError(f"time units = {time_units!r}: must be one of {TIME_UNITS}")
    lead = ("run",) if run_coords is not None else ()
    variables = {}
    n_mode = None
    for name, arr in data.items():
        arr = np.asarray(arr)
        if name in MODE_VARIABLES:
            dims = lead + ("time", "mode")
            n_mode = arr.shape[-1]
        elif name in SCALAR_VARIABLES:
            dims = lead + ("time",)
        else:
            raise DatasetError(f"variable {name!r} is not in the data contract; pass it in extra_vars")
        if arr.ndim != len(dims):
            raise DatasetError(f"variable {name!r}: expected dims {dims}, got an array of shape {arr.shape}")
        desc = MODE_VARIABLES.get(name) or SCALAR_VARIABLES[name]
        variables[name] = xr.Variable(dims, arr, attrs={"long_name": desc})
    for name, (dims, arr) in (extra_vars or {}).items():
        variables[name] = xr.Variable(dims, np.asarray(arr))
    coords = {"time": ("time", np.asarray(time, dtype=float), {"units": time_units})}
    if n_mode is not None:
        coords["mode"] = ("mode", np.arange(n_mode))
    if run_coords is not None:
        n_run = len(next(iter(run_coords.values()))) if run_coords else next(iter(data.values())).shape[0]
        coords["run"] = ("run", np.arange(n_run))
        for k, v in run_coords.items():
            coords[k] = ("run", np.asarray(v))
    base = {
        "source": source,
        "method": method,
        "config": config,
        "stopgrad_version": _version(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    base.update(attrs or {})
    ds = xr.Dataset(variables, coords=coords, attrs={k: _flat_attr(v) for k, v in base.items()})
    validate_dataset(ds)
    return ds


def validate_dataset(ds: xr.Dataset, require: tuple[str, ...] = ()) -> None:
    """Raise DatasetError naming the first breach of the contract (missing attrs, dims, units, variables)."""
    for key in ("source", "method", "config", "stopgrad_version", "created_at"):
        if key not in ds.attrs:
            raise DatasetError(f"Dataset attribute {key!r} is missing")
    if ds.attrs["source"] not in SOURCES:
        raise DatasetError(f"Dataset attribute source = {ds.attrs['source']!r}: must be one of {SOURCES}")
    if "time" not in ds.coords:
        raise DatasetError("Dataset has no 'time' coordinate")
    units = ds["time"].attrs.get("units")
    if units not in TIME_UNITS:
        raise DatasetError(f"time coordinate units = {units!r}: must be one of {TIME_UNITS}")
    for name in require:
        if name not in ds:
            raise DatasetError(f"Dataset lacks the variable {name!r} (has: {', '.join(sorted(ds.data_vars))})")
    for name in ds.data_vars:
        dims = ds[name].dims
        if name in MODE_VARIABLES and dims[-2:] != ("time", "mode"):
            raise DatasetError(f"variable {name!r} has dims {dims}; must end with ('time', 'mode')")
        if name in SCALAR_VARIABLES and dims[-1:] != ("time",):
            raise DatasetError(f"variable {name!r} has dims {dims}; must end with ('time',)")


def _engine() -> str:
    """netCDF4 if installed, else h5netcdf (with h5py), else scipy's netCDF3 writer."""
    for engine, modules in (("netcdf4", ("netCDF4",)), ("h5netcdf", ("h5netcdf", "h5py"))):
        try:
            for module in modules:
                __import__(module)
            return engine
        except ImportError:
            continue
    return "scipy"  # netCDF3; no int64 or unicode variables, see write_netcdf


#: the mode of a new file before the umask (what ``open(path, "w")`` asks for)
_DEFAULT_FILE_MODE = 0o666


def _umask() -> int:
    """The process's umask (read by setting and restoring it; ``os`` has no plain getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; when the block succeeds, fsync it and rename it onto
    ``path`` (atomic on POSIX), so a reader never sees a half-written file. On error it is removed.

    The file gets the mode a plain ``open(path, "w")`` would give it (0666 less the umask), not the 0600
    of the temporary file, so colleagues sharing the folder can read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _DEFAULT_FILE_MODE & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    engine = _engine()
    out = ds
    if engine == "scipy":  # netCDF3 has neither int64 nor variable-length strings
        out = ds.copy()
        for name, var in list(out.variables.items()):
            if var.dtype == np.int64:
                out[name] = var.astype(np.int32)
    encoding = {}
    if engine != "scipy":  # HDF5: a Fletcher-32 checksum per chunk, so a flipped bit is an error on reading
        encoding = {name: {"fletcher32": True} for name, var in out.variables.items()
                    if var.ndim >= 1 and var.dtype.kind in "biuf"}
    with atomic_path(path) as tmp:
        out.to_netcdf(tmp, engine=engine, encoding=encoding)
    return path


def open_dataset(path: str | os.PathLike, require: tuple[str, ...] = ()) -> xr.Dataset:
    """Load a contract Dataset fully into memory; a missing, corrupt or off-contract file raises DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        with xr.open_dataset(path) as ds:
            ds = ds.load()
    except Exception as exc:  # the backends raise OSError, ValueError or their own types
        detail = " ".join(str(exc).split())[:200]  # one line, whatever the backend says
        raise DatasetError(f"{path}: not a readable netCDF file: truncated, corrupted (checksum) or another "
                           f"format ({type(exc).__name__}: {detail})") from None
    try:
        validate_dataset(ds, require)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    return ds

