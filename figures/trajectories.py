"""Trajectory figures of one run of a data-contract Dataset (theory, sampled or measured)."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from .style import ROLE, legend_outside, mode_colors, new_figure, time_label

__all__ = ["eigenvalue_trajectories"]


def eigenvalue_trajectories(ds: xr.Dataset, run: int = 0, max_modes: int = 32, title: str | None = None):
    """Panels over time for one run: eigenvalues s_j of F (log scale), predictor eigenvalues p_j with
    the alignment cos(W_p u_j, u_j), and the commutator / Theorem 1 residual where present."""
    one = ds.isel(run=run) if "run" in ds.dims else ds
    t = one["time"].values
    k = min(one.sizes.get("mode", 0), max_modes)
    has_p = "p" in one
    ncols = 3 if has_p else 1
    fig, axes = new_figure(ncols=ncols, legend=has_p)
    colors = mode_colors(k)
    ax = axes[0, 0]
    s = one["s"].values[:, :k]
    floor = max(np.nanmax(np.abs(s)) * 1e-12, 1e-300)
    for j in range(k):
        ax.semilogy(t, np.clip(s[:, j], floor, None), color=colors[j], lw=0.9)
    ax.set_xlabel(time_label(one))
    ax.set_ylabel("eigenvalue $s_j$ of $F$")
    ax.set_title("spectrum of F")
    if has_p:
        ax = axes[0, 1]
        p = one["p"].values[:, :k]
        for j in range(k):
            ax.plot(t, p[:, j], color=colors[j], lw=0.9)
        ax.set_xlabel(time_label(one))
        ax.set_ylabel("$p_j = u_j^T W_p u_j$")
        ax.set_title("predictor along $u_j$")
        ax = axes[0, 2]
        if "alignment" in one:
            al = one["alignment"].values[:, :k]
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-collapsed rows are NaN
                mean_al = np.nanmean(np.abs(al), axis=1)
            ax.plot(t, mean_al, color=ROLE["reference"], lw=1.2, label="mean |cos(W_p u_j, u_j)| (live modes)")
        if "commutator" in one:
            ax.plot(t, one["commutator"].values, color=ROLE["measured"], lw=1.2, label="commutator (rel.)")
        ax.set_xlabel(time_label(one))
        ax.set_ylim(-0.02, 1.05)
        ax.set_title("eigenspace alignment")
        legend_outside(ax)
    src = ds.attrs.get("source", "")
    fig.suptitle(title or f"{ds.attrs.get('method', '')} ({src}), run {run}", fontsize=10)
    return fig
