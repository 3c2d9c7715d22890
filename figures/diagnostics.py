"""Figures over several runs on one time axis: alignment and commutator, predictor symmetry, collapse
metrics by method and ablation, and predictor rules (DirectPred, DirectCopy) against a learned predictor.

Each takes ``datasets``: one Dataset, a sequence of them (labelled 'method (source)'), or a mapping
label -> Dataset. Their ``time`` must share units (flow time or optimizer steps); a comparison Dataset's
``x_predicted`` / ``x_measured`` variables are drawn as two series.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.lines import Line2D

from ._inputs import config_doc, dig, family, labelled, one_run, positive_scale, predictor_kind, shared_units
from .style import PALETTE, ROLE, legend_outside, new_figure, time_label

__all__ = ["alignment_and_commutator", "collapse_metrics", "predictor_rules", "predictor_symmetry"]

#: leading modes whose alignment is drawn
ALIGN_MODES = 3
#: line styles distinguishing modes j = 0, 1, 2, ...
MODE_STYLES = ("-", "--", ":", "-.")
#: where a Dataset may name its feature dimension d (for the 1/sqrt(d) reference of std_l2)
DIM_ATTRS = ("feature_dim", "out_dim", "dim")
DIM_CONFIG = (("projector", "out_dim"), ("model", "n2"))


def _prepare(datasets, run: int):
    pairs = [(label, one_run(ds, run)) for label, ds in labelled(datasets)]
    if not pairs:
        raise ValueError("no Datasets given")
    shared_units(pairs)
    return pairs


def _series(pairs, base: str):
    """[(label, DataArray)] of every variable of the family ``base`` across the Datasets."""
    return [(label + suffix, da) for label, ds in pairs for suffix, da in family(ds, base)]


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _set_scale(ax, arrays) -> None:
    values = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.array([])
    ax.set_yscale(positive_scale(values))


def _scalar_panel(ax, groups, colors: dict, ylabel: str, title: str) -> None:
    """Draw (label, DataArray over time) series, each group in its line style; log y when all positive."""
    for series, ls in groups:
        for lab, da in series:
            ax.plot(da["time"].values, da.values, color=colors[lab], ls=ls, lw=1.2)
    _set_scale(ax, [da.values for series, _ in groups for _, da in series])
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def alignment_and_commutator(datasets, modes: int = ALIGN_MODES, run: int = 0, title: str | None = None):
    """Theorem 3 over time: the alignment cos(W_p u_j, u_j) of the leading modes (one line style per
    mode) and the relative commutator ||[F, W_p]||_F / (||F||_F ||W_p||_F) on a log scale.

    Args:
        datasets: Datasets with ``alignment`` (time, mode) and/or ``commutator`` (time); theory, measured
            or comparison (``alignment_predicted``, ``commutator_measured``, ...), with labels.
        modes: how many leading modes' alignment to draw.
        run: the sweep member, for Datasets with a ``run`` dim.
    """
    pairs = _prepare(datasets, run)
    align, comm = _series(pairs, "alignment"), _series(pairs, "commutator")
    if not align and not comm:
        raise ValueError("no Dataset has 'alignment' or 'commutator'")
    labels = list(dict.fromkeys([lab for lab, _ in align] + [lab for lab, _ in comm]))
    colors = {lab: _color(i) for i, lab in enumerate(labels)}
    panels = [name for name, ser in (("alignment", align), ("commutator", comm)) if ser]
    fig, axes = new_figure(ncols=len(panels), width=3.4, legend=True)
    t_label = time_label(pairs[0][1])
    for ax, name in zip(axes[0], panels):
        if name == "alignment":
            for lab, da in align:
                for j in range(min(modes, da.sizes["mode"])):
                    ax.plot(da["time"].values, da.isel(mode=j).values, color=colors[lab],
                            ls=MODE_STYLES[j % len(MODE_STYLES)], lw=1.2)
            ax.set_ylabel(r"alignment $\cos(W_p u_j, u_j)$")
            ax.set_ylim(-1.05, 1.05)
            ax.set_title("eigenspace alignment")
        else:
            _scalar_panel(ax, [(comm, "-")], colors, r"$\|[F, W_p]\|_F \,/\, (\|F\|_F \|W_p\|_F)$", "commutator decay")
        ax.set_xlabel(t_label)
    handles = [Line2D([], [], color=colors[lab], lw=2.5, label=lab) for lab in labels]
    if align:
        n = min(modes, max(da.sizes["mode"] for _, da in align))
        handles += [Line2D([], [], color=ROLE["reference"], ls=MODE_STYLES[j % len(MODE_STYLES)], label=f"mode {j}")
                    for j in range(n)]
    legend_outside(axes[0, -1], handles)
    fig.suptitle(title or "Theorem 3: alignment of W_p with the eigenvectors of F", fontsize=10)
    return fig


def predictor_symmetry(datasets, run: int = 0, title: str | None = None):
    """Symmetric and antisymmetric parts of W_p over time: ``wp_sym_norm`` (solid) and ``wp_antisym_norm``
    (dashed) where a Dataset carries them, and the contract's ``asymmetry`` ||W_p - W_p^T||_F / ||W_p||_F
    (log scale when positive) otherwise.
    """
    pairs = _prepare(datasets, run)
    sym, anti, asym = _series(pairs, "wp_sym_norm"), _series(pairs, "wp_antisym_norm"), _series(pairs, "asymmetry")
    labels = list(dict.fromkeys(lab for lab, _ in sym + anti + asym))
    if not labels:
        raise ValueError("no Dataset has 'asymmetry', 'wp_sym_norm' or 'wp_antisym_norm'")
    colors = {lab: _color(i) for i, lab in enumerate(labels)}
    with_norms = {lab for lab, _ in sym + anti}
    asym = [(lab, da) for lab, da in asym if lab not in with_norms]
    panels = [p for p, ser in (("norms", sym + anti), ("asymmetry", asym)) if ser]
    fig, axes = new_figure(ncols=len(panels), width=3.4, legend=True)
    for ax, panel in zip(axes[0], panels):
        if panel == "norms":
            _scalar_panel(ax, [(sym, "-"), (anti, "--")], colors, r"$\|(W_p \pm W_p^T)/2\|_F$",
                          "symmetric (solid) and antisymmetric (dashed) parts")
        else:
            _scalar_panel(ax, [(asym, "-")], colors, r"asymmetry $\|W_p - W_p^T\|_F / \|W_p\|_F$",
                          "relative antisymmetric part of $W_p$")
        ax.set_xlabel(time_label(pairs[0][1]))
    handles = [Line2D([], [], color=colors[lab], lw=2.5, label=lab) for lab in labels]
    if "norms" in panels:
        handles += [Line2D([], [], color=ROLE["reference"], ls="-", label="symmetric part"),
                    Line2D([], [], color=ROLE["reference"], ls="--", label="antisymmetric part")]
    legend_outside(axes[0, -1], handles)
    fig.suptitle(title or "predictor symmetry", fontsize=10)
    return fig


def feature_dim(ds: xr.Dataset) -> int | None:
    """The feature dimension d of a run: an attribute, the config (projector.out_dim, model.n2), or the
    number of modes; None when the Dataset does not say."""
    for key in DIM_ATTRS:
        if key in ds.attrs:
            return int(ds.attrs[key])
    doc = config_doc(ds)
    for path in DIM_CONFIG:
        v = dig(doc, path)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return int(ds.sizes["mode"]) if "mode" in ds.sizes else None


def collapse_metrics(datasets, dim: int | None = None, run: int = 0, title: str | None = None):
    """Collapse metrics over time by method or ablation (e.g. 'BYOL', 'no stop-gradient', 'no predictor',
    'no EMA'): std of the l2-normalised outputs with the 1/sqrt(d) of a fully spread representation
    (0 when collapsed; methods.md §7), the effective rank, and RankMe where present.

    Args:
        datasets: mapping label -> Dataset (or a sequence) with ``std_l2`` and/or ``effective_rank``,
            ``rankme`` (time).
        dim: the feature dimension d for the reference line; default: each Dataset's (see
            :func:`feature_dim`).
    """
    pairs = _prepare(datasets, run)
    names = [n for n in ("std_l2", "effective_rank", "rankme") if any(n in ds for _, ds in pairs)]
    if not names:
        raise ValueError("no Dataset has 'std_l2', 'effective_rank' or 'rankme'")
    colors = {lab: _color(i) for i, (lab, _) in enumerate(pairs)}
    fig, axes = new_figure(ncols=len(names), width=3.2, legend=True)
    ylabels = {"std_l2": r"std of $z/\|z\|_2$ (per channel, mean)", "effective_rank": "effective rank",
               "rankme": "RankMe"}
    for ax, name in zip(axes[0], names):
        for lab, ds in pairs:
            if name in ds:
                ax.plot(ds["time"].values, ds[name].values, color=colors[lab], lw=1.3, marker=".", ms=4, label=lab)
        if name == "std_l2":
            dims = sorted({dim} if dim else {d for _, ds in pairs if "std_l2" in ds and (d := feature_dim(ds))})
            for k, d in enumerate(dims):
                ax.axhline(1 / np.sqrt(d), color=ROLE["reference"], ls=MODE_STYLES[1 + k % 3], lw=1.0,
                           label=rf"$1/\sqrt{{d}}$, d = {d}")
            ax.set_ylim(bottom=0)
        ax.set_ylabel(ylabels[name])
        ax.set_xlabel(time_label(pairs[0][1]))
        ax.set_title(ylabels[name].split(" (")[0])
    handles = [Line2D([], [], color=colors[lab], lw=2.5, label=lab) for lab, _ in pairs]
    handles += [h for h in axes[0, 0].get_lines() if h.get_label().startswith("$1/")]
    legend_outside(axes[0, -1], handles)
    fig.suptitle(title or "collapse metrics by method and ablation", fontsize=10)
    return fig


def predictor_rules(datasets, run: int = 0, title: str | None = None):
    """DirectPred and DirectCopy against a learned predictor: whichever of kNN accuracy, effective rank
    (or RankMe) over time and the final normalised spectrum s_j / s_0 the Datasets carry. Each run is
    labelled with its predictor kind (from the ``predictor_rule`` / ``predictor`` attributes or config).
    """
    pairs = _prepare(datasets, run)
    kinds = {lab: predictor_kind(ds) for lab, ds in pairs}
    shown = [f"{lab} [{kinds[lab]}]" if kinds[lab] not in lab else lab for lab, _ in pairs]
    colors = {lab: _color(i) for i, (lab, _) in enumerate(pairs)}
    rank = next((n for n in ("effective_rank", "rankme") if any(n in ds for _, ds in pairs)), None)
    panels = [n for n in ("knn_acc", rank) if n and any(n in ds for _, ds in pairs)]
    if any("s" in ds for _, ds in pairs):
        panels.append("spectrum")
    if not panels:
        raise ValueError("no Dataset has 'knn_acc', 'effective_rank', 'rankme' or 's'")
    fig, axes = new_figure(ncols=len(panels), width=3.2, legend=True)
    for ax, name in zip(axes[0], panels):
        for lab, ds in pairs:
            if name == "spectrum":
                if "s" not in ds:
                    continue
                spectra = ds["s"].values.astype(float)
                rows = np.flatnonzero(np.isfinite(spectra).any(axis=-1))
                if rows.size == 0:
                    continue
                s = spectra[rows[-1]]  # the last probe with a spectrum (a kNN-only record has none)
                ax.plot(np.arange(s.size), np.clip(s / np.nanmax(s), 1e-12, None), color=colors[lab], lw=1.3,
                        marker=".", ms=3)
            elif name in ds:
                ok = np.isfinite(ds[name].values)
                ax.plot(ds["time"].values[ok], ds[name].values[ok], color=colors[lab], lw=1.3, marker=".", ms=3)
        if name == "spectrum":
            ax.set_yscale("log")
            ax.set_xlabel("mode j (descending $s_j$)")
            ax.set_ylabel(r"$s_j / s_0$ at the last time")
            ax.set_title("final spectrum of F")
        else:
            ax.set_xlabel(time_label(pairs[0][1]))
            ax.set_ylabel({"knn_acc": "kNN accuracy", "effective_rank": "effective rank", "rankme": "RankMe"}[name])
            ax.set_title(ax.get_ylabel())
    handles = [Line2D([], [], color=colors[lab], lw=2.5, label=text) for (lab, _), text in zip(pairs, shown)]
    legend_outside(axes[0, -1], handles)
    fig.suptitle(title or "predictor rules: DirectPred / DirectCopy vs a learned predictor", fontsize=10)
    return fig
