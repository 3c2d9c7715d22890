"""One look for every figure: sizes, fonts, colours, labels, legends, and saving to PNG and PDF.

Colours are the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"), distinguishable under the
common colour-vision deficiencies; many modes get the perceptually uniform ``viridis`` map instead.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib import cycler  # noqa: E402

__all__ = ["PALETTE", "ROLE", "legend_outside", "mode_colors", "new_figure", "save_figure", "time_label",
           "unique_handles"]

#: Okabe-Ito colours, in the order lines take them (yellow and black last: weak on white, and black is
#: kept for references).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
#: fixed meanings used across the gallery
ROLE = {
    "predicted": "#0072B2",  # blue: theory / prediction
    "measured": "#D55E00",  # vermillion: measurement
    "stable": "#009E73",  # bluish green: stable fixed point, survives
    "unstable": "#D55E00",  # vermillion: unstable fixed point, collapses
    "reference": "#000000",  # black: analytic references (parabola, boundary, 1/sqrt(d))
    "nullcline": "#555555",  # dark grey (modes take the palette's colours)
    "flow": "#BBBBBB",  # light grey streamlines
}
#: more modes than this get a sequential colour map instead of the qualitative palette
MAX_QUALITATIVE = len(PALETTE) - 2
#: inches added on the right of a figure whose legend sits outside its axes
LEGEND_WIDTH = 1.9

RC = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.framealpha": 0.85,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=list(PALETTE)),
}


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 3.4, height: float = 2.6, legend: bool = False, **kw):
    """A figure of ``nrows x ncols`` panels, each ``width x height`` inches, in the house style; ``legend``
    adds LEGEND_WIDTH inches on the right for a :func:`legend_outside`."""
    total = width * ncols + (LEGEND_WIDTH if legend else 0.0)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(total, height * nrows), squeeze=False,
                                 constrained_layout=True, **kw)
    return fig, axes


def save_figure(fig, path: str | Path, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Save ``fig`` as path.<fmt> for each format; returns the written paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with plt.rc_context(RC):
        for fmt in formats:
            target = path.with_suffix(f".{fmt}")
            fig.savefig(target, bbox_inches="tight")
            out.append(target)
    plt.close(fig)
    return out


def time_label(ds: xr.Dataset) -> str:
    """The x-axis label for a Dataset's ``time``: flow time (theory) or optimizer steps (measured)."""
    units = ds["time"].attrs.get("units", "")
    return "flow time t" if units == "flow" else "optimizer step"


def mode_colors(k: int) -> list:
    """``k`` colours for modes j = 0..k-1: the qualitative palette for few modes, viridis for many."""
    if k <= MAX_QUALITATIVE:
        return list(PALETTE[:k])
    return [plt.get_cmap("viridis")(x) for x in np.linspace(0.0, 0.9, k)]


def legend_outside(ax, handles: list | None = None, **kw) -> None:
    """A legend to the right of ``ax``, so it never covers data: of ``handles`` (artists with labels), else
    of every labelled artist of ``ax``, one entry per label (no-op when nothing is labelled)."""
    if handles is None:
        handles = unique_handles([ax])
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kw)


def unique_handles(axes) -> list:
    """The labelled artists of all ``axes``, the first one of each label."""
    seen, out = set(), []
    for ax in np.ravel(axes):
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in seen:
                seen.add(label)
                out.append(h)
    return out
