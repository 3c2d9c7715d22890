"""Collapse phase diagrams from a sweep Dataset (verdict per run over two swept coordinates)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .style import ROLE, legend_outside, new_figure

__all__ = ["collapse_phase_diagram", "phase_diagram_measured"]

_ORDER = ("collapsed", "partial", "non-collapsed")


def collapse_phase_diagram(ds: xr.Dataset, x: str, y: str, boundary=None, title: str | None = None):
    """Fraction of surviving modes (n_alive / k) on the (x, y) grid of swept coordinates, averaged over
    any other swept coordinate (e.g. seeds). ``boundary``: optional (xs, ys) analytic curve to overlay."""
    if x not in ds.coords or y not in ds.coords:
        raise ValueError(f"the Dataset has no swept coordinates {x!r} and {y!r} (has {sorted(ds.coords)})")
    xs = np.unique(ds[x].values)
    ys = np.unique(ds[y].values)
    k = ds.sizes["mode"]
    frac = np.full((len(ys), len(xs)), np.nan)
    alive = np.where(ds["n_alive"].values >= 0, ds["n_alive"].values / k, np.nan)
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            sel = (ds[x].values == xv) & (ds[y].values == yv)
            if sel.any():
                frac[i, j] = np.nanmean(alive[sel])
    fig, axes = new_figure(width=4.0, height=3.0)
    ax = axes[0, 0]
    mesh = ax.pcolormesh(_edges(xs), _edges(ys), frac, cmap="viridis", vmin=0, vmax=1, shading="flat")
    fig.colorbar(mesh, ax=ax, label="fraction of modes alive at $t_{end}$")
    if boundary is not None:
        ax.plot(boundary[0], boundary[1], "w--", lw=1.5, label="theory")
        ax.legend(loc="best")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or "collapse phase diagram")
    return fig


def _edges(v: np.ndarray) -> np.ndarray:
    if len(v) == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = 0.5 * (v[1:] + v[:-1])
    return np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])


#: an axis whose positive values span more than this ratio is drawn on a log scale
LOG_SPAN = 100.0


def _axis_scale(values: np.ndarray) -> str:
    v = np.asarray(values, dtype=float)
    return "log" if np.all(v > 0) and v.max() / v.min() > LOG_SPAN else "linear"


def _cell_edges(v: np.ndarray, scale: str) -> np.ndarray:
    return np.exp(_edges(np.log(v))) if scale == "log" else _edges(v)


def phase_diagram_measured(ds: xr.Dataset, title: str | None = None):
    """A hyperparameter phase diagram: the theory's collapse verdict as background, the measured verdicts
    as points (filled colour = measured verdict; circle = agrees with theory, cross = disagrees), the
    analytic boundary as a line, and the agreement in percent in the title.

    Input contract (one Dataset):
        dims: ``run`` (one short run each), and ``boundary_point`` when a boundary is given.
        attrs: ``x`` and ``y``, the names of the two swept hyperparameters drawn on the axes (e.g. ``eta``
            and ``beta``, or ``eta`` and ``alpha_p``); ``source``; optionally ``method``.
        coords along ``run``: one per swept hyperparameter, including ``x`` and ``y`` (others, e.g.
            ``seed``, are averaged over in the background).
        data vars: ``collapsed_measured`` (run) int8, 1 = the run collapsed, 0 = it did not;
            ``collapsed_predicted`` (run) int8, the theory's verdict for the same hyperparameters. Any
            other value (e.g. -1 for a failed run) is drawn grey and not scored.
            Optional ``boundary_x``, ``boundary_y`` (boundary_point): the analytic boundary (eta_c, the
            basin edge, ...), in the units of the axes.

    Returns:
        A Figure with one panel.
    """
    for key in ("x", "y"):
        if key not in ds.attrs:
            raise ValueError(f"a phase-diagram Dataset needs attribute {key!r} (the swept coordinate on that axis)")
    x, y = str(ds.attrs["x"]), str(ds.attrs["y"])
    for name in (x, y, "collapsed_measured", "collapsed_predicted"):
        if name not in ds.variables:
            raise ValueError(f"the phase-diagram Dataset lacks {name!r} (has: {', '.join(sorted(ds.variables))})")
    xv, yv = ds[x].values.astype(float), ds[y].values.astype(float)
    meas = ds["collapsed_measured"].values.astype(int)
    pred = ds["collapsed_predicted"].values.astype(int)
    scored = np.isin(meas, (0, 1)) & np.isin(pred, (0, 1))
    agree = scored & (meas == pred)
    xs, ys = np.unique(xv), np.unique(yv)
    bg = np.full((len(ys), len(xs)), np.nan)
    for i, yy in enumerate(ys):
        for j, xx in enumerate(xs):
            sel = (xv == xx) & (yv == yy) & np.isin(pred, (0, 1))
            if sel.any():
                bg[i, j] = pred[sel].mean()
    fig, axes = new_figure(width=3.8, height=3.4, legend=True)
    ax = axes[0, 0]
    xscale, yscale = _axis_scale(xs), _axis_scale(ys)
    cmap = LinearSegmentedColormap.from_list("verdict", [ROLE["stable"], ROLE["unstable"]])
    ax.pcolormesh(_cell_edges(xs, xscale), _cell_edges(ys, yscale), bg, cmap=cmap, vmin=0, vmax=1, alpha=0.28,
                  shading="flat", zorder=0)
    ax.set_xscale(xscale)
    ax.set_yscale(yscale)
    if "boundary_x" in ds and "boundary_y" in ds:
        ax.plot(ds["boundary_x"].values, ds["boundary_y"].values, color=ROLE["reference"], lw=1.5, zorder=2)
    face = np.where(meas == 1, ROLE["unstable"], np.where(meas == 0, ROLE["stable"], "#999999"))
    for mask, marker, size in ((agree, "o", 28), (scored & ~agree, "X", 60), (~scored, "o", 18)):
        if mask.any():
            ax.scatter(xv[mask], yv[mask], c=list(face[mask]), marker=marker, s=size, edgecolors="black",
                       linewidths=0.6, zorder=3)
    ax.set_xlim(*_cell_edges(xs, xscale)[[0, -1]])
    ax.set_ylim(*_cell_edges(ys, yscale)[[0, -1]])
    ax.set_xlabel(_LABELS.get(x, x))
    ax.set_ylabel(_LABELS.get(y, y))
    handles = [
        Patch(facecolor=ROLE["unstable"], alpha=0.28, label="theory: collapses"),
        Patch(facecolor=ROLE["stable"], alpha=0.28, label="theory: survives"),
        Line2D([], [], ls="none", marker="o", mfc=ROLE["unstable"], mec="black", label="measured: collapsed"),
        Line2D([], [], ls="none", marker="o", mfc=ROLE["stable"], mec="black", label="measured: survived"),
        Line2D([], [], ls="none", marker="o", mfc="white", mec="black", label="agrees with theory"),
        Line2D([], [], ls="none", marker="X", ms=8, mfc="white", mec="black", label="disagrees"),
    ]
    if "boundary_x" in ds and "boundary_y" in ds:
        handles.append(Line2D([], [], color=ROLE["reference"], lw=1.5, label="analytic boundary"))
    if (~scored).any():
        handles.append(Line2D([], [], ls="none", marker="o", mfc="#999999", mec="black", label="not scored"))
    legend_outside(ax, handles)
    n = int(scored.sum())
    pct = 100.0 * agree.sum() / n if n else float("nan")
    ax.set_title(title or f"{ds.attrs.get('method', '')} {ds.attrs.get('source', '')}: "
                          f"agreement {pct:.1f}% of {n} runs".strip())
    return fig


#: axis labels (with units) for the usual swept hyperparameters; others are labelled by their name
_LABELS = {
    "eta": r"weight decay $\eta$ (flow units)",
    "beta": r"EMA rate $\beta$ (flow units)",
    "alpha_p": r"predictor lr ratio $\alpha_p$",
    "sigma2": r"augmentation variance $\sigma^2$",
    "p0": r"initial predictor eigenvalue $p(0)$",
    "tau": r"EMA ratio $\tau$",
    "weight_decay": "weight decay (optimizer units)",
    "ema_momentum": r"EMA momentum $\gamma_a$",
    "predictor_lr_ratio": "predictor lr ratio (optimizer)",
}
