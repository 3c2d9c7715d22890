"""Hypothesis strategies for property-based tests of SSL losses, predictor rules, metrics, dynamics,
configs and contract Datasets.

Every strategy here draws *valid* objects of the documented kind (a PSD matrix is symmetric PSD to the
last bit, an orthogonal matrix is orthogonal to round-off, a config document builds), except the
``invalid_*`` strategies, which draw a document with exactly one known mistake and the key the error
must name. Numbers are float64 numpy arrays unless a docstring says otherwise; random structure is drawn
from a seed (``numpy.random.default_rng``), so hypothesis shrinks towards small sizes and simple kinds.

Examples::

    from hypothesis import given
    from stopgrad.testing import strategies as sgst

    @given(sgst.psd_matrices(max_n=6), sgst.orthogonal_matrices(n=6))
    def test_...(F, Q): ...

Strategies: :func:`seeds`, :func:`scales`, :func:`embeddings`, :func:`embedding_pairs`,
:func:`psd_matrices`, :func:`orthogonal_matrices`, :func:`spiked_covariances`, :func:`rule_specs`,
:func:`linear_models`, :func:`model_tables`, :func:`simulation_documents`,
:func:`invalid_simulation_documents`, :func:`train_documents`, :func:`invalid_train_documents`,
:func:`toml_documents`, :func:`contract_datasets`.
"""

from __future__ import annotations

import math

import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "stopgrad.testing needs the 'hypothesis' package (pip install 'stopgrad[testing]')"
    ) from exc

from .toml import to_toml

__all__ = [
    "EMBEDDING_KINDS",
    "MIN_ROW_NORM",
    "contract_datasets",
    "embedding_pairs",
    "embeddings",
    "invalid_simulation_documents",
    "invalid_train_documents",
    "linear_models",
    "model_tables",
    "orthogonal_matrices",
    "psd_matrices",
    "rule_specs",
    "scales",
    "seeds",
    "simulation_documents",
    "spiked_covariances",
    "toml_documents",
    "train_documents",
]

#: the kinds of embedding batch :func:`embeddings` draws (see its docstring).
EMBEDDING_KINDS = ("gaussian", "anisotropic", "near_collapsed", "collapsed", "low_rank", "duplicated",
                   "one_hot", "arbitrary")
#: rows of a ``nonzero`` batch have at least this Euclidean norm: far above the eps = 1e-8 with which the
#: losses guard a division by a norm, so scale invariance holds exactly where it is claimed.
MIN_ROW_NORM = 1e-3
#: the spread (largest / smallest) of a drawn spectrum or scale set, so that round-off bounds stay finite.
MAX_CONDITION = 1e6
#: the near-collapsed batches are a common vector plus noise of this relative size.
NEAR_COLLAPSE = 1e-6


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``numpy.random.default_rng`` / ``torch.Generator`` (0 .. 2^32 - 1)."""
    return st.integers(0, 2**32 - 1)


def scales(min_value: float = 1e-3, max_value: float = 1e3) -> st.SearchStrategy[float]:
    """Positive scale factors, log-uniform in [min_value, max_value] (both > 0), plus the ends and 1."""
    if not 0 < min_value <= max_value:
        raise ValueError(f"need 0 < min_value <= max_value; got {min_value}, {max_value}")
    lo, hi = math.log10(min_value), math.log10(max_value)
    logu = st.floats(lo, hi, allow_nan=False).map(lambda e: float(min(max(10.0**e, min_value), max_value)))
    fixed = [v for v in (1.0, min_value, max_value) if min_value <= v <= max_value]
    return st.one_of(st.sampled_from(fixed), logu)


def _fix_small_rows(z: np.ndarray) -> np.ndarray:
    """Replace rows shorter than MIN_ROW_NORM by a unit-ish vector (keeps the batch deterministic)."""
    norms = np.linalg.norm(z, axis=1)
    small = norms < MIN_ROW_NORM
    if small.any():
        z = z.copy()
        z[small] = 1.0 / math.sqrt(z.shape[1])
    return z


@st.composite
def embeddings(draw, n=None, d=None, *, min_n: int = 2, max_n: int = 16, min_d: int = 1, max_d: int = 8,
               kinds=EMBEDDING_KINDS, nonzero: bool = True, scale=None) -> np.ndarray:
    """A float64 batch of embeddings, shape (n, d).

    kinds (a subset of EMBEDDING_KINDS): "gaussian" i.i.d. N(0, 1); "anisotropic" with per-channel
    scales spread over up to MAX_CONDITION; "near_collapsed" one common vector plus NEAR_COLLAPSE noise;
    "collapsed" every row a positive multiple of one vector; "low_rank" rank r < d; "duplicated" rows
    repeated; "one_hot" signed axis directions; "arbitrary" entries drawn by hypothesis in [-100, 100].
    The batch is multiplied by ``scale`` (a float, a strategy, default :func:`scales`). With
    ``nonzero`` every row has norm >= MIN_ROW_NORM (degenerate rows are replaced), so cosines are
    defined; without it a row may be exactly zero.
    """
    n = draw(st.integers(min_n, max_n)) if n is None else n
    d = draw(st.integers(min_d, max_d)) if d is None else d
    kind = draw(st.sampled_from(tuple(kinds)))
    rng = np.random.default_rng(draw(seeds()))
    if kind == "gaussian":
        z = rng.standard_normal((n, d))
    elif kind == "anisotropic":
        z = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(0, math.log10(MAX_CONDITION), d)
    elif kind == "near_collapsed":
        z = rng.standard_normal(d) + NEAR_COLLAPSE * rng.standard_normal((n, d))
    elif kind == "collapsed":
        z = rng.uniform(0.5, 2.0, (n, 1)) * rng.standard_normal(d)
    elif kind == "low_rank":
        r = int(rng.integers(1, max(d, 2)))
        z = rng.standard_normal((n, r)) @ rng.standard_normal((r, d))
    elif kind == "duplicated":
        base = rng.standard_normal((max(1, n // 2), d))
        z = base[rng.integers(0, base.shape[0], n)]
    elif kind == "one_hot":
        z = np.zeros((n, d))
        z[np.arange(n), rng.integers(0, d, n)] = rng.choice([-1.0, 1.0], n)
    elif kind == "arbitrary":
        elements = st.floats(-100, 100, allow_nan=False, allow_subnormal=False)
        z = draw(hnp.arrays(np.float64, (n, d), elements=elements))
    else:
        raise ValueError(f"kind = {kind!r}: must be one of {EMBEDDING_KINDS}")
    c = draw(scales()) if scale is None else (draw(scale) if isinstance(scale, st.SearchStrategy) else scale)
    z = np.ascontiguousarray(z * c, dtype=np.float64)
    return _fix_small_rows(z) if nonzero else z


@st.composite
def embedding_pairs(draw, n=None, d=None, *, relation=None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Two views (z1, z2) of the same batch, each (n, d) float64, as :func:`embeddings` draws them.

    relation: "independent", "noisy" (z2 = z1 + noise), "identical", "rescaled" (z2 = c_i z1 per row,
    c_i > 0) or "antipodal" (z2 = -z1); drawn when None. kwargs go to :func:`embeddings`.
    """
    z1 = draw(embeddings(n, d, **kwargs))
    n, d = z1.shape
    rel = draw(st.sampled_from(("independent", "noisy", "identical", "rescaled", "antipodal"))) \
        if relation is None else relation
    rng = np.random.default_rng(draw(seeds()))
    if rel == "independent":
        z2 = draw(embeddings(n, d, **kwargs))
    elif rel == "noisy":
        z2 = z1 + 0.1 * np.linalg.norm(z1, axis=1, keepdims=True) * rng.standard_normal((n, d))
        z2 = _fix_small_rows(z2)
    elif rel == "identical":
        z2 = z1.copy()
    elif rel == "rescaled":
        z2 = z1 * rng.uniform(0.1, 10.0, (n, 1))
    elif rel == "antipodal":
        z2 = -z1
    else:
        raise ValueError(f"relation = {relation!r} unknown")
    return z1, np.ascontiguousarray(z2)


@st.composite
def orthogonal_matrices(draw, n=None, *, min_n: int = 1, max_n: int = 8,
                        kinds=("haar", "permutation", "reflection", "identity")) -> np.ndarray:
    """An (n, n) float64 orthogonal matrix: "haar" (QR of a Gaussian, signs fixed: Haar distributed),
    "permutation" (a signed permutation, exact), "reflection" (I - 2 v v^T) or "identity"."""
    n = draw(st.integers(min_n, max_n)) if n is None else n
    kind = draw(st.sampled_from(tuple(kinds)))
    rng = np.random.default_rng(draw(seeds()))
    if kind == "haar":
        Q, R = np.linalg.qr(rng.standard_normal((n, n)))
        return Q * np.sign(np.where(np.diag(R) == 0, 1.0, np.diag(R)))
    if kind == "permutation":
        return np.eye(n)[rng.permutation(n)] * rng.choice([-1.0, 1.0], n)
    if kind == "reflection":
        v = rng.standard_normal(n)
        v /= np.linalg.norm(v)
        return np.eye(n) - 2.0 * np.outer(v, v)
    return np.eye(n)


def _spectrum(draw, rng, k: int) -> np.ndarray:
    """k positive eigenvalues, descending, of one of several shapes, spread <= MAX_CONDITION."""
    shape = draw(st.sampled_from(("uniform", "log", "repeated", "equal")))
    if shape == "uniform":
        ev = rng.uniform(1.0 / MAX_CONDITION, 1.0, k)
    elif shape == "log":
        ev = 10.0 ** rng.uniform(-math.log10(MAX_CONDITION), 0.0, k)
    elif shape == "repeated":  # degenerate eigenvalues: eigenvectors are not unique
        ev = rng.choice(rng.uniform(1e-3, 1.0, max(1, k // 2)), k)
    else:
        ev = np.ones(k)
    return np.sort(ev)[::-1]


@st.composite
def psd_matrices(draw, n=None, *, min_n: int = 1, max_n: int = 8, min_rank: int = 0, max_rank=None,
                 scale=None, return_eig: bool = False):
    """A symmetric positive semi-definite (n, n) float64 matrix F = U diag(lambda) U^T.

    The rank (number of non-zero eigenvalues) is in [min_rank, max_rank or n]; rank 0 is the zero
    matrix. The non-zero eigenvalues are spread by at most MAX_CONDITION and multiplied by ``scale``
    (default :func:`scales`); repeated eigenvalues occur. F is symmetrised exactly ((F + F^T) / 2).
    ``return_eig=True`` returns (F, eigenvalues descending (n,), U).
    """
    n = draw(st.integers(min_n, max_n)) if n is None else n
    hi = n if max_rank is None else min(max_rank, n)
    rank = draw(st.integers(min(min_rank, hi), hi))
    rng = np.random.default_rng(draw(seeds()))
    c = draw(scales()) if scale is None else scale
    U = draw(orthogonal_matrices(n=n, kinds=("haar", "permutation")))
    lam = np.zeros(n)
    lam[:rank] = c * _spectrum(draw, rng, rank)
    F = (U * lam) @ U.T
    F = 0.5 * (F + F.T)
    return (F, lam, U) if return_eig else F


@st.composite
def spiked_covariances(draw, n=None, *, min_n: int = 2, max_n: int = 8, max_spikes: int = 3,
                       return_spikes: bool = False):
    """A spiked covariance sigma^2 I + sum_k theta_k v_k v_k^T (orthonormal v_k, theta_k > 0), (n, n).

    The classic model of a signal subspace in isotropic noise; ``return_spikes=True`` returns
    (C, theta (k,), V (n, k), sigma^2)."""
    n = draw(st.integers(min_n, max_n)) if n is None else n
    k = draw(st.integers(0, min(max_spikes, n)))
    noise = draw(scales(1e-3, 10.0))
    Q = draw(orthogonal_matrices(n=n, kinds=("haar",)))
    V = Q[:, :k]
    theta = np.sort(np.asarray(draw(st.lists(scales(1e-2, 1e2), min_size=k, max_size=k)), float))[::-1]
    C = noise * np.eye(n) + (V * theta) @ V.T
    C = 0.5 * (C + C.T)
    return (C, theta, V, noise) if return_spikes else C


# --- configs --------------------------------------------------------------------------------------
def _unit(lo=0.0, hi=1.0):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def rule_specs(draw) -> dict:
    """A ``[model.rule]`` / ``[predictor.rule]`` table: DirectPred, DirectCopy or DirectSet(power)."""
    name = draw(st.sampled_from(("directpred", "directcopy", "directset")))
    table = {"name": name, "eps": draw(_unit(0.0, 0.5))}
    if name == "directset":
        table["power"] = draw(_unit(0.1, 2.0))
    if draw(st.booleans()):
        table["normalize"] = draw(st.booleans())
    return table


def _matrix_list(draw, n: int) -> list[list[float]]:
    F = draw(psd_matrices(n=n, scale=draw(scales(1e-2, 1e2))))
    return F.tolist()


@st.composite
def model_tables(draw, *, max_n1: int = 6, methods=("byol", "simsiam"),
                 predictors=("learned", "symmetric", "identity", "rule"),
                 data_kinds=("isotropic", "additive", "general"), wa=("zero", "copy", "random"),
                 min_signal: float = 0.0) -> dict:
    """A valid ``[model]`` table (with ``[model.data]``, ``[model.init]`` and ``[model.rule]`` sub-tables)
    of the linear model, as the TOML loader reads it: ``stopgrad.config.build(LinearModel, table)``
    accepts it (see :func:`linear_models`). ``min_signal`` bounds the additive model's signal entries
    from below (the per-mode engine needs them > 0)."""
    n1 = draw(st.integers(1, max_n1))
    n2 = draw(st.integers(1, n1))
    method = draw(st.sampled_from(tuple(methods)))
    table: dict = {"n1": n1, "n2": n2, "method": method, "alpha_p": draw(_unit(0.1, 4.0)), "eta": draw(_unit(0.0, 0.5))}
    if method == "byol":
        table["beta"] = draw(_unit(0.0, 2.0))
    if draw(st.booleans()):
        table["eta_p"] = draw(_unit(0.0, 0.5))
    if method == "simsiam" and draw(st.booleans()):
        table["stop_grad"] = draw(st.booleans())
    predictor = draw(st.sampled_from(tuple(predictors)))
    table["predictor"] = predictor
    if predictor == "rule":
        table["rule"] = draw(rule_specs())
    kind = draw(st.sampled_from(tuple(data_kinds)))
    data: dict = {"kind": kind}
    if kind == "isotropic":
        data["sigma2"] = draw(_unit(0.0, 2.0))
    elif kind == "additive":
        data["signal"] = draw(st.lists(_unit(min_signal, 4.0), min_size=n1, max_size=n1))
        data["noise"] = draw(st.lists(_unit(0.0, 4.0), min_size=n1, max_size=n1))
    else:
        data["X"] = _matrix_list(draw, n1)
        data["X_prime"] = _matrix_list(draw, n1)
    table["data"] = data
    table["init"] = {
        "w_scale": draw(_unit(0.1, 3.0)),
        "wp": draw(st.sampled_from(("random", "symmetric", "identity", "zero"))),
        "wp_scale": draw(_unit(0.0, 2.0)),
        "wa": draw(st.sampled_from(tuple(wa))),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
    return table


def linear_models(**kwargs):
    """Valid :class:`stopgrad.dynamics.LinearModel` objects, built from :func:`model_tables` (kwargs)
    by the TOML loader, so a config file and these objects are validated identically."""
    from stopgrad.config import build
    from stopgrad.dynamics import LinearModel

    return model_tables(**kwargs).map(lambda table: build(LinearModel, table))


#: parameters each engine can sweep in a [grid] (a subset of what it allows, with values that are
#: valid for every model :func:`model_tables` draws).
_GRID = {"matrix": ("eta", "alpha_p", "seed", "w_scale"), "modes": ("eta", "alpha_p", "p0", "s0"),
         "symmetrized": ("eta", "alpha_p", "tau", "seed"), "sampled": ("eta", "alpha_p", "seed")}


def _grid_values(draw, key: str) -> list:
    size = draw(st.integers(1, 3))
    if key == "seed":
        return draw(st.lists(st.integers(0, 2**31 - 1), min_size=size, max_size=size, unique=True))
    lo, hi = {"eta": (0.0, 0.5), "alpha_p": (0.1, 4.0), "w_scale": (0.1, 3.0), "p0": (-1.0, 2.0),
              "s0": (0.01, 2.0), "tau": (0.0, 1.0)}[key]
    return draw(st.lists(_unit(lo, hi), min_size=size, max_size=size))


@st.composite
def simulation_documents(draw, *, engines=("matrix", "modes", "symmetrized", "sampled"), max_n1: int = 6,
                         grid: bool | None = None) -> dict:
    """A valid ``stopgrad simulate`` / ``sweep`` config as a parsed TOML document (nested dicts):
    ``stopgrad.cmd_dynamics.simulation_from_dict`` accepts it. With ``grid`` True a ``[grid]`` table is
    always present (a sweep), False never, None either."""
    engine = draw(st.sampled_from(tuple(engines)))
    kw: dict = {"max_n1": max_n1}
    if engine == "symmetrized":
        kw.update(data_kinds=("isotropic",))
    if engine == "modes":
        kw.update(data_kinds=("isotropic", "additive"), wa=("zero", "copy"), min_signal=0.01)
    model = draw(model_tables(**kw))
    doc: dict = {"model": model}
    sim: dict = {"engine": engine, "t_end": draw(_unit(0.01, 100.0)), "n_save": draw(st.integers(2, 50))}
    if draw(st.booleans()):
        sim["collapse_tol"] = draw(st.floats(1e-12, 0.5))
    if engine == "symmetrized":
        sim["tau"] = draw(_unit(0.0, 1.0))
    doc["simulate"] = sim
    if draw(st.booleans()):
        method = draw(st.sampled_from(("dop853", "dopri5", "rk4")))
        doc["solver"] = {"method": method, "rtol": draw(st.floats(1e-12, 1e-3)), "atol": draw(st.floats(0, 1e-6, exclude_min=True))}
        if method == "rk4":
            doc["solver"]["dt"] = draw(_unit(1e-3, 0.1))
    if engine == "modes":
        n2 = model["n2"]
        per_mode = draw(st.booleans())
        parabola = draw(st.booleans())
        p0s = _unit(-1.0, 2.0).filter(lambda v: abs(v) >= 1e-3) if parabola else _unit(-1.0, 2.0)  # s0 = p0^2 / alpha_p
        p0 = draw(st.lists(p0s, min_size=n2, max_size=n2)) if per_mode else draw(p0s)
        doc["modes"] = {"p0": p0, "s0": draw(_unit(0.01, 2.0)), "on_parabola": parabola}
    if engine == "sampled":
        gradient = draw(st.sampled_from(("autograd", "moments", "wishart", "expected")))
        batch = draw(st.integers(2 * model["n1"] if gradient == "wishart" else 1, 512))
        doc["sampled"] = {"lr": draw(_unit(1e-4, 0.1)), "batch": batch, "gradient": gradient}
    with_grid = draw(st.booleans()) if grid is None else grid
    if with_grid:
        keys = draw(st.lists(st.sampled_from(_GRID[engine]), min_size=1, max_size=2, unique=True))
        doc["grid"] = {k: _grid_values(draw, k) for k in keys}
        if doc.get("modes", {}).get("on_parabola") and "p0" in doc["grid"]:
            doc["grid"]["p0"] = [v if abs(v) >= 1e-3 else 0.5 for v in doc["grid"]["p0"]]
    return doc


_NAN = float("nan")


@st.composite
def invalid_simulation_documents(draw, **kwargs) -> tuple[dict, str]:
    """(document, key): a :func:`simulation_documents` document with exactly one mistake, and the key
    path the ConfigError must name (``err.key == key``). Mistakes: unknown table or key, wrong type,
    NaN, a value out of range, an unknown choice, n2 > n1, an unsweepable or empty grid entry, and for the
    per-mode engine a mode without signal or p0 = 0 on the parabola."""
    import copy

    doc = copy.deepcopy(draw(simulation_documents(**kwargs)))
    model = doc["model"]
    mistakes = {
        "unknown table": lambda: (doc.__setitem__("modle", {"n1": 2}), "modle"),
        "unknown key": lambda: (model.__setitem__("n3", 2), "model.n3"),
        "wrong type": lambda: (model.__setitem__("n1", "eight"), "model.n1"),
        "not finite": lambda: (model.__setitem__("alpha_p", draw(st.sampled_from((_NAN, math.inf)))), "model.alpha_p"),
        "negative eta": lambda: (model.__setitem__("eta", -draw(_unit(1e-6, 1.0))), "model.eta"),
        "bad method": lambda: (model.__setitem__("method", draw(st.sampled_from(("barlow", "BYOL ", "")))),
                               "model.method"),
        "n2 > n1": lambda: (model.__setitem__("n2", model["n1"] + draw(st.integers(1, 4))), "model.n2"),
        "negative sigma2": lambda: (model["data"].update(kind="isotropic", sigma2=-1.0), "model.data.sigma2"),
        "negative seed": lambda: (model["init"].__setitem__("seed", -draw(st.integers(1, 10))), "model.init.seed"),
        "t_end": lambda: (doc["simulate"].__setitem__("t_end", -draw(_unit(0.0, 10.0))), "simulate.t_end"),
        "engine": lambda: (doc["simulate"].__setitem__("engine", "euler"), "simulate.engine"),
        "n_save": lambda: (doc["simulate"].__setitem__("n_save", 1), "simulate.n_save"),
        "unsweepable": lambda: (doc.setdefault("grid", {}).__setitem__("n1", [1, 2]), "grid.n1"),
        "empty grid": lambda: (doc.setdefault("grid", {}).__setitem__("eta", []), "grid.eta"),
    }
    if doc["simulate"]["engine"] == "modes":  # these keys are caught by the model's table of modes
        mistakes.pop("negative sigma2")
        mistakes["mode without signal"] = lambda: (
            model["data"].update(kind="additive", signal=[0.0] * model["n1"], noise=[0.5] * model["n1"]), "model.data")
        mistakes["p0 = 0 on the parabola"] = lambda: (doc["modes"].update(p0=0.0, on_parabola=True), "modes.p0")
    name = draw(st.sampled_from(sorted(mistakes)))
    _, key = mistakes[name]()
    return doc, key


@st.composite
def train_documents(draw, *, methods=("simsiam", "byol", "simsiam-gsg", "byol-gsg", "simclr", "mocov2")) -> dict:
    """A valid ``stopgrad train`` config as a parsed TOML document: ``stopgrad.cmd_train`` builds a
    ``TrainConfig`` from it. Small nets (convnet) and the synthetic data set, so a test could even run it."""
    name = draw(st.sampled_from(tuple(methods)))
    method: dict = {"name": name}
    predictive = name in ("simsiam", "byol", "simsiam-gsg", "byol-gsg")
    if name in ("simclr", "mocov2"):
        method["temperature"] = draw(_unit(0.01, 2.0))
    if name == "mocov2":
        method["queue_size"] = draw(st.integers(1, 8192))
        method["symmetric"] = draw(st.booleans())
    if name in ("byol", "byol-gsg", "mocov2"):
        method["momentum"] = draw(_unit(0.0, 1.0))
    if name == "byol" and draw(st.booleans()):
        method["ema"] = False
    if name in ("simsiam", "simsiam-gsg") or method.get("ema") is False:
        method["stop_gradient"] = draw(st.booleans())
    if predictive:
        kind = draw(st.sampled_from(("mlp", "linear", "symmetric", "none")))
    else:
        kind = "none"
    predictor: dict = {"kind": kind, "hidden_dim": draw(st.integers(1, 64))}
    if kind in ("linear", "symmetric") and draw(st.booleans()):
        predictor["rule"] = draw(rule_specs())
        predictor["rho"] = draw(_unit(0.0, 0.99))
    batch = draw(st.integers(2, 64))
    splits = draw(st.sampled_from([s for s in (1, 2, 4) if batch % s == 0 and batch // s >= 2]))
    scale = draw(st.tuples(_unit(0.05, 1.0), _unit(0.05, 1.0)).map(sorted))
    optim_name = draw(st.sampled_from(("sgd", "lars")))
    doc = {
        "method": method,
        "encoder": {"arch": "convnet", "width": draw(st.integers(1, 16))},
        "projector": {"layers": draw(st.integers(1, 3)), "hidden_dim": draw(st.integers(1, 64)),
                      "out_dim": draw(st.integers(1, 64))},
        "predictor": predictor,
        "data": {"name": "synthetic", "synthetic_size": draw(st.integers(2, 256)),
                 "root": draw(st.text(max_size=8))},
        "augment": {"crop_scale": scale, "flip_p": draw(_unit()), "jitter_p": draw(_unit()),
                    "hue": draw(_unit(0.0, 0.5))},
        "optim": {"name": optim_name, "lr": draw(_unit(1e-4, 1.0)), "weight_decay": draw(_unit(0.0, 1e-2)),
                  "schedule": draw(st.sampled_from(("cosine", "constant")))},
        "train": {"epochs": draw(st.integers(1, 5)), "batch_size": batch, "bn_splits": splits,
                  "seed": draw(st.integers(0, 2**31 - 1)), "precision": "fp32"},
        "probe": {"every": draw(st.integers(0, 10))},
        "eval": {"knn_k": draw(st.integers(1, 50)), "knn_temperature": draw(_unit(0.01, 1.0))},
    }
    return doc


@st.composite
def invalid_train_documents(draw, **kwargs) -> tuple[dict, str]:
    """(document, key): a :func:`train_documents` document with exactly one mistake, and the key path
    the ConfigError must name."""
    import copy

    doc = copy.deepcopy(draw(train_documents(**kwargs)))
    mistakes = {
        "unknown table": lambda: (doc.__setitem__("optimizer", {"lr": 0.1}), "optimizer"),
        "unknown key": lambda: (doc["optim"].__setitem__("learning_rate", 0.1), "optim.learning_rate"),
        "lr": lambda: (doc["optim"].__setitem__("lr", -draw(_unit(0.0, 1.0))), "optim.lr"),
        "method": lambda: (doc["method"].__setitem__("name", draw(st.sampled_from(("barlow", "SimSiam", "")))),
                           "method.name"),
        "batch": lambda: (doc["train"].update(batch_size=1, bn_splits=1), "train.batch_size"),
        "flip_p": lambda: (doc["augment"].__setitem__("flip_p", 1.0 + draw(_unit(1e-6, 1.0))), "augment.flip_p"),
        "out_dim": lambda: (doc["projector"].__setitem__("out_dim", 0), "projector.out_dim"),
        "epochs type": lambda: (doc["train"].__setitem__("epochs", "ten"), "train.epochs"),
        "knn_k": lambda: (doc["eval"].__setitem__("knn_k", 0), "eval.knn_k"),
        "lr nan": lambda: (doc["optim"].__setitem__("lr", _NAN), "optim.lr"),
        "crop order": lambda: (doc["augment"].__setitem__("crop_scale", [0.9, 0.2]), "augment.crop_scale"),
    }
    name = draw(st.sampled_from(sorted(mistakes)))
    _, key = mistakes[name]()
    return doc, key


def toml_documents(documents=None) -> st.SearchStrategy[tuple[str, dict]]:
    """(TOML text, document) pairs: ``documents`` (default: simulation and train documents) written with
    :func:`stopgrad.testing.to_toml`; ``tomllib.loads(text) == document``."""
    docs = st.one_of(simulation_documents(), train_documents()) if documents is None else documents
    return docs.map(lambda doc: (to_toml(doc), doc))


# --- contract Datasets ----------------------------------------------------------------------------
_ATTR_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_ATTR_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(
    lambda k: k not in ("source", "method", "config", "stopgrad_version", "created_at", "units",
                                                             "coordinates"))


@st.composite
def contract_datasets(draw, *, sources=("theory", "sampled", "measured"), max_runs: int = 3, max_times: int = 6,
                      max_modes: int = 4, allow_nan: bool = True):
    """A contract Dataset from :func:`stopgrad.analysis.build_dataset`: a random subset of the mode and
    scalar variables (at least one), an optional ``run`` dim with swept coordinates, float64 values
    (NaN and +-inf included when ``allow_nan``), and extra attributes (strings, integers, floats, lists
    of numbers with at least two entries)."""
    from stopgrad.analysis import MODE_VARIABLES, SCALAR_VARIABLES, build_dataset

    names = draw(st.lists(st.sampled_from(sorted(MODE_VARIABLES) + sorted(SCALAR_VARIABLES)), min_size=1,
                          max_size=5, unique=True))
    n_t = draw(st.integers(1, max_times))
    n_m = draw(st.integers(1, max_modes))
    runs = draw(st.integers(1, max_runs)) if draw(st.booleans()) else None
    lead = (runs,) if runs else ()
    elements = st.floats(allow_nan=allow_nan, allow_infinity=allow_nan, width=64)
    data = {}
    for name in names:
        shape = lead + (n_t, n_m) if name in MODE_VARIABLES else lead + (n_t,)
        data[name] = draw(hnp.arrays(np.float64, shape, elements=elements))
    time = np.cumsum(draw(hnp.arrays(np.float64, n_t, elements=st.floats(0.0, 10.0))))
    run_coords = None
    if runs:
        run_coords = {k: draw(hnp.arrays(np.float64, runs, elements=st.floats(0.0, 1.0)))
                      for k in draw(st.lists(st.sampled_from(("eta", "alpha_p", "beta")), max_size=2, unique=True))}
    attr_values = st.one_of(_ATTR_TEXT, st.integers(-(2**62), 2**62), st.floats(allow_nan=False),
                            st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=2, max_size=4))
    attrs = draw(st.dictionaries(_ATTR_NAME, attr_values, max_size=4))
    return build_dataset(data, time=time, time_units=draw(st.sampled_from(("flow", "step"))),
                         source=draw(st.sampled_from(tuple(sources))), method=draw(st.sampled_from(("byol", "simsiam"))),
                         config=to_toml({"note": draw(_ATTR_TEXT)}), run_coords=run_coords, attrs=attrs)
