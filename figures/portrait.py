"""The (p, s) phase portrait of one eigenmode and the 1-D phase line of p (reference/theory.md §3).

The curves are closed forms of the per-mode flow at a fixed EMA ratio tau (see :mod:`._mode_theory` for
the equations with their section numbers): the invariant parabola s = p^2/alpha_p (Eq. 14), the nullclines
of Eqs. 11-12, the fixed points classified by their Jacobian, and the streamlines of the vector field.
Measured or integrated trajectories (p_j(t), s_j(t)) are drawn over them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.lines import Line2D

from . import _mode_theory as mt
from ._inputs import mode_params, one_run
from .style import ROLE, legend_outside, mode_colors, new_figure, unique_handles

__all__ = ["phase_line", "phase_portrait"]

#: leading modes drawn as trajectories in the portrait
PORTRAIT_MODES = 6
#: at most this many sweep members (with the same parameters) are drawn in one portrait
MAX_RUNS = 24
#: run coordinates that set the portrait's flow; sweep members that differ in them are not drawn together
PARAM_COORDS = ("eta", "alpha_p", "sigma2", "tau", "beta", "eta_p")
#: streamline grid points per axis
GRID = 41
#: margin around the drawn content, as a fraction of its span
PAD = 0.08
#: fixed-point marker styles: (face, edge, marker, legend label); 'gid' of the artist = 'fixed-point-<kind>'
FIXED_STYLE = {
    "stable": (ROLE["stable"], ROLE["stable"], "o", "stable fixed point"),
    "saddle": ("white", ROLE["unstable"], "o", "saddle (unstable) fixed point"),
    "unstable": ("white", ROLE["unstable"], "s", "unstable fixed point"),
    "degenerate": ("white", ROLE["reference"], "D", "degenerate fixed point"),
    "semi-stable": (ROLE["reference"], ROLE["reference"], "o", "semi-stable fixed point"),
}


def _same_params(ds: xr.Dataset, run: int) -> list[int]:
    """The sweep members that share run ``run``'s flow parameters (they live in one portrait)."""
    if "run" not in ds.dims:
        return [0]
    keep = np.ones(ds.sizes["run"], dtype=bool)
    for name in PARAM_COORDS:
        if name in ds.coords and ds.coords[name].dims == ("run",):
            v = ds.coords[name].values
            keep &= v == v[run]
    return [int(r) for r in np.flatnonzero(keep)][:MAX_RUNS]


def _pick(arr: np.ndarray, modes) -> np.ndarray:
    """Columns of a (time, mode) array: the leading ``modes`` (int) or the given indices."""
    idx = range(min(int(modes), arr.shape[-1])) if np.isscalar(modes) else [int(j) for j in modes]
    return arr[:, list(idx)]


def _trajectories(ds: xr.Dataset | None, measured: xr.Dataset | None, run: int, modes):
    """[(style, p (time, n), s (time, n))], style 'line' (prediction/theory) or 'markers' (measured); the
    leading ``modes`` of every sweep member that shares run ``run``'s parameters, side by side."""
    out = []
    for d, forced in ((ds, None), (measured, "markers")):
        if d is None:
            continue
        pairs = []
        if "s_predicted" in d and "p_predicted" in d:
            pairs.append(("line", "p_predicted", "s_predicted"))
        if "s_measured" in d and "p_measured" in d:
            pairs.append(("markers", "p_measured", "s_measured"))
        if "s" in d and "p" in d:
            pairs.append((forced or ("markers" if d.attrs.get("source") == "measured" else "line"), "p", "s"))
        members = _same_params(d, run) if forced is None else [run if "run" in d.dims else 0]
        for style, p_name, s_name in pairs:
            cols = [(_pick(one_run(d, r)[p_name].values, modes), _pick(one_run(d, r)[s_name].values, modes))
                    for r in members]
            out.append((style, np.concatenate([c[0] for c in cols], axis=1),
                        np.concatenate([c[1] for c in cols], axis=1)))
    return out


def _limits(prm: mt.ModeParams, series, points) -> tuple[tuple[float, float], tuple[float, float]]:
    p_vals = [0.0, prm.tau / prm.lam] + [fp.p for fp in points]
    s_vals = [0.0] + [fp.s for fp in points] + [(prm.tau / prm.lam) ** 2 / prm.alpha_p]
    for _, p, s in series:
        ok = np.isfinite(p) & np.isfinite(s)
        p_vals += [float(p[ok].min()), float(p[ok].max())] if ok.any() else []
        s_vals += [float(s[ok].max())] if ok.any() else []
    p_lo, p_hi = min(p_vals), max(p_vals)
    s_hi = max(s_vals)
    dp = (p_hi - p_lo) or 1.0
    return (p_lo - PAD * dp, p_hi + PAD * dp), (-PAD * s_hi, s_hi * (1 + PAD))


def _draw_fixed_point(ax, p: float, s: float, kind: str, seen: set) -> None:
    face, edge, marker, label = FIXED_STYLE[kind]
    (line,) = ax.plot([p], [s], ls="none", marker=marker, ms=7.5, mfc=face, mec=edge, mew=1.5, zorder=5,
                      label=None if kind in seen else label, clip_on=False)
    line.set_gid(f"fixed-point-{kind}")
    seen.add(kind)


def phase_portrait(ds: xr.Dataset | None = None, *, measured: xr.Dataset | None = None, run: int = 0,
                   modes: int | Sequence[int] = PORTRAIT_MODES, sigma2: float | None = None,
                   tau: float | None = None, eta: float | None = None, alpha_p: float | None = None,
                   title: str | None = None):
    """The (p, s) plane of one eigenmode: flow, invariant parabola, nullclines, fixed points, trajectories.

    Args:
        ds: a contract Dataset with ``s`` and ``p`` (time, mode) (theory: lines; ``source = "measured"``:
            markers), or a comparison Dataset with ``s_predicted``/``p_predicted`` (lines) and
            ``s_measured``/``p_measured`` (markers); None draws the theory alone from the keywords.
        measured: an optional second Dataset whose (p_j, s_j) are drawn as markers.
        run: the sweep member, for Datasets with a ``run`` dim.
        modes: how many leading modes (int) or which mode indices to draw; of a sweep, the modes of every
            member that shares run ``run``'s flow parameters (up to MAX_RUNS members).
        sigma2, tau, eta, alpha_p: flow-unit parameters (theory.md §1.2); each overrides the Dataset's
            coordinate, attribute or config value. tau defaults to 1 (the fixed points of §3.4 at tau = 1).

    Returns:
        A Figure with one panel. The fixed-point artists carry gid ``fixed-point-<kind>`` (kind: stable,
        saddle, unstable, degenerate) and their (p, s) as data.
    """
    prm = mode_params(ds, run, sigma2=sigma2, tau=tau, eta=eta, alpha_p=alpha_p)
    series = _trajectories(ds, measured, run, modes)
    points = mt.fixed_points(prm)
    (p_lo, p_hi), (s_lo, s_hi) = _limits(prm, series, points)
    fig, axes = new_figure(width=4.4, height=3.8, legend=True)
    ax = axes[0, 0]

    pg, sg = np.meshgrid(np.linspace(p_lo, p_hi, GRID), np.linspace(max(s_lo, 0.0), s_hi, GRID))
    dp, ds_ = mt.vector_field(pg, sg, prm)
    if np.any(dp != 0) or np.any(ds_ != 0):
        ax.streamplot(pg, sg, dp, ds_, color=ROLE["flow"], linewidth=0.6, density=0.9, arrowsize=0.7, zorder=1)

    p = np.linspace(p_lo, p_hi, 400)
    ax.plot(p, p**2 / prm.alpha_p, color=ROLE["reference"], ls="--", lw=1.2, zorder=3,
            label=r"invariant parabola $s = p^2/\alpha_p$")
    if prm.eta > 0:
        ax.plot(p, mt.p_nullcline(p, prm), color=ROLE["nullcline"], ls="-.", lw=1.2, zorder=3,
                label=r"nullcline $\dot p = 0$")
        ax.axhline(0.0, color=ROLE["nullcline"], ls=":", lw=1.4, zorder=3, label=r"nullclines $\dot s = 0$")
        for pv in mt.s_nullcline_p(prm):
            ax.axvline(pv, color=ROLE["nullcline"], ls=":", lw=1.4, zorder=3)
    else:  # eta = 0: s = 0 and p = tau/(1+sigma2) are whole lines of fixed points (theory.md §3.3)
        ax.axhline(0.0, color=ROLE["stable"], lw=2.0, alpha=0.7, zorder=3, label=r"fixed points ($\eta = 0$)")
        ax.axvline(prm.tau / prm.lam, color=ROLE["stable"], lw=2.0, alpha=0.7, zorder=3)

    for style, pv, sv in series:
        for j, c in enumerate(mode_colors(pv.shape[-1])):
            if style == "line":
                ax.plot(pv[:, j], sv[:, j], color=c, lw=1.3, zorder=4)
                ax.plot(pv[:1, j], sv[:1, j], ls="none", marker=".", color=c, zorder=4)  # the start
            else:
                ax.plot(pv[:, j], sv[:, j], ls="none", marker="o", ms=3.5, mfc="none", mec=c, zorder=4)

    seen: set = set()
    for fp in points:
        _draw_fixed_point(ax, fp.p, fp.s, fp.kind, seen)

    ax.set_xlim(p_lo, p_hi)
    ax.set_ylim(s_lo, s_hi)
    ax.set_xlabel(r"predictor eigenvalue $p_j$")
    ax.set_ylabel(r"eigenvalue $s_j$ of $F$")
    extra = []
    if series:
        extra.append(Line2D([], [], color=ROLE["reference"], lw=1.3, label="trajectory (theory)"))
        if any(style == "markers" for style, _, _ in series):
            extra.append(Line2D([], [], color=ROLE["reference"], ls="none", marker="o", mfc="none",
                                label="trajectory (measured)"))
    legend_outside(ax, unique_handles([ax]) + extra)
    ax.set_title(title or (rf"mode flow: $\sigma^2$={prm.sigma2:g}, $\tau$={prm.tau:g}, $\eta$={prm.eta:g}, "
                           rf"$\alpha_p$={prm.alpha_p:g}"))
    return fig


def _regime(eta: float, eta_c: float) -> str:
    if eta == 0:
        return r"(a) $\eta = 0$"
    if eta <= eta_c:
        return rf"(b) $0 < \eta = {eta:.3g} \leq \eta_c$"
    return rf"(c) $\eta = {eta:.3g} > \eta_c$"


def phase_line(sigma2: float, tau: float = 1.0, etas: Sequence[float] | None = None, title: str | None = None):
    """The 1-D phase line of p on the invariant parabola, p' = p^2 [tau - (1+sigma2) p] - eta p (Eq. 16,
    theory.md §3.4), one panel per weight decay: its rate curve, fixed points (filled: stable; open:
    unstable; half: semi-stable) and arrows for the direction of the flow.

    Args:
        sigma2: augmentation variance; tau: the EMA ratio (1 for SimSiam and BYOL's fixed points).
        etas: weight decays in flow units, one panel each; default (0, eta_c/2, 3 eta_c/2), the regimes
            (a), (b) and (c) with eta_c = tau^2 / (4 (1+sigma2)).

    Returns:
        A Figure with one panel per eta; the fixed-point artists carry gid ``fixed-point-<kind>``.
    """
    eta_c = mt.eta_critical(sigma2, tau)
    etas = (0.0, 0.5 * eta_c, 1.5 * eta_c) if etas is None else tuple(float(e) for e in etas)
    fig, axes = new_figure(ncols=len(etas), width=2.9, height=2.5, legend=True)
    p_star = tau / (1.0 + sigma2)
    p = np.linspace(-0.25 * p_star, 1.25 * p_star, 400)
    for ax, eta in zip(axes[0], etas):
        rate = mt.phase_line_rate(p, sigma2, tau, eta)
        ax.plot(p, rate, color=ROLE["predicted"], lw=1.4, label=r"$\dot p$")
        ax.axhline(0.0, color=ROLE["reference"], lw=0.8)
        points = mt.phase_line_points(sigma2, tau, eta)
        seen: set = set()
        for pv, kind in points:
            face, edge, marker, label = FIXED_STYLE[kind]
            (line,) = ax.plot([pv], [0.0], ls="none", marker=marker, ms=7.5, mfc=face, mec=edge, mew=1.5, zorder=5,
                              fillstyle="left" if kind == "semi-stable" else "full",
                              label=None if kind in seen else label)
            line.set_gid(f"fixed-point-{kind}")
            seen.add(kind)
        # arrows between consecutive fixed points (and beyond the outer ones), pointing along sign(p')
        fixed = [pv for pv, _ in points]
        edges = [p[0]] + fixed + [p[-1]]
        for a, b in zip(edges[:-1], edges[1:]):
            mid = 0.5 * (a + b)
            direction = np.sign(mt.phase_line_rate(mid, sigma2, tau, eta))
            if direction:
                ax.plot([mid], [0.0], ls="none", marker=">" if direction > 0 else "<", ms=7,
                        color=ROLE["reference"], zorder=4)
        ax.set_xlabel(r"$p$ on the parabola $s = p^2/\alpha_p$")
        ax.set_ylabel(r"$\dot p$ (per unit flow time)")
        ax.set_title(_regime(eta, eta_c), fontsize=9)
    legend_outside(axes[0, -1], unique_handles(axes))
    fig.suptitle(title or rf"phase line of $p$: $\sigma^2$={sigma2:g}, $\tau$={tau:g}, "
                          rf"$\eta_c = \tau^2/(4(1+\sigma^2))$ = {eta_c:.4g}", fontsize=10)
    return fig
