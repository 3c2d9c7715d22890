"""Explicit initial conditions: :class:`InitialState`, stored in every result so that it can be replayed.

A simulation starts from a random draw (:func:`draw_initial_matrices`, from ``model.init``) or from
the per-mode values of ``Simulation.modes``, unless an :class:`InitialState` gives the state
explicitly. Any field left ``None`` keeps its default; a given field replaces it:

========== =================== =========================================================
engine     fields              shape (one for all runs, or with a leading run axis R)
========== =================== =========================================================
matrix,    ``W``, ``Wa``       (n2, n1) or (R, n2, n1): online and target weights
sampled    ``Wp``              (n2, n2) or (R, n2, n2): predictor
symmetrized ``F``, ``Wp``      (n2, n2) or (R, n2, n2): F = W X W^T and the predictor
modes      ``p``, ``s``,       a number, (k,) or (R, k), k = n2: predictor eigenvalue p_j,
           ``tau``             s_j = lambda_d w_j^2 and tau_j = w_a,j / w_j (BYOL only)
========== =================== =========================================================

Each field accepts a numpy array (or nested lists), or a path to a ``.npy`` file. A whole state comes
from a ``.npz`` (arrays named as the fields), from a result ``.nc`` or from a result Dataset: the
simulation engines store the state they started from as ``init_W``, ``init_Wp``, ``init_Wa``
(dims run, row, col / row2), ``init_F`` or ``init_p``, ``init_s``, ``init_tau`` (dims run, mode),
and :meth:`InitialState.from_dataset` reads them back, so ``Simulation(..., initial=result)`` replays
a run bitwise on the CPU.

Arrays are held by :class:`FrozenArray`, a read-only float64 array that hashes and compares by
value, so the frozen config dataclasses stay hashable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ._checks import ConfigError, check, check_finite

__all__ = ["FrozenArray", "InitialState", "STATE_FIELDS", "stored_name"]

Matrix = tuple[tuple[float, ...], ...]

#: per engine: the InitialState fields it reads, and the per-run shape of each (as a function of n1, n2)
STATE_FIELDS = {
    "matrix": {"W": lambda n1, n2: (n2, n1), "Wp": lambda n1, n2: (n2, n2), "Wa": lambda n1, n2: (n2, n1)},
    "sampled": {"W": lambda n1, n2: (n2, n1), "Wp": lambda n1, n2: (n2, n2), "Wa": lambda n1, n2: (n2, n1)},
    "symmetrized": {"F": lambda n1, n2: (n2, n2), "Wp": lambda n1, n2: (n2, n2)},
    "modes": {"p": lambda n1, n2: (n2,), "s": lambda n1, n2: (n2,), "tau": lambda n1, n2: (n2,)},
}
#: Dataset dims of each stored field after the run axis
STORED_DIMS = {"W": ("row", "col"), "Wa": ("row", "col"), "Wp": ("row", "row2"), "F": ("row", "row2"),
               "p": ("mode",), "s": ("mode",), "tau": ("mode",)}
PREFIX = "init_"


def stored_name(name: str) -> str:
    """The Dataset variable that stores initial-state field ``name`` (``W`` -> ``init_W``)."""
    return PREFIX + name


class FrozenArray:
    """A read-only float64 numpy array that hashes and compares by value (shape and bytes).

    ``.array`` is the (read-only) numpy array; ``np.asarray(frozen)`` gives it too.
    """

    __slots__ = ("array", "_hash")

    def __init__(self, value, key: str = "array"):
        try:
            arr = np.array(value, dtype=np.float64)  # a copy: later changes to the caller's array do not leak in
        except (TypeError, ValueError):
            raise ConfigError(key, value, "must be an array of numbers") from None
        check_finite(key, arr)
        arr.flags.writeable = False
        self.array = arr
        self._hash = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The wrapped array's shape."""
        return self.array.shape

    def digest(self) -> str:
        """sha256 of shape and bytes (names the array in a config string without its values)."""
        h = hashlib.sha256(repr(self.array.shape).encode())
        h.update(np.ascontiguousarray(self.array).tobytes())
        return h.hexdigest()

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)

    def __eq__(self, other) -> bool:
        if not isinstance(other, FrozenArray):
            return NotImplemented
        return self.array.shape == other.array.shape and bool(np.array_equal(self.array, other.array))

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self.digest())
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenArray(shape={self.array.shape}, sha256={self.digest()[:12]})"

    def __reduce__(self):  # pickles (dask ships configs to workers) as the plain array
        return (FrozenArray, (np.array(self.array),))


def _load_npy(path: str, key: str) -> np.ndarray:
    p = Path(path)
    check(key, path, p.suffix == ".npy", "a path here must name a .npy file (a whole state: Simulation.initial)")
    check(key, path, p.is_file(), "no such file")
    return np.load(p, allow_pickle=False)


@dataclass(frozen=True)
class InitialState:
    """Explicit initial state (see the module docstring for fields, shapes and files).

    Attributes:
        W: online weights W(0), (n2, n1) or (R, n2, n1).
        Wp: predictor W_p(0), (n2, n2) or (R, n2, n2) (matrix, sampled and symmetrized engines).
        Wa: target weights W_a(0), (n2, n1) or (R, n2, n1) (BYOL; default: as ``model.init.wa``,
            ``"copy"`` copying the given W).
        F: F(0) = W X W^T for the symmetrized engine, (n2, n2) or (R, n2, n2), symmetric.
        p: per-mode predictor eigenvalues p_j(0): a number, (k,) or (R, k).
        s: per-mode s_j(0) = lambda_d w_j(0)^2 > 0: a number, (k,) or (R, k).
        tau: per-mode EMA ratio tau_j(0) = w_a,j(0) / w_j(0) (BYOL): a number, (k,) or (R, k).
        source: where the state was read from (a file name), for the record.
    """

    W: FrozenArray | Matrix | str | None = None
    Wp: FrozenArray | Matrix | str | None = None
    Wa: FrozenArray | Matrix | str | None = None
    F: FrozenArray | Matrix | str | None = None
    p: FrozenArray | tuple[float, ...] | float | str | None = None
    s: FrozenArray | tuple[float, ...] | float | str | None = None
    tau: FrozenArray | tuple[float, ...] | float | str | None = None
    source: str = ""

    def __post_init__(self):
        for name in self.names():
            value = getattr(self, name)
            if value is None or isinstance(value, FrozenArray):
                continue
            if isinstance(value, (str, Path)):
                value = _load_npy(str(value), name)
            object.__setattr__(self, name, FrozenArray(value, key=name))
        if self.s is not None:
            check("s", "a value <= 0", bool(np.all(self.s.array > 0)), "must be > 0 (s = lambda_d w^2)")

    @staticmethod
    def names() -> tuple[str, ...]:
        """The state fields, in declaration order."""
        return tuple(f.name for f in fields(InitialState) if f.name != "source")

    def given(self) -> dict[str, np.ndarray]:
        """The fields that are set, as read-only numpy arrays."""
        return {k: getattr(self, k).array for k in self.names() if getattr(self, k) is not None}

    @classmethod
    def from_file(cls, path: str | Path) -> InitialState:
        """Read a state from ``.npz`` (arrays named W, Wp, Wa, F, p, s, tau, or init_W, ...) or from a
        result ``.nc`` written by ``stopgrad simulate``/``sweep`` (its ``init_*`` variables)."""
        p = Path(path)
        check("initial", str(path), p.is_file(), "no such file")
        if p.suffix == ".nc":
            from stopgrad.analysis import open_dataset

            with open_dataset(p) as ds:
                return cls.from_dataset(ds.load(), source=str(path))
        check("initial", str(path), p.suffix == ".npz",
              "must be a .npz or .nc file (a single field: a .npy path in its own key, e.g. initial.W)")
        with np.load(p, allow_pickle=False) as z:
            arrays = {k[len(PREFIX):] if k.startswith(PREFIX) else k: z[k] for k in z.files}
        unknown = [k for k in arrays if k not in cls.names()]
        check("initial", f"{path}: array {unknown[0]!r}" if unknown else str(path), not unknown,
              f"unknown array; allowed: {', '.join(cls.names())}")
        return cls(**arrays, source=str(path))

    @classmethod
    def from_dataset(cls, ds, source: str = "") -> InitialState:
        """The initial state stored in a result Dataset (``init_*`` variables, dims (run, ...))."""
        arrays = {k: ds[stored_name(k)].values for k in cls.names() if stored_name(k) in ds}
        check("initial", source or "a Dataset", bool(arrays),
              f"holds no initial state (variables {', '.join(map(stored_name, cls.names()))})")
        return cls(**arrays, source=source)

    def per_run(self, name: str, n_runs: int, shape: tuple[int, ...], rows: slice | None = None) -> np.ndarray | None:
        """Field ``name`` broadcast to (n_runs, *shape) float64 (a fresh array), or None if unset.

        A field of ``shape`` (or a scalar, for the per-mode fields) is shared by all runs; one of
        (n_runs, *shape) gives each run its own. ``rows`` keeps only those runs (a chunk of a sweep of
        n_runs runs); only they are copied."""
        value = getattr(self, name)
        if value is None:
            return None
        arr = value.array
        if arr.shape != (n_runs, *shape):
            arr = np.broadcast_to(arr, (n_runs, *shape))
        return (arr if rows is None else arr[rows]).copy()

    def leading_runs(self, engine: str, n1: int, n2: int) -> int | None:
        """The run count R of the fields given with a leading run axis, or None if all are shared."""
        shapes = STATE_FIELDS[engine]
        for name, arr in self.given().items():
            if name in shapes and arr.ndim == len(shapes[name](n1, n2)) + 1:
                return int(arr.shape[0])
        return None

    def validate(self, engine: str, n1: int, n2: int, n_runs: int) -> None:
        """Check that the given fields belong to ``engine`` and have a shape it accepts."""
        allowed = STATE_FIELDS[engine]
        for name, arr in self.given().items():
            check(f"initial.{name}", f"shape {arr.shape}", name in allowed,
                  f"is not read by engine = '{engine}'; it reads: {', '.join(allowed)}")
            shape = allowed[name](n1, n2)
            ok = arr.shape in (shape, (n_runs, *shape)) or (engine == "modes" and arr.ndim == 0)
            want = f"{shape} or {(n_runs, *shape)}" + (" or a number" if engine == "modes" else "")
            check(f"initial.{name}", f"shape {arr.shape}", ok, f"must have shape {want}")

    def describe(self) -> dict:
        """A JSON-able summary (shapes and digests; the values themselves are stored in the Dataset)."""
        out = {k: {"shape": list(v.shape), "sha256": getattr(self, k).digest()} for k, v in self.given().items()}
        if self.source:
            out["source"] = self.source
        return out
