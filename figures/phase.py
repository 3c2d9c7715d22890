"""Collapse phase diagrams from a sweep Dataset (verdict per run over two swept coordinates)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .style import new_figure

__all__ = ["collapse_phase_diagram"]

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
