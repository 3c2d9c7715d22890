"""The figure gallery: look at what each input Dataset carries and draw every figure the inputs allow.

What each figure needs (a Dataset may feed several):

==========================  ===========================================================================
figure (file name)          inputs
==========================  ===========================================================================
trajectories-LABEL          a comparison Dataset (``s_predicted``, ``s_measured``; ``p_*`` optional)
phase-portrait-LABEL        ``s`` and ``p`` (or their ``_predicted``/``_measured`` pair) with sigma2,
                            eta and alpha_p in flow units (coords, attrs or config; tau defaults to 1)
phase-line                  the first input that names sigma2 (and tau, default 1)
phase-diagram-LABEL         ``collapsed_measured`` and ``collapsed_predicted`` (run) with attrs x, y
alignment-commutator        every input with ``alignment`` or ``commutator``, one figure per time unit
predictor-symmetry          every input with ``asymmetry`` or ``wp_sym_norm``/``wp_antisym_norm``
collapse-metrics            every input with ``std_l2``, ``effective_rank`` or ``rankme``
predictor-rules             inputs with kNN accuracy, a rank or ``s``, when at least one used DirectPred,
                            DirectCopy or DirectSet and at least one a learned predictor
gsg-neg-dist-PRED           Siamese sweeps (a ``run`` dim, ``neg_dist``, a four-view ``method`` per run:
                            the sampled simulator's output, or the expected flow) whose other run coords
                            are constant, one figure per predictor setting (``pred``/``nopred``), every
                            such input a world (expected flow, sampled) on the flow-time axis
gsg-no-predictor-LABEL      a Siamese sweep without a predictor with std_l2, effective_rank and neg_dist
gsg-quality-vs-batch-LABEL  a Siamese sweep over ``batch`` (>= 2 sizes) with ``knn_acc`` (one figure per
                            encoder when the encoder is swept too)
gsg-real-network-PRED       trainer runs (``stopgrad train`` metrics.nc: measured, no ``run`` dim) with
                            ``neg_dist``, one line per method (GSG's ``method.reverse`` named
                            ``-reverse``) over its seeds, one figure per predictor kind
==========================  ===========================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from . import _mode_theory as mt
from ._inputs import DEFAULT_TAU, config_doc, dig, has_any, labelled, mode_params, param, predictor_kind, time_units
from .compared import trajectories_compared
from .diagnostics import alignment_and_commutator, collapse_metrics, predictor_rules, predictor_symmetry
from .gsg import gsg_neg_dist_over_time, gsg_no_predictor, gsg_quality_vs_batch, gsg_real_network_over_time
from .phase import phase_diagram_measured
from .portrait import phase_line, phase_portrait
from .style import save_figure

__all__ = ["GalleryItem", "gallery_plan", "is_comparison", "is_phase_diagram", "is_siamese", "render_gallery"]

#: predictor kinds that count as a rule (the other side of the predictor-rules figure is 'learned')
RULE_KINDS = ("directpred", "directcopy", "directset")
#: predictor kinds whose p follows Eq. 11 (a rule sets p = phi(s) instead; 'none' has no predictor)
PORTRAIT_PREDICTORS = ("learned", "symmetric")
#: fraction of eta_c used for regime (b) of the phase line when the input's eta is not in (0, eta_c]
SMALL_ETA = 0.5
#: multiple of eta_c used for regime (c)
LARGE_ETA = 1.5
#: the simulator's four-view methods (the negative-pair-distance figure draws these)
FOUR_VIEW = ("simsiam", "simsiam-random", "gsg", "gsg-reverse")
#: Siamese-sweep run coords that may vary inside one negative-pair-distance figure (the lines, the seeds)
NEG_DIST_FREE = ("method", "seed")


@dataclass
class GalleryItem:
    """One figure to draw: its file stem, kind, the function and its arguments."""

    name: str
    kind: str
    draw: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "input"


def is_comparison(ds: xr.Dataset) -> bool:
    """A comparison Dataset: predicted and measured spectra on one time axis."""
    return "s_predicted" in ds and "s_measured" in ds


def is_phase_diagram(ds: xr.Dataset) -> bool:
    """A measured phase diagram: collapse verdicts per run (see :func:`phase_diagram_measured`)."""
    return "collapsed_measured" in ds


def _portrait_item(label: str, ds: xr.Dataset, skipped: list[str]) -> GalleryItem | None:
    if not ("mode" in ds.dims and (has_any(ds, "s") and has_any(ds, "p"))):
        return None
    kind, method = predictor_kind(ds), str(ds.attrs.get("method", ""))
    if kind not in PORTRAIT_PREDICTORS or "no-stopgrad" in method:
        skipped.append(f"phase-portrait-{_safe(label)}: the mode flow (Eqs. 11-12) is that of a learned predictor "
                       f"with stop-gradient (this run: predictor {kind}, method {method})")
        return None
    try:
        mode_params(ds)
    except ValueError as err:
        skipped.append(f"phase-portrait-{_safe(label)}: {err}")
        return None
    return GalleryItem(f"phase-portrait-{_safe(label)}", "phase-portrait", phase_portrait, (ds,))


def _phase_line_item(pairs) -> GalleryItem | None:
    for _, ds in pairs:
        sigma2 = param(ds, "sigma2")
        if sigma2 is None:
            continue
        tau = param(ds, "tau")
        tau = DEFAULT_TAU if tau is None else tau
        eta_c = mt.eta_critical(sigma2, tau)
        eta = param(ds, "eta")
        small = eta if eta is not None and 0 < eta <= eta_c else SMALL_ETA * eta_c
        etas = (0.0, small, LARGE_ETA * eta_c)
        return GalleryItem("phase-line", "phase-line", phase_line, (sigma2, tau), {"etas": etas})
    return None


def _grouped(pairs, kind: str, name: str, draw: Callable, wants: Callable[[xr.Dataset], bool]) -> list[GalleryItem]:
    """One item per time unit over the inputs that ``wants`` accepts."""
    groups: dict[str, dict[str, xr.Dataset]] = {}
    for label, ds in pairs:
        if "time" in ds.coords and wants(ds):
            groups.setdefault(time_units(ds), {})[label] = ds
    multi = len(groups) > 1
    return [GalleryItem(f"{name}-{units}" if multi else name, kind, draw, (members,))
            for units, members in groups.items()]


def _rules_items(pairs) -> list[GalleryItem]:
    usable = [(lab, ds) for lab, ds in pairs
              if "time" in ds.coords and any(v in ds for v in ("knn_acc", "effective_rank", "rankme", "s"))]
    items = []
    for item in _grouped(usable, "predictor-rules", "predictor-rules", predictor_rules,
                         lambda ds: predictor_kind(ds) in RULE_KINDS + ("learned",)):
        kinds = {predictor_kind(ds) for ds in item.args[0].values()}
        if kinds & set(RULE_KINDS) and "learned" in kinds:
            items.append(item)
    return items


def is_siamese(ds: xr.Dataset) -> bool:
    """A Siamese sweep: the four-view simulator's output or the expected GSG flow (``run`` dim, ``neg_dist``
    over ``time`` per run, a method per run as a coord or the one method in the attrs)."""
    return "run" in ds.dims and "time" in ds.coords and "neg_dist" in ds and ds["neg_dist"].dims == ("run", "time")


def _with_methods(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with a ``method`` coord along ``run`` (a single-method sweep names its method in the attrs only)."""
    if "method" in ds.coords:
        return ds
    return ds.assign_coords(method=("run", [str(ds.attrs.get("method", "?"))] * ds.sizes["run"]))


def _run_values(ds: xr.Dataset, key: str) -> list | None:
    """The distinct values of the run coord ``key`` (None when there is no such coord)."""
    if key in ds.coords and ds[key].dims == ("run",):
        return list(dict.fromkeys(ds[key].values.tolist()))
    return None


def _siamese_predictor(ds: xr.Dataset) -> bool | None:
    """Whether the sweep's runs have a predictor: the ``predictor`` run coord (when one value), the
    attribute, or the config's ``train.predictor``/``predictor``; None when mixed or unknown."""
    vals = _run_values(ds, "predictor")
    if vals is not None:
        return bool(vals[0]) if len(vals) == 1 else None
    doc = config_doc(ds)
    for v in (ds.attrs.get("predictor"), dig(doc, ("train", "predictor")), dig(doc, ("predictor",))):
        if isinstance(v, (bool, int, np.integer)) and not isinstance(v, str):
            return bool(v)
    return None


def _world_label(ds: xr.Dataset, label: str, taken: set[str]) -> str:
    name = {"theory": "expected flow", "sampled": "sampled"}.get(str(ds.attrs.get("source")), label)
    return name if name not in taken else f"{name}: {label}"


def _gsg_sweep_items(pairs, skipped: list[str]) -> list[GalleryItem]:
    """The negative-pair distance over time (worlds grouped by predictor), the no-predictor runs, and the
    final quality against the batch size, from Siamese sweeps."""
    items: list[GalleryItem] = []
    worlds: dict[str, dict[str, xr.Dataset]] = {}
    for label, ds in pairs:
        if not is_siamese(ds):
            continue
        ds = _with_methods(ds)
        pred = _siamese_predictor(ds)
        methods = set(_run_values(ds, "method"))
        varying = [k for k in ds.coords if k not in NEG_DIST_FREE + ("run",) and len(_run_values(ds, k) or [0]) > 1]
        if methods & set(FOUR_VIEW):
            if varying:
                skipped.append(f"gsg-neg-dist ({label}): the runs also vary in {', '.join(varying)}; the figure "
                               "averages over seeds only")
            else:
                group = worlds.setdefault({True: "pred", False: "nopred", None: ""}[pred], {})
                group[_world_label(ds, label, set(group))] = ds
        if pred is False and all(v in ds for v in ("std_l2", "effective_rank", "neg_dist")):
            items.append(GalleryItem(f"gsg-no-predictor-{_safe(label)}", "gsg-no-predictor", gsg_no_predictor, (ds,)))
        batches = _run_values(ds, "batch")
        if batches and len(batches) > 1 and "knn_acc" in ds:
            encoders = _run_values(ds, "encoder") or [None]
            for enc in encoders:
                sub = ds if len(encoders) == 1 else ds.isel(run=np.flatnonzero(ds["encoder"].values == enc))
                suffix = "" if len(encoders) == 1 else f"-{enc}"
                items.append(GalleryItem(f"gsg-quality-vs-batch-{_safe(label)}{suffix}", "gsg-quality-vs-batch",
                                         gsg_quality_vs_batch, (sub,), {"title": None if enc is None else str(enc)}))
    neg = [GalleryItem(f"gsg-neg-dist-{tag}" if tag else "gsg-neg-dist", "gsg-neg-dist", gsg_neg_dist_over_time,
                       (group,), {"title": {"pred": "with predictor", "nopred": "no predictor"}.get(tag)})
           for tag, group in worlds.items()]
    return neg + items


def _trainer_method(ds: xr.Dataset) -> str:
    """The trainer's method name, ``-reverse`` appended for reverse GSG (``method.reverse`` in the config)."""
    name = str(ds.attrs.get("method", "?"))
    return name + "-reverse" if dig(config_doc(ds), ("method", "reverse")) is True else name


def _real_network_items(pairs, skipped: list[str]) -> list[GalleryItem]:
    """One figure per predictor kind over the trainer runs that log ``neg_dist``: a line per method, its
    seeds in the band (runs of one method must share their probe steps)."""
    groups: dict[str, dict[str, list[xr.Dataset]]] = {}
    for label, ds in pairs:
        if ds.attrs.get("source") == "measured" and "run" not in ds.dims and "neg_dist" in ds and "epoch" in ds.coords:
            groups.setdefault(predictor_kind(ds), {}).setdefault(_trainer_method(ds), []).append(ds)
    items = []
    multi = len(groups) > 1
    for kind, runs in groups.items():
        name = f"gsg-real-network-{_safe(kind)}" if multi else "gsg-real-network"
        uneven = [m for m, seeds in runs.items() if len({tuple(d["time"].values.tolist()) for d in seeds}) > 1]
        if uneven:
            skipped.append(f"{name}: the runs of {', '.join(uneven)} were probed at different steps")
            continue
        variables = tuple(v for v in ("neg_dist", "std_l2") if all(v in d for seeds in runs.values() for d in seeds))
        title = "real network" + (", no predictor" if kind == "none" else f", predictor {kind}")
        items.append(GalleryItem(name, "gsg-real-network", gsg_real_network_over_time, (runs,),
                                 {"variables": variables, "title": title}))
    return items


def gallery_plan(datasets, skipped: list[str] | None = None) -> list[GalleryItem]:
    """Every figure the inputs allow, in gallery order. ``datasets``: a mapping label -> Dataset (labels
    name the files) or a sequence. Reasons for figures that cannot be drawn are appended to ``skipped``."""
    skipped = [] if skipped is None else skipped
    pairs = labelled(datasets)
    items: list[GalleryItem] = []
    for label, ds in pairs:
        if is_comparison(ds):
            items.append(GalleryItem(f"trajectories-{_safe(label)}", "trajectories-compared",
                                     trajectories_compared, (ds,)))
    for label, ds in pairs:
        if not is_phase_diagram(ds):
            item = _portrait_item(label, ds, skipped)
            items += [item] if item else []
    line = _phase_line_item([p for p in pairs if not is_phase_diagram(p[1])])
    items += [line] if line else []
    for label, ds in pairs:
        if is_phase_diagram(ds):
            if "collapsed_predicted" in ds and "x" in ds.attrs and "y" in ds.attrs:
                items.append(GalleryItem(f"phase-diagram-{_safe(label)}", "phase-diagram", phase_diagram_measured,
                                         (ds,)))
            else:
                skipped.append(f"phase-diagram-{_safe(label)}: needs collapsed_predicted and attrs x, y")
    items += _grouped(pairs, "alignment", "alignment-commutator", alignment_and_commutator,
                      lambda ds: has_any(ds, "alignment", "commutator"))
    items += _grouped(pairs, "symmetry", "predictor-symmetry", predictor_symmetry,
                      lambda ds: has_any(ds, "asymmetry", "wp_sym_norm", "wp_antisym_norm"))
    items += _grouped(pairs, "collapse-metrics", "collapse-metrics", collapse_metrics,
                      lambda ds: any(v in ds for v in ("std_l2", "effective_rank", "rankme")))
    items += _rules_items(pairs)
    items += _gsg_sweep_items(pairs, skipped)
    items += _real_network_items(pairs, skipped)
    return items


def render_gallery(datasets, out_dir: str | Path, formats: tuple[str, ...] = ("png", "pdf"),
                   log: Callable[[str], None] | None = None) -> list[Path]:
    """Draw every figure the inputs allow (see the module table) into ``out_dir`` as PNG and PDF.

    Args:
        datasets: a mapping label -> contract Dataset (labels name the files), or a sequence of Datasets.
        out_dir: the folder, created if needed.
        log: called with one line per figure written and per figure skipped, when given.

    Returns:
        The written paths, in gallery order (each figure's formats together).
    """
    skipped: list[str] = []
    items = gallery_plan(datasets, skipped)
    out: list[Path] = []
    for item in items:
        paths = save_figure(item.draw(*item.args, **item.kwargs), Path(out_dir) / item.name, formats)
        out += paths
        if log:
            log(f"{item.kind}: wrote " + ", ".join(str(p) for p in paths))
    for reason in skipped:
        if log:
            log(f"skipped {reason}")
    return out
