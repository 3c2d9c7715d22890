"""GSG figures (docs/gsg_theory.md): negative-pair distance over time, no-predictor runs, quality vs batch.

Inputs are contract Datasets with a ``run`` dim whose coords include ``method`` (and ``seed``,
``encoder``, ``batch`` where relevant). Bands are mean +- 1.96 standard errors over the runs of a group.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .style import new_figure

__all__ = ["gsg_neg_dist_over_time", "gsg_no_predictor", "gsg_quality_vs_batch", "gsg_real_network_over_time",
           "t_quantile_975"]

Z95 = 1.96
# two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (standard tables, 3 decimals); above 30 the
# Cornish-Fisher expansion in 1/df around the normal quantile (relative error < 1e-4 there)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
METHOD_COLORS = {"simsiam": "C0", "simsiam-gsg": "C3", "simsiam-gsg-reverse": "C2", "simsiam-random": "C4", "gsg": "C3", "gsg-reverse": "C2", "simclr": "C1", "moco": "C5"}


def _time(ds: xr.Dataset) -> np.ndarray:
    """Flow time for sampled runs (their ``flow_time``, identical across runs of one lr), else ``time``."""
    if "flow_time" in ds:
        return np.asarray(ds["flow_time"].values[0])
    return np.asarray(ds["time"].values)


def _band(ax, t, y, color, label, style="-", t_interval=False):
    """Mean over rows of y (runs, time) with a band of +- Z95 SE (``t_interval``: t_{0.975, n-1} SE)."""
    y = np.asarray(y, dtype=float)
    m = np.nanmean(y, axis=0)
    n = y.shape[0]
    factor = (t_quantile_975(n - 1) if t_interval else Z95) if n > 1 else 0.0
    h = factor * np.nanstd(y, axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(m)
    ax.plot(t, m, style, color=color, label=label, lw=1.3)
    ax.fill_between(t, m - h, m + h, color=color, alpha=0.2, lw=0)


def _finish(fig, axes, title):
    axes[0, 0].legend(loc="best", fontsize=6)
    if title:
        fig.suptitle(title)
    return fig


def _select(ds: xr.Dataset, **coords) -> xr.Dataset:
    mask = np.ones(ds.sizes["run"], dtype=bool)
    for k, v in coords.items():
        mask &= np.asarray(ds[k].values) == v
    return ds.isel(run=np.flatnonzero(mask))


def gsg_neg_dist_over_time(worlds: dict[str, xr.Dataset], variables=("neg_dist", "uniformity"),
                           methods=("simsiam", "gsg", "gsg-reverse"), title: str | None = None):
    """One panel per variable: each method's mean over seeds in each world (solid for the first world,
    dashed, dotted for the next). ``worlds`` maps a label ("expected flow", "sampled", "convnet") to a
    Dataset. Returns the figure."""
    fig, axes = new_figure(ncols=len(variables))
    styles = ["-", "--", ":"]
    for j, var in enumerate(variables):
        ax = axes[0, j]
        for w, (label, ds) in enumerate(worlds.items()):
            t = _time(ds)
            for m in methods:
                sel = _select(ds, method=m)
                if sel.sizes["run"] == 0 or var not in sel:
                    continue
                _band(ax, t, sel[var].values, METHOD_COLORS.get(m, "k"), f"{m} ({label})", styles[w % 3])
        ax.set_xlabel("flow time t")
        ax.set_ylabel(var)
    return _finish(fig, axes, title)


def gsg_no_predictor(ds: xr.Dataset, variables=("std_l2", "effective_rank", "neg_dist"), title: str | None = None):
    """No-predictor runs: one panel per variable, one line per (encoder, method), mean +- CI over seeds;
    the isotropic std_l2 level 1/sqrt(n2) dotted where ``n2`` is an attribute."""
    fig, axes = new_figure(ncols=len(variables))
    t = _time(ds)
    encoders = list(dict.fromkeys(ds["encoder"].values.tolist())) if "encoder" in ds.coords else [None]
    methods = list(dict.fromkeys(ds["method"].values.tolist()))
    for j, var in enumerate(variables):
        ax = axes[0, j]
        for e, enc in enumerate(encoders):
            for m in methods:
                sel = _select(ds, method=m, **({"encoder": enc} if enc is not None else {}))
                if sel.sizes["run"]:
                    _band(ax, t, sel[var].values, METHOD_COLORS.get(m, "k"), f"{m}{'' if enc is None else ' / ' + enc}",
                          "-" if e == 0 else "--")
        if var == "std_l2" and "n2" in ds.attrs:
            ax.axhline(1 / np.sqrt(float(ds.attrs["n2"])), color="0.5", ls=":", lw=1)
        ax.set_xlabel("flow time t")
        ax.set_ylabel(var)
    return _finish(fig, axes, title)


def gsg_quality_vs_batch(ds: xr.Dataset, variable: str = "knn_acc", title: str | None = None):
    """Final ``variable`` against the batch size (log axis), one line per method, mean +- CI over seeds."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    batches = np.unique(ds["batch"].values)
    for m in dict.fromkeys(ds["method"].values.tolist()):
        means, halves = [], []
        for b in batches:
            y = _select(ds, method=m, batch=b)[variable].values[:, -1]
            means.append(np.nanmean(y))
            halves.append(Z95 * np.nanstd(y, ddof=1) / np.sqrt(len(y)) if len(y) > 1 else 0.0)
        ax.errorbar(batches, means, yerr=halves, marker="o", ms=3, capsize=2, color=METHOD_COLORS.get(m, "k"), label=m)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"final {variable}")
    ax.legend(loc="best")
    if title:
        ax.set_title(title)
    return fig


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}, the half-width factor of a 95% t-interval with ``df`` degrees of freedom (from T975)."""
    if df < 1:
        raise ValueError(f"df = {df}: a t-interval needs at least 2 samples")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959963984540054  # the normal 0.975 quantile
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def gsg_real_network_over_time(runs: dict[str, list[xr.Dataset]], variables=("neg_dist", "std_l2"),
                               title: str | None = None):
    """Real-network runs over training (``stopgrad train`` metrics.nc): one panel per variable, one line per
    method, the mean over seeds with a 95% t-interval band (mean +- t_{0.975, n-1} SE).

    Args:
        runs: method name ("simsiam", "simsiam-gsg") -> one measured Dataset per seed, probed at the same
            steps (``time`` in optimizer steps, ``epoch`` coordinate; ``mode`` of size d for the isotropic
            std_l2 level 1/sqrt(d), drawn dotted). Probe times with no measurement (NaN) are dropped.
        variables: scalar (time,) variables to plot.

    Returns:
        The figure; x is the epoch.
    """
    fig, axes = new_figure(ncols=len(variables))
    for j, var in enumerate(variables):
        ax = axes[0, j]
        for m, seeds in runs.items():
            y = np.stack([np.asarray(ds[var].values, dtype=float) for ds in seeds])
            keep = np.all(np.isfinite(y), axis=0)
            x = np.asarray(seeds[0]["epoch"].values, dtype=float)[keep]
            _band(ax, x, y[:, keep], METHOD_COLORS.get(m, "k"), f"{m} (n={len(seeds)})", t_interval=True)
        if var == "std_l2":
            d = next(iter(runs.values()))[0].sizes.get("mode")
            if d:
                ax.axhline(1 / np.sqrt(d), color="0.5", ls=":", lw=1, label="isotropic 1/sqrt(d)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(var)
    return _finish(fig, axes, title)
