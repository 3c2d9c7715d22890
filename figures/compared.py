"""Predicted against measured eigenvalue trajectories s_j(t) and p_j(t) on shared axes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.lines import Line2D

from ._inputs import one_run, shared_units
from .style import ROLE, legend_outside, mode_colors, new_figure, time_label

__all__ = ["trajectories_compared"]

#: default number of leading modes drawn
TOP_MODES = 4
#: s below this fraction of the largest drawn s is clipped on the log axis (a collapsed mode reaches 0)
LOG_FLOOR = 1e-12


def _sides(comparison_or_pred: xr.Dataset, measured: xr.Dataset | None, run: int):
    """{'predicted': (time, {var: (time, mode) array}), 'measured': ...} from either calling form."""
    first = one_run(comparison_or_pred, run)
    if measured is None:
        if "s_predicted" not in first or "s_measured" not in first:
            raise ValueError("a comparison Dataset needs s_predicted and s_measured (has: "
                             f"{', '.join(sorted(first.data_vars))}); or pass predicted and measured Datasets")
        out = {}
        for side in ("predicted", "measured"):
            out[side] = {v: first[f"{v}_{side}"] for v in ("s", "p") if f"{v}_{side}" in first}
        return first, first, out
    second = one_run(measured, run)
    shared_units([("predicted", first), ("measured", second)])
    for label, ds in (("predicted", first), ("measured", second)):
        if "s" not in ds:
            raise ValueError(f"the {label} Dataset has no variable 's'")
    out = {side: {v: ds[v] for v in ("s", "p") if v in ds}
           for side, ds in (("predicted", first), ("measured", second))}
    return first, second, out


def _log_axis(ax, values: np.ndarray) -> None:
    """Log y when there are positive values; the floor is the smallest positive value or LOG_FLOOR x max."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(LOG_FLOOR * positive.max(), positive.min() / 2))


def trajectories_compared(comparison_or_pred: xr.Dataset, measured: xr.Dataset | None = None,
                          modes: int | Sequence[int] = TOP_MODES, run: int = 0, title: str | None = None):
    """Predicted (lines) against measured (markers) s_j(t) (log scale) and p_j(t), one colour per mode.

    Args:
        comparison_or_pred: a comparison Dataset (``source = "comparison"``; variables ``s_predicted``,
            ``s_measured`` and optionally ``p_predicted``, ``p_measured``, each (time, mode), on one time
            axis), or the predicted contract Dataset when ``measured`` is given.
        measured: the measured contract Dataset (variables ``s``, optionally ``p``); its ``time`` must be
            in the same units as the prediction's (map steps to flow time with ``stopgrad compare``).
        modes: how many leading modes (int) or which mode indices.
        run: the sweep member, for Datasets with a ``run`` dim.

    Returns:
        A Figure with one panel for s (log y) and one for p when both sides have p.
    """
    pred_ds, meas_ds, sides = _sides(comparison_or_pred, measured, run)
    n_mode = sides["predicted"]["s"].sizes["mode"]
    idx = list(range(min(int(modes), n_mode))) if np.isscalar(modes) else [int(j) for j in modes]
    names = ["s"] + (["p"] if all("p" in v for v in sides.values()) else [])
    fig, axes = new_figure(ncols=len(names), width=3.4, legend=True)
    colors = mode_colors(len(idx))
    for ax, name in zip(axes[0], names):
        drawn = []
        for side, ds in (("predicted", pred_ds), ("measured", meas_ds)):
            da = sides[side][name]
            t = ds["time"].values
            for c, j in zip(colors, idx):
                y = da.isel(mode=j).values.astype(float)
                drawn.append(y)
                if side == "predicted":
                    ax.plot(t, y, color=c, lw=1.3)
                else:
                    ax.plot(t, y, ls="none", marker="o", ms=3.5, mfc="none", mec=c, mew=1.0)
        if name == "s":
            _log_axis(ax, np.concatenate(drawn))
            ax.set_ylabel("eigenvalue $s_j$ of $F$")
            ax.set_title("spectrum $s_j(t)$")
        else:
            ax.set_ylabel("$p_j = u_j^T W_p u_j$")
            ax.set_title("predictor eigenvalue $p_j(t)$")
        ax.set_xlabel(time_label(pred_ds))
    handles = [Line2D([], [], color=ROLE["reference"], lw=1.3, label="predicted"),
               Line2D([], [], color=ROLE["reference"], ls="none", marker="o", mfc="none", label="measured")]
    handles += [Line2D([], [], color=c, lw=3, label=f"mode {j}") for c, j in zip(colors, idx)]
    legend_outside(axes[0, -1], handles)
    fig.suptitle(title or f"{pred_ds.attrs.get('method', '')}: predicted vs measured trajectories", fontsize=10)
    return fig

