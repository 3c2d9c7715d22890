"""Theory against measurement: put two contract Datasets on one time axis and score their agreement.

``compare(predicted, measured)`` takes any two single-run contract Datasets (theory, sampled or
measured, in any pairing) and returns a comparison Dataset (``source = "comparison"``):

* **One time axis.** A Dataset whose ``time`` is in optimizer steps is mapped to flow time through the
  unit mapping (:func:`stopgrad.analysis.steps_to_flow_time`: the recorded ``lr`` summed over the steps,
  divided by 1 - SGD momentum); a flow-time Dataset is used as is. The measured times inside the
  predicted run's span are the common axis, and the predicted trajectory is interpolated onto them
  (linearly in time, so the predicted run should be saved densely). Measured times outside that span
  are dropped (their count is in ``attrs["measured_times_dropped"]``).
* **Mode pairing** (``order``). A measured spectrum, the matrix flow's and sampled SGD's are eigenvalues
  of F sorted descending, so mode j is the j-th largest; the per-mode engine's mode j is one fixed
  direction, and its modes may cross. When the two kinds meet, both are compared by rank (each sorted
  descending at each time, p and alignment following s); ``attrs["mode_order"]`` says which was used.
* **Refusals.** Mismatched methods, mode counts or flow-unit hyperparameters (``eta``, ``eta_p``,
  ``alpha_p``, ``beta``, ``sigma2``; relative tolerance ``hyper_rtol``), a step-time Dataset without a
  recorded ``lr``, a sweep with several runs: each raises one :class:`DatasetError` line naming what
  differs and both values. ``allow_mismatch`` names the differences to accept on purpose; they are
  recorded in the attributes.
* **Trajectory errors** (time, mode): ``s_abs_error = |s_m - s_p|``, ``s_rel_error = |S_m - S_p| / S_p``
  and ``s_log_error = |log S_m - log S_p|`` with S = max(s, f_s) and the floor
  ``f_s = floor * max_j s_p,j(t_0)`` (below it a mode counts as collapsed, so two collapsed modes agree
  instead of comparing round-off); ``p_abs_error``, ``p_rel_error`` likewise with
  ``f_p = floor * max |p_p|`` over the common window. ``spearman_s`` (time): the Spearman rank correlation
  of the two spectra over the modes at each time. When both Datasets sort ``s`` descending at every time
  (matrix flow, measured probes) the ranks agree by construction and it is 1 up to ties; it is
  informative where a mode index follows one fixed direction (the per-mode engine).
* **Theorem 1** (theory.md §2.1, §3.2): the invariant I_j = alpha_p s_j - p_j^2 decays as
  e^{-2 eta t}. ``parabola_distance`` (time, mode), for the measured Dataset, is
  ``|I_j(t) - e^{-2 eta (t - t_0)} I_j(t_0)| / (alpha_p s_j(t) + p_j(t)^2)``, with each Dataset's own
  flow-unit alpha_p and eta and t_0 the first common time (so c_j = I_j(t_0) e^{2 eta t_0}): 0 on the
  curve, at most 1 + |c_j| e^{-2 eta t} / (alpha_p s_j + p_j^2), which grows without bound where a mode
  collapses off the curve (the curve's projection on the eigenbasis holds once W_p and F are aligned;
  NaN where the denominator is 0 or p is unknown).
  ``parabola_distance_predicted`` is the same for the predicted Dataset. ``s`` is used as recorded:
  the parabola is exact for F = W X W^T with X = I; a measured F-hat of augmented views,
  W (X + X') W^T, carries a factor (1 + sigma^2), and a per-mode run with lambda_d != 1 a factor
  lambda_d, which move points off it.
* **Theorem 3** (§2.4): ``alignment_measured`` (time, mode) and ``commutator_measured`` (time) on the
  common axis, ``alignment_cross_time`` (mode): the first common time with alignment > align_threshold,
  and ``commutator_cross_time``: the first with commutator <= commutator_fraction x its value at t_0
  (a commuting start crosses at t_0); NaN if never. The ``*_predicted`` twins score the predicted run.
* **Collapse.** ``collapse_predicted``, ``collapse_measured`` (mode, int8): 1 if the mode dies, 0 if it
  survives, -1 if undecided (non-finite s). A mode dies when its s at the Dataset's own last time is
  below ``collapse_tol`` times the largest s at its own first time (the rule of
  ``stopgrad.dynamics.collapse_verdicts``, whose default tolerance is 1e-6); a Dataset that carries a
  per-mode verdict variable ``alive`` (mode; 1 alive, 0 dead) is read instead. ``confusion``
  (predicted, measured) counts the decided modes, coords ("survives", "dies");
  ``collapse_agreement`` is the fraction on its diagonal.

The output keeps both trajectories on the common axis (``s_predicted``, ``s_measured``, ``p_...``; a
``step`` and ``epoch`` coordinate when the measured run has them) so figures can draw them from the
comparison alone. Attributes: ``predicted_*`` and ``measured_*`` (source, method, config, engine, time
units, each flow-unit hyperparameter), ``config`` (compare's own parameters as JSON), the thresholds,
``mode_order``, ``allow_mismatch``, ``differences_allowed`` and ``notes`` (approximations of the unit
mapping). :func:`format_comparison` prints one score per statement.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable

import numpy as np
import xarray as xr
from scipy import stats

from .schema import DatasetError, _flat_attr, _version, validate_dataset
from .units import OptimizerUnits, steps_to_flow_time, to_flow

__all__ = ["HYPERPARAMETERS", "compare", "comparison_scores", "flow_hyperparameters", "flow_time",
           "format_comparison"]

#: flow-unit hyperparameters that must agree between the two Datasets.
HYPERPARAMETERS = ("eta", "eta_p", "alpha_p", "beta", "sigma2")
#: names ``allow_mismatch`` accepts ("hyperparameters" stands for all five).
ALLOWABLE = ("method", "modes", "hyperparameters") + HYPERPARAMETERS
#: Hyperparameters agree when |a - b| <= HYPER_RTOL * max(|a|, |b|). Far above the round-off of the unit
#: mapping (a few ulps, ~1e-15) and of float32 storage (6e-8); far below any deliberate difference.
HYPER_RTOL = 1e-6
#: relative floor of s (and p) in the relative and log errors; the dynamics' default collapse tolerance.
FLOOR = 1e-6
#: dynamics.Simulation's default: a mode is dead when s_j(T) < COLLAPSE_TOL * max s(0).
COLLAPSE_TOL = 1e-6
ALIGN_THRESHOLD = 0.9
COMMUTATOR_FRACTION = 0.1
#: the scores of the printed table use the TOP_MODES largest modes (by mode index).
TOP_MODES = 8
#: a measured time this fraction of the predicted span outside it still counts as inside (the unit
#: mapping's round-off on the last step), and is clipped onto the end.
TIME_SLACK = 1e-9
VERDICTS = ("survives", "dies")
ORDERS = ("auto", "index", "rank")
NO_EMA = ("simsiam",)  # methods without a target network: no beta


def _role_error(role: str, msg: str) -> DatasetError:
    return DatasetError(f"{role}: {msg}")


def _single_run(ds: xr.Dataset, role: str) -> xr.Dataset:
    """Validate ``ds`` and drop a size-1 ``run`` dim; a sweep of several runs is refused."""
    if not isinstance(ds, xr.Dataset):
        raise DatasetError(f"{role}: expected an xarray Dataset, got {type(ds).__name__}")
    try:
        validate_dataset(ds)
        if ds.attrs["source"] == "comparison":
            raise DatasetError("source = 'comparison': compare takes trajectories (theory, sampled or measured)")
        validate_dataset(ds, require=("s",))
    except DatasetError as exc:
        raise _role_error(role, str(exc)) from None
    if "mode" not in ds["s"].dims:
        raise _role_error(role, f"variable 's' has dims {ds['s'].dims}; needs a 'mode' dim")
    if "run" in ds.dims:
        if ds.sizes["run"] != 1:
            raise _role_error(role, f"has {ds.sizes['run']} runs; compare takes one run (select it with "
                                    f"ds.isel(run=i); the verb: --{role}-run I)")
        ds = ds.isel(run=0)
    extra = [d for d in ds["s"].dims if d not in ("time", "mode")]
    if extra:
        raise _role_error(role, f"variable 's' has extra dims {extra}; select one run first")
    return ds


def _scalar(value) -> float | None:
    """A finite float from an attribute or 0-d coordinate, else None."""
    try:
        out = float(np.asarray(value).item())
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def flow_time(ds: xr.Dataset, role: str = "dataset") -> np.ndarray:
    """The ``time`` axis of a single-run contract Dataset in flow units, shape (time,).

    Flow-time Datasets are returned as they are; step-time Datasets need the ``lr`` variable along
    ``time`` (what the training probes record) and read SGD momentum from ``attrs["sgd_momentum"]``
    (0 if absent), then go through :func:`stopgrad.analysis.steps_to_flow_time`.
    """
    units = ds["time"].attrs.get("units")
    t = np.asarray(ds["time"].values, dtype=np.float64)
    if units == "flow":
        return t
    if "lr" not in ds or ds["lr"].dims != ("time",):
        raise _role_error(role, "time is in steps but no 'lr' is recorded along time: cannot map steps to "
                                "flow time (theory.md §1.2)")
    momentum = _scalar(ds.attrs.get("sgd_momentum", 0.0)) or 0.0
    try:
        return steps_to_flow_time(t, ds["lr"].values, momentum)
    except ValueError as exc:
        raise _role_error(role, f"mapping steps to flow time: {exc}") from None


def _config(ds: xr.Dataset) -> dict:
    try:
        cfg = json.loads(ds.attrs.get("config", ""))
    except (TypeError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _base_method(ds: xr.Dataset) -> str:
    return str(ds.attrs.get("method", "")).split("-")[0]


def flow_hyperparameters(ds: xr.Dataset, role: str = "dataset") -> tuple[dict[str, float | None], list[str]]:
    """Flow-unit (eta, eta_p, alpha_p, beta, sigma2) of a single-run Dataset, None where undefined.

    Flow-time Datasets: a 0-d coordinate (a swept value), else an attribute, else the theory config
    (``model.eta``, ``model.eta_p`` (None: eta), ``model.alpha_p``, ``model.beta``, ``model.data.sigma2``
    for isotropic data). Step-time Datasets: the training attributes ``lr``, ``weight_decay``,
    ``predictor_lr``, ``predictor_weight_decay``, ``sgd_momentum`` and ``ema_momentum`` (or the
    ``ema_momentum`` variable when it is constant) through :func:`stopgrad.analysis.to_flow`
    (PyTorch convention); a measured run has no sigma2. Methods without a target (SimSiam) have no beta.

    Returns ``(values, notes)``; notes say what was inferred or is approximate.
    """
    notes: list[str] = []
    out: dict[str, float | None] = dict.fromkeys(HYPERPARAMETERS)
    if ds["time"].attrs.get("units") == "flow":
        model = _config(ds).get("model", {})
        model = model if isinstance(model, dict) else {}
        data = model.get("data", {}) if isinstance(model.get("data"), dict) else {}
        for key in HYPERPARAMETERS:
            if key in ds.coords and ds[key].ndim == 0:
                out[key] = _scalar(ds[key].values)
            elif key in ds.attrs:
                out[key] = _scalar(ds.attrs[key])
            elif key == "sigma2":
                out[key] = _scalar(data.get("sigma2")) if data.get("kind", "isotropic") == "isotropic" else None
            else:
                out[key] = _scalar(model.get(key))
        if out["eta_p"] is None and out["eta"] is not None and model.get("eta_p", "absent") is None:
            out["eta_p"] = out["eta"]  # the theory's default: the predictor decays at the trunk's rate
    else:
        a = ds.attrs
        lr = _scalar(a.get("lr"))
        if lr is None and "lr" in ds:
            lr = _scalar(np.nanmax(ds["lr"].values))
            notes.append("lr from the peak of the recorded lr")
        wd = _scalar(a.get("weight_decay"))
        ema = _scalar(a.get("ema_momentum"))
        if ema is None and "ema_momentum" in ds:
            vals = np.asarray(ds["ema_momentum"].values, dtype=float)
            vals = vals[np.isfinite(vals)]
            if vals.size and np.ptp(vals) == 0:
                ema = float(vals[0])
            elif vals.size:
                notes.append(f"beta undefined: the EMA momentum varies over the run ({vals.min():.6g} to "
                             f"{vals.max():.6g})")
        if lr is not None and wd is not None:
            try:
                flow = to_flow(OptimizerUnits(
                    lr=lr, weight_decay=wd, predictor_lr=_scalar(a.get("predictor_lr")),
                    predictor_weight_decay=_scalar(a.get("predictor_weight_decay")), ema_momentum=ema,
                    momentum=_scalar(a.get("sgd_momentum", 0.0)) or 0.0))
            except ValueError as exc:
                raise _role_error(role, f"mapping the optimizer settings to flow units: {exc}") from None
            out.update(eta=flow.eta, eta_p=flow.eta_p, alpha_p=flow.alpha_p, beta=flow.beta)
        if "lr" in ds:
            rec = np.asarray(ds["lr"].values, dtype=float)
            if rec.size and np.nanmax(rec) != np.nanmin(rec):
                notes.append(f"lr schedule ({np.nanmin(rec):.6g} to {np.nanmax(rec):.6g}): beta at lr = {lr}")
        optimizer = str(a.get("optimizer", "sgd"))
        if optimizer != "sgd":
            notes.append(f"optimizer = {optimizer!r}: the unit mapping is exact for SGD only")
    if _base_method(ds) in NO_EMA:
        out["beta"] = None
    return out, notes


def _allowed(allow_mismatch) -> frozenset[str]:
    if isinstance(allow_mismatch, str):
        allow_mismatch = [x for x in allow_mismatch.replace(" ", "").split(",") if x]
    names = frozenset(allow_mismatch or ())
    for name in names:
        if name not in ALLOWABLE:
            raise DatasetError(f"allow_mismatch = {name!r}: must be among {', '.join(ALLOWABLE)}")
    if "hyperparameters" in names:
        names = names | set(HYPERPARAMETERS)
    return names


def _fmt(v) -> str:
    return "none" if v is None else f"{v:.10g}"


def _hyper_mismatches(hp: dict, hm: dict, rtol: float, meas_source: str) -> tuple[list[tuple[str, str]], list[str]]:
    """[(name, 'name: predicted a, measured b')] for each differing hyperparameter, and skip notes."""
    diffs, notes = [], []
    for key in HYPERPARAMETERS:
        a, b = hp[key], hm[key]
        if a is None and b is None:
            continue
        if key == "sigma2" and (a is None or b is None) and meas_source == "measured":
            notes.append("sigma2 not compared (real data has no isotropic sigma2)")
            continue
        if a is None or b is None or abs(a - b) > rtol * max(abs(a), abs(b)):
            diffs.append((key, f"{key}: predicted {_fmt(a)}, measured {_fmt(b)}"))
    return diffs, notes


def _interp(t_src: np.ndarray, values: np.ndarray, t_dst: np.ndarray) -> np.ndarray:
    """Linear interpolation along axis 0 of ``values`` (time, ...), exact at the source times."""
    if t_src.size == 1:
        return np.repeat(values[:1], t_dst.size, axis=0)
    i = np.clip(np.searchsorted(t_src, t_dst, side="right") - 1, 0, t_src.size - 2)
    w = (t_dst - t_src[i]) / (t_src[i + 1] - t_src[i])
    w = w.reshape((-1,) + (1,) * (values.ndim - 1))
    lo, hi = values[i], values[i + 1]
    with np.errstate(invalid="ignore"):
        mixed = lo + w * (hi - lo)
    return np.where(w == 0, lo, np.where(w == 1, hi, mixed))


def _floor_of(ref: np.ndarray, floor: float) -> float:
    scale = float(np.nanmax(np.abs(ref))) if np.any(np.isfinite(ref)) else 0.0
    return floor * (scale if scale > 0 else 1.0)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of a[i] and b[i] over the last axis, for each row i; average ranks for
    ties; entries non-finite in either are left out of that row; NaN for a row with < 2 entries or a
    constant one. a, b: (n, k) -> (n,)."""
    ok = np.isfinite(a) & np.isfinite(b)
    ra = stats.rankdata(np.where(ok, a, np.nan), axis=-1, nan_policy="omit")
    rb = stats.rankdata(np.where(ok, b, np.nan), axis=-1, nan_policy="omit")
    n = ok.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        da = np.where(ok, ra - np.nansum(ra, -1, keepdims=True) / n[:, None], 0.0)
        db = np.where(ok, rb - np.nansum(rb, -1, keepdims=True) / n[:, None], 0.0)
        den = np.sqrt((da * da).sum(-1) * (db * db).sum(-1))
        r = (da * db).sum(-1) / den
    return np.where((n >= 2) & (den > 0), r, np.nan)


def parabola_distance(t: np.ndarray, s: np.ndarray, p: np.ndarray, alpha_p: float, eta: float) -> np.ndarray:
    """Distance of (p_j, s_j) from Theorem 1's curve alpha_p s = p^2 + e^{-2 eta t} c_j, c_j from t[0].

    Args:
        t: (time,) flow time. s, p: (time, mode). alpha_p, eta: flow units.

    Returns:
        (time, mode): |I(t) - e^{-2 eta (t - t_0)} I(t_0)| / (alpha_p s + p^2) with I = alpha_p s - p^2;
        NaN where the denominator is not positive or an input is NaN.
    """
    inv = alpha_p * s - p * p
    decay = np.exp(-2.0 * eta * (t - t[0]))[:, None]
    den = alpha_p * s + p * p
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.abs(inv - decay * inv[:1]) / den
    return np.where(den > 0, d, np.nan)


def _first_cross(t: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """First t where ``hit`` (time, ...) is True, NaN where never."""
    idx = np.argmax(hit, axis=0)
    return np.where(hit.any(axis=0), t[idx], np.nan)


def _collapse(ds: xr.Dataset, tol: float) -> np.ndarray:
    """(mode,) int8: 1 dies, 0 survives, -1 undecided; per-mode ``alive`` if present, else the s rule."""
    if "alive" in ds and ds["alive"].dims == ("mode",):
        alive = np.asarray(ds["alive"].values, dtype=float)
        return np.where(np.isfinite(alive), (alive == 0).astype(np.int8), -1).astype(np.int8)
    s = np.asarray(ds["s"].transpose("time", "mode").values, dtype=float)
    ref = np.nanmax(np.abs(s[0])) if np.any(np.isfinite(s[0])) else np.nan
    ref = ref if ref > 0 else 1.0
    final = s[-1]
    return np.where(np.isfinite(final), (final < tol * ref).astype(np.int8), -1).astype(np.int8)


def _ranked(ds: xr.Dataset) -> bool:
    """Whether the mode index is a rank (eigenvalues of F sorted descending), not a fixed direction."""
    return ds.attrs.get("engine") != "modes"


def _rank_order(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every (time, mode) variable reordered by descending s at each time (NaN last); a
    per-mode verdict ``alive`` no longer refers to a rank and is dropped."""
    s = _tm(ds, "s")
    idx = np.argsort(-s, axis=-1, kind="stable")
    out = ds.drop_vars("alive") if "alive" in ds else ds.copy()
    for name, var in ds.data_vars.items():
        if var.dims == ("time", "mode"):
            out[name] = var.copy(data=np.take_along_axis(var.values, idx, axis=-1))
    return out


def _tm(ds: xr.Dataset, name: str) -> np.ndarray:
    return np.asarray(ds[name].transpose("time", "mode").values, dtype=np.float64)


def compare(
    predicted: xr.Dataset,
    measured: xr.Dataset,
    *,
    allow_mismatch: str | Iterable[str] = (),
    hyper_rtol: float = HYPER_RTOL,
    floor: float = FLOOR,
    top: int = TOP_MODES,
    align_threshold: float = ALIGN_THRESHOLD,
    commutator_fraction: float = COMMUTATOR_FRACTION,
    collapse_tol: float = COLLAPSE_TOL,
    order: str = "auto",
) -> xr.Dataset:
    """Compare a predicted run with a measured one (module docstring for every definition).

    Args:
        predicted: single-run contract Dataset, usually dense theory (flow time).
        measured: single-run contract Dataset (step time with ``lr`` recorded, or flow time).
        allow_mismatch: names among ``ALLOWABLE`` ("method", "modes" (compare the common top modes),
            "eta", ..., "hyperparameters" for all) whose difference is accepted; a list or "eta,beta".
        hyper_rtol: relative tolerance of the hyperparameter check (flow units).
        floor: relative floor of s and p in the relative and log errors.
        top: how many leading modes the summary scores of :func:`format_comparison` use.
        align_threshold: alignment crossing level. commutator_fraction: commutator crossing level as a
            fraction of its value at the first common time. collapse_tol: s_j(T) < collapse_tol max s(0).
        order: how modes are paired. "index": mode j with mode j. "rank": both spectra sorted descending at
            each time (p, alignment and tau follow s), the j-th largest with the j-th largest. "auto":
            "rank" when one Dataset's mode index is a fixed direction (the per-mode engine,
            ``attrs["engine"] == "modes"``) and the other's is a rank (eigenvalues of F: measured probes,
            matrix flow, sampled SGD), else "index".

    Returns:
        The comparison Dataset, dims (time, mode, predicted, measured), time in flow units.

    Raises:
        DatasetError: one line naming what differs (units, method, modes, hyperparameters) or is missing.
    """
    allowed = _allowed(allow_mismatch)
    P = _single_run(predicted, "predicted")
    M = _single_run(measured, "measured")
    tP, tM = flow_time(P, "predicted"), flow_time(M, "measured")

    differences: list[str] = []
    mp, mm = str(P.attrs["method"]), str(M.attrs["method"])
    if mp != mm:
        msg = f"method: predicted {mp!r}, measured {mm!r}"
        if "method" not in allowed:
            raise DatasetError(f"methods differ: {msg} (allow_mismatch='method' to compare anyway)")
        differences.append(msg)
    if order not in ORDERS:
        raise DatasetError(f"order = {order!r}: must be one of {ORDERS}")
    if order == "auto":
        order = "rank" if _ranked(P) != _ranked(M) else "index"
    if order == "rank":
        P, M = _rank_order(P), _rank_order(M)
    kp, km = P.sizes["mode"], M.sizes["mode"]
    k = kp
    if kp != km:
        msg = f"modes: predicted {kp}, measured {km}"
        if "modes" not in allowed:
            raise DatasetError(f"mode counts differ: {msg} (allow_mismatch='modes' compares the top "
                               f"{min(kp, km)})")
        differences.append(msg)
        k = min(kp, km)
        P, M = P.isel(mode=slice(0, k)), M.isel(mode=slice(0, k))
    hp, notes_p = flow_hyperparameters(P, "predicted")
    hm, notes_m = flow_hyperparameters(M, "measured")
    diffs, skip_notes = _hyper_mismatches(hp, hm, hyper_rtol, M.attrs["source"])
    refused = [m for key, m in diffs if key not in allowed]
    if refused:
        raise DatasetError(f"hyperparameters differ (flow units, relative tolerance {hyper_rtol:g}): "
                           f"{'; '.join(refused)} (allow_mismatch names them to compare anyway)")
    differences += [m for _, m in diffs]

    # the common time axis: measured times inside the predicted span
    slack = TIME_SLACK * max(tP[-1] - tP[0], abs(tP[-1]), 1e-300)
    inside = (tM >= tP[0] - slack) & (tM <= tP[-1] + slack)
    if not inside.any():
        raise DatasetError(f"no common times: predicted covers flow time [{tP[0]:.6g}, {tP[-1]:.6g}], "
                           f"measured [{tM[0]:.6g}, {tM[-1]:.6g}]")
    t = np.clip(tM[inside], tP[0], tP[-1])
    Mc = M.isel(time=np.flatnonzero(inside))

    def pred(name: str) -> np.ndarray:
        v = np.asarray(P[name].values, dtype=np.float64)
        if P[name].dims != ("time",):
            v = _tm(P, name)
        return _interp(tP, v, t)

    s_p, s_m = pred("s"), _tm(Mc, "s")
    f_s = _floor_of(s_p[0], floor)
    dims2 = ("time", "mode")
    out: dict[str, tuple] = {
        "s_predicted": (dims2, s_p, "predicted s, interpolated onto the common times"),
        "s_measured": (dims2, s_m, "measured s"),
        "s_abs_error": (dims2, np.abs(s_m - s_p), "|s_measured - s_predicted|"),
        "s_rel_error": (dims2, np.abs(np.maximum(s_m, f_s) - np.maximum(s_p, f_s)) / np.maximum(s_p, f_s),
                        "|max(s_measured, floor_s) - max(s_predicted, floor_s)| / max(s_predicted, floor_s)"),
        "s_log_error": (dims2, np.abs(np.log(np.maximum(s_m, f_s)) - np.log(np.maximum(s_p, f_s))),
                        "|log max(s_measured, floor_s) - log max(s_predicted, floor_s)|"),
        "spearman_s": (("time",), spearman_rows(s_p, s_m), "Spearman rank correlation of the spectra over modes"),
    }
    f_p = math.nan
    p_p = pred("p") if "p" in P else None
    p_m = _tm(Mc, "p") if "p" in Mc else None
    if p_p is not None:
        out["p_predicted"] = (dims2, p_p, "predicted p, interpolated onto the common times")
    if p_m is not None:
        out["p_measured"] = (dims2, p_m, "measured p")
    if p_p is not None and p_m is not None:
        f_p = _floor_of(p_p, floor)
        out["p_abs_error"] = (dims2, np.abs(p_m - p_p), "|p_measured - p_predicted|")
        out["p_rel_error"] = (dims2, np.abs(p_m - p_p) / np.maximum(np.abs(p_p), f_p),
                              "|p_measured - p_predicted| / max(|p_predicted|, floor_p)")
    para_desc = "|I(t) - exp(-2 eta (t - t0)) I(t0)| / (alpha_p s + p^2), I = alpha_p s - p^2 (Theorem 1)"
    for suffix, (s_x, p_x, h) in {"": (s_m, p_m, hm), "_predicted": (s_p, p_p, hp)}.items():
        if p_x is not None and h["alpha_p"] is not None and h["eta"] is not None:
            out["parabola_distance" + suffix] = (dims2, parabola_distance(t, s_x, p_x, h["alpha_p"], h["eta"]),
                                                 para_desc)
    for suffix, (src, getter) in {"": (Mc, lambda n: _tm(Mc, n) if Mc[n].ndim == 2 else Mc[n].values),
                                  "_predicted": (P, pred)}.items():
        if "alignment" in src:
            a = np.asarray(getter("alignment"), dtype=np.float64)
            out["alignment_" + ("measured" if not suffix else "predicted")] = (dims2, a, "cos(W_p u_j, u_j)")
            with np.errstate(invalid="ignore"):
                hit = a > align_threshold
            out["alignment_cross_time" + suffix] = (("mode",), _first_cross(t, hit),
                                                    f"first time with alignment > {align_threshold:g}")
        if "commutator" in src:
            c = np.asarray(getter("commutator"), dtype=np.float64)
            out["commutator_" + ("measured" if not suffix else "predicted")] = (("time",), c,
                                                                                "||[F, W_p]||_F / (||F|| ||W_p||)")
            with np.errstate(invalid="ignore"):
                hit = c <= commutator_fraction * c[0]
            out["commutator_cross_time" + suffix] = ((), _first_cross(t, hit),
                                                     f"first time with commutator <= {commutator_fraction:g} x "
                                                     "its initial value")
    cp, cm = _collapse(P, collapse_tol), _collapse(M, collapse_tol)
    decided = (cp >= 0) & (cm >= 0)
    confusion = np.zeros((2, 2), dtype=np.int64)
    np.add.at(confusion, (cp[decided], cm[decided]), 1)
    n_dec = int(decided.sum())
    out["collapse_predicted"] = (("mode",), cp, "1: the predicted run's mode dies, 0: survives, -1: undecided")
    out["collapse_measured"] = (("mode",), cm, "1: the measured run's mode dies, 0: survives, -1: undecided")
    out["confusion"] = (("predicted", "measured"), confusion, "modes by predicted (rows) and measured verdict")
    out["collapse_agreement"] = ((), np.trace(confusion) / n_dec if n_dec else np.nan,
                                 "fraction of decided modes with the same verdict")

    variables = {name: xr.Variable(dims, np.asarray(arr), attrs={"long_name": desc})
                 for name, (dims, arr, desc) in out.items()}
    coords = {"time": ("time", t, {"units": "flow"}), "mode": ("mode", np.arange(k)),
              "predicted": ("predicted", list(VERDICTS)), "measured": ("measured", list(VERDICTS))}
    if M["time"].attrs.get("units") == "step":
        coords["step"] = ("time", np.asarray(Mc["time"].values, dtype=np.float64))
    if "epoch" in Mc.coords and Mc["epoch"].dims == ("time",):
        coords["epoch"] = ("time", np.asarray(Mc["epoch"].values, dtype=np.float64))
    attrs = {
        "source": "comparison",
        "method": mp if mp == mm else f"{mp} vs {mm}",
        "config": json.dumps({"allow_mismatch": sorted(allowed), "hyper_rtol": hyper_rtol, "floor": floor,
                              "top": top, "align_threshold": align_threshold,
                              "commutator_fraction": commutator_fraction, "collapse_tol": collapse_tol,
                              "order": order}),
        "stopgrad_version": _version(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "allow_mismatch": ",".join(sorted(allowed)) or "none", "mode_order": order,
        "differences_allowed": "; ".join(differences) or "none",
        "notes": "; ".join(skip_notes + [f"predicted: {n}" for n in notes_p] + [f"measured: {n}" for n in notes_m])
        or "none",
        "hyper_rtol": hyper_rtol, "floor": floor, "floor_s": f_s, "floor_p": f_p, "top_modes": min(top, k),
        "align_threshold": align_threshold, "commutator_fraction": commutator_fraction,
        "collapse_tol": collapse_tol, "measured_times_dropped": int((~inside).sum()),
        "predicted_t_final": float(tP[-1]), "measured_t_final": float(tM[-1]), "collapse_undecided": k - n_dec,
    }
    for role, ds, h in (("predicted", P, hp), ("measured", M, hm)):
        for key in ("source", "method", "config", "engine", "time_units"):
            val = ds["time"].attrs.get("units") if key == "time_units" else ds.attrs.get(key)
            if val is not None:
                attrs[f"{role}_{key}"] = val
        for key, val in h.items():
            attrs[f"{role}_{key}"] = val
    result = xr.Dataset(variables, coords=coords, attrs={k_: _flat_attr(v) for k_, v in attrs.items()})
    validate_dataset(result)
    return result


def _median(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def _nanmax(v) -> float:
    return float(np.nanmax(v)) if np.any(np.isfinite(v)) else math.nan


def _num(v: float, fmt: str = ".3g") -> str:
    return "n/a" if not np.isfinite(v) else format(v, fmt)


def comparison_scores(ds: xr.Dataset) -> dict[str, float]:
    """The headline numbers of a comparison Dataset as a flat dict (NaN where a variable is missing).

    ``s_rel_error_final`` / ``s_rel_error_all``: the median over the ``top_modes`` leading modes of the
    relative error in s at the last common time / over all common times (likewise ``p_rel_error_*`` and
    ``s_log_error_*``); ``parabola_distance_final`` (measured) and ``parabola_distance_predicted_final``;
    ``alignment_final_measured``: median alignment of the top modes at the end; ``collapse_agreement``."""
    K = int(ds.attrs["top_modes"])
    top = ds.isel(mode=slice(0, K))
    out: dict[str, float] = {}
    for name in ("s_rel_error", "p_rel_error", "s_log_error", "parabola_distance", "parabola_distance_predicted"):
        v = top[name].values if name in ds else np.full((1, 1), np.nan)
        out[f"{name}_final"] = _median(v[-1])
        out[f"{name}_all"] = _median(v)
    for who in ("measured", "predicted"):
        name = f"alignment_{who}"
        out[f"alignment_final_{who}"] = _median(top[name].values[-1]) if name in ds else math.nan
    out["collapse_agreement"] = float(ds["collapse_agreement"].values)
    out["spearman_s_final"] = float(ds["spearman_s"].values[-1])
    return out


def format_comparison(ds: xr.Dataset) -> str:
    """One score per statement, from a comparison Dataset alone, as a fixed-width text table.

    Scores over the ``top_modes`` leading modes at the last common time (medians), with the median over
    all common times and those modes in the detail column.
    """
    if ds.attrs.get("source") != "comparison":
        raise DatasetError(f"format_comparison needs a comparison Dataset, got source = {ds.attrs.get('source')!r}")
    K = int(ds.attrs["top_modes"])
    top = ds.isel(mode=slice(0, K))
    t = ds["time"].values
    rows: list[tuple[str, str, str]] = []

    def err_row(name: str, label: str):
        if name not in ds:
            rows.append((label, "n/a", "a Dataset lacks the variable"))
            return
        v = top[name].values
        rows.append((label, _num(_median(v[-1])), f"median over all times {_num(_median(v))}"))

    err_row("s_rel_error", f"s_j(t) relative error, median top {K}, final")
    err_row("p_rel_error", f"p_j(t) relative error, median top {K}, final")
    err_row("s_log_error", f"s_j(t) log error, median top {K}, final")
    sp = ds["spearman_s"].values
    rows.append(("Spearman rank corr. of spectra, final", _num(sp[-1]),
                 f"min over time {_num(-_nanmax(-sp))}"))
    def per_role(base: str, label: str, missing: str, score) -> None:
        """One row per Dataset (measured, then predicted) for the variable ``base`` + suffix."""
        for suffix, who in (("", "measured"), ("_predicted", "predicted")):
            name = base + suffix
            text = label.format(who=who)
            rows.append((text, *score(name, who)) if name in ds else (text, "n/a", missing))

    per_role("parabola_distance", f"Theorem 1: parabola distance ({{who}}), median top {K}, final",
             "no p or no alpha_p/eta", lambda name, who: (
                 _num(_median(top[name].values[-1])), f"max over all times {_num(_nanmax(top[name].values))}"))
    thr, frac = ds.attrs["align_threshold"], ds.attrs["commutator_fraction"]
    per_role("alignment_cross_time", f"Theorem 3: alignment > {thr:g} ({{who}}), top {K}", "no alignment recorded",
             lambda name, who: (f"{int(np.isfinite(top[name].values).sum())}/{K}",
                                f"median crossing t = {_num(_median(top[name].values))}"))
    per_role("commutator_cross_time", f"Theorem 3: commutator <= {frac:g} x initial ({{who}})",
             "no commutator recorded", lambda name, who: (
                 "never" if not np.isfinite(float(ds[name].values)) else f"t = {_num(float(ds[name].values))}",
                 f"from {_num(ds['commutator_' + who].values[0])} to {_num(ds['commutator_' + who].values[-1])}"))
    conf = ds["confusion"].values
    agree = float(ds["collapse_agreement"].values)
    rows.append(("collapse agreement", "n/a" if not np.isfinite(agree) else f"{100 * agree:.1f} %",
                 f"dies: predicted {conf[1].sum()}, measured {conf[:, 1].sum()}; survives/dies disagree "
                 f"{conf[0, 1]}, dies/survives {conf[1, 0]}"))
    head = (f"comparison: predicted {ds.attrs.get('predicted_source')}/{ds.attrs.get('predicted_method')} vs "
            f"measured {ds.attrs.get('measured_source')}/{ds.attrs.get('measured_method')}; {t.size} common "
            f"times, flow t in [{t[0]:.4g}, {t[-1]:.4g}]; {ds.sizes['mode']} modes")
    if ds.attrs.get("differences_allowed", "none") != "none":
        head += f"\nallowed differences: {ds.attrs['differences_allowed']}"
    w0 = max(len(r[0]) for r in rows)
    w1 = max(max(len(r[1]) for r in rows), len("score"))
    lines = [head, f"{'statement':<{w0}}  {'score':>{w1}}  detail"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)
