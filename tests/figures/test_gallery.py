"""The figure gallery on small real contract Datasets (integrated with stopgrad.dynamics.simulate).

What is checked against independent numbers: the fixed points the portrait and the phase line draw
(theory.md §3.4's check line), the nullcline the portrait draws (Eq. 11 evaluated here), the agreement in
the phase diagram's title (counted here), the plotted data (the Dataset's values), and which files the
gallery and the CLI write.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from scipy.integrate import solve_ivp

from stopgrad.analysis import build_dataset, effective_rank, std_of_l2_normalized, symmetric_part_norms, write_netcdf
from stopgrad.cli import main
from stopgrad.dynamics import DataSpec, InitSpec, LinearModel, ModeInit, RuleSpec, SampledSpec, Simulation, simulate
import torch
from stopgrad.figures import (
    alignment_and_commutator,
    collapse_metrics,
    gallery_plan,
    phase_diagram_measured,
    phase_line,
    phase_portrait,
    predictor_rules,
    predictor_symmetry,
    render_gallery,
    trajectories_compared,
)

# theory.md §3.4, check line: sigma2 = 0.5, tau = 1, alpha_p = 1, eta = 0.05
SIGMA2, TAU, ALPHA_P, ETA = 0.5, 1.0, 1.0, 0.05
P_MINUS, P_PLUS = 0.05445, 0.61222
#: the check line prints five decimals: half a unit of the last digit
PRINTED = 0.5e-5
#: the closed forms are evaluated in float64 from O(1) inputs: a few ulps of relative error
FLOAT64 = 1e-12
ETA_C = TAU**2 / (4 * (1 + SIGMA2))  # = 1/6


def _torch_run(model, **kw):
    return simulate(Simulation(model=model, backend="torch", **kw))


@pytest.fixture(scope="module")
def modes_ds():
    """Per-mode SimSiam flow at the check line's parameters, four modes, two on each side of p*_-."""
    model = LinearModel(n1=4, n2=4, method="simsiam", beta=None, eta=ETA, alpha_p=ALPHA_P,
                        data=DataSpec(sigma2=SIGMA2), init=InitSpec(wa="copy"))
    return _torch_run(model, engine="modes", t_end=200.0, n_save=41,
                      modes=ModeInit(p0=(0.02, 0.05, 0.1, 0.7), s0=(0.3, 0.001, 0.05, 0.8)))


@pytest.fixture(scope="module")
def simsiam_pair():
    """The matrix flow of a small linear SimSiam and the same model trained by finite-batch SGD."""
    model = LinearModel(n1=8, n2=4, method="simsiam", beta=None, eta=ETA, init=InitSpec(wa="copy", seed=1))
    flow = _torch_run(model, t_end=10.0, n_save=21)
    sgd = simulate(Simulation(model=model, engine="sampled", t_end=10.0, n_save=21,
                              sampled=SampledSpec(lr=0.01, batch=64, gradient="wishart")))
    return flow, sgd


@pytest.fixture(scope="module")
def comparison(simsiam_pair):
    """A comparison Dataset in the shape the brief specifies (prediction: flow; measurement: SGD)."""
    flow, sgd = (d.isel(run=0) for d in simsiam_pair)
    return xr.Dataset(
        {"s_predicted": flow.s, "s_measured": sgd.s, "p_predicted": flow.p, "p_measured": sgd.p,
         "alignment": sgd.alignment, "commutator": sgd.commutator,
         "parabola_distance": np.abs(ALPHA_P * sgd.s - sgd.p**2)},
        attrs={"source": "comparison", "method": "simsiam", "config": simsiam_pair[0].attrs["config"],
               "stopgrad_version": "test", "created_at": "test"})


@pytest.fixture(scope="module")
def byol_runs():
    """Linear BYOL with a learned predictor and with DirectPred (theory.md §4)."""
    base = dict(n1=8, n2=4, method="byol", beta=0.5, eta=0.01)
    learned = _torch_run(LinearModel(**base), t_end=10.0, n_save=11)
    rule = _torch_run(LinearModel(**base, predictor="rule", rule=RuleSpec(name="directpred", eps=0.1, normalize=False)),
                      t_end=10.0, n_save=11)
    return learned, rule


@pytest.fixture(scope="module")
def phase_ds():
    """Measured verdicts from per-mode integrations on the parabola over (eta, p(0)); predicted verdicts
    from the closed-form basin edge p*_-(eta) and eta_c (theory.md §3.4)."""
    p0 = [0.03, 0.1, 0.2, 0.4]
    etas = [0.0, 0.05, 0.1, 0.15, 0.2]
    model = LinearModel(n1=1, n2=1, method="simsiam", beta=None, eta=ETA, data=DataSpec(sigma2=SIGMA2),
                        init=InitSpec(wa="copy"))
    sweep = _torch_run(model, engine="modes", t_end=2000.0, n_save=5, grid={"eta": etas, "p0": p0},
                       modes=ModeInit(on_parabola=True))
    eta, p = sweep["eta"].values, sweep["p0"].values
    disc = TAU**2 - 4 * eta * (1 + SIGMA2)
    edge = np.where(disc >= 0, (TAU - np.sqrt(np.clip(disc, 0, None))) / (2 * (1 + SIGMA2)), np.inf)
    predicted = (p < edge) | (eta > ETA_C)
    e = np.linspace(1e-4, ETA_C, 40)
    return xr.Dataset(
        {"collapsed_measured": ("run", (sweep["n_alive"].values == 0).astype(np.int8)),
         "collapsed_predicted": ("run", predicted.astype(np.int8)),
         "boundary_x": ("boundary_point", e),
         "boundary_y": ("boundary_point", (TAU - np.sqrt(TAU**2 - 4 * e * (1 + SIGMA2))) / (2 * (1 + SIGMA2)))},
        coords={"run": np.arange(eta.size), "eta": ("run", eta), "p0": ("run", p)},
        attrs={"x": "eta", "y": "p0", "source": "theory", "method": "simsiam"})


def _metrics_dataset(theory: xr.Dataset, n: int = 512) -> xr.Dataset:
    """std_l2 and effective rank of Gaussian features whose correlation has the flow's eigenvalues s_j(t)
    (features drawn in F's eigenbasis, seeded), as a measured-style contract Dataset over flow time."""
    s = np.clip(theory["s"].isel(run=0).values, 0, None)
    g = np.random.default_rng(0).standard_normal((n, s.shape[1]))
    std = np.array([std_of_l2_normalized(g * np.sqrt(row) + 0.0) if row.sum() > 0 else 0.0 for row in s])
    rank = np.array([effective_rank(g * np.sqrt(row)) for row in s])
    return build_dataset({"std_l2": std, "effective_rank": rank, "s": s}, time=theory["time"].values,
                         time_units="flow", source="sampled", method=theory.attrs["method"],
                         config=theory.attrs["config"], attrs={"predictor": theory.attrs["predictor"]})


@pytest.fixture(scope="module")
def ablations():
    """BYOL and its ablations (no predictor, no EMA = SimSiam, SimSiam without stop-gradient)."""
    base = dict(n1=8, n2=4, eta=0.02)
    runs = {
        "BYOL": LinearModel(**base, method="byol", beta=0.5),
        "no predictor": LinearModel(**base, method="byol", beta=0.5, predictor="identity"),
        "no EMA": LinearModel(**base, method="simsiam", beta=None),
        "no stop-gradient": LinearModel(**base, method="simsiam", beta=None, stop_grad=False),
    }
    return {k: _metrics_dataset(_torch_run(m, t_end=10.0, n_save=6)) for k, m in runs.items()}


def _fixed(ax, kind: str) -> np.ndarray:
    """(n, 2) data of the fixed-point artists of one kind."""
    pts = [np.column_stack(line.get_data()) for line in ax.get_lines() if line.get_gid() == f"fixed-point-{kind}"]
    return np.concatenate(pts) if pts else np.empty((0, 2))


def test_phase_portrait_draws_the_closed_form_fixed_points(modes_ds):
    fig = phase_portrait(modes_ds)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == r"predictor eigenvalue $p_j$" and "s_j" in ax.get_ylabel()
    saddle, stable = _fixed(ax, "saddle"), _fixed(ax, "stable")
    assert saddle.shape == (1, 2) and stable.shape == (2, 2)
    np.testing.assert_allclose(saddle[0, 0], P_MINUS, atol=PRINTED)
    np.testing.assert_allclose(sorted(stable[:, 0]), [0.0, P_PLUS], atol=PRINTED)
    # on the invariant parabola s = p^2 / alpha_p (Eq. 14)
    for p, s in np.concatenate([saddle, stable]):
        assert s == pytest.approx(p**2 / ALPHA_P, rel=FLOAT64, abs=FLOAT64)
    # the p' = 0 nullcline it draws satisfies Eq. 11: alpha_p s [tau - (1+sigma2) p] = eta p
    (null,) = [ln for ln in ax.get_lines() if ln.get_label() == r"nullcline $\dot p = 0$"]
    p, s = (np.asarray(v, float) for v in null.get_data())
    ok = np.isfinite(s)
    assert ok.sum() > 10
    np.testing.assert_allclose(ALPHA_P * s[ok] * (TAU - (1 + SIGMA2) * p[ok]), ETA * p[ok], rtol=FLOAT64, atol=FLOAT64)
    # the four trajectories are the Dataset's (p_j(t), s_j(t))
    traj = [ln for ln in ax.get_lines() if ln.get_gid() is None and len(ln.get_xdata()) == modes_ds.sizes["time"]]
    assert len(traj) == 4
    np.testing.assert_array_equal(traj[0].get_ydata(), modes_ds["s"].isel(run=0, mode=0).values)
    # keyword overrides change the parameters: eta above eta_c leaves only the stable origin
    ax2 = phase_portrait(modes_ds, eta=0.17).axes[0]
    assert _fixed(ax2, "saddle").size == 0 and _fixed(ax2, "stable").tolist() == [[0.0, 0.0]]


def test_phase_portrait_needs_its_parameters(comparison):
    bare = comparison.assign_attrs(config="{}")
    with pytest.raises(ValueError, match="sigma2, eta, alpha_p"):
        phase_portrait(bare)
    fig = phase_portrait(bare, sigma2=SIGMA2, eta=ETA, alpha_p=ALPHA_P)
    markers = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "o" and ln.get_gid() is None]
    assert len(markers) == comparison.sizes["mode"]  # the measured side as markers


def test_phase_line_three_regimes():
    fig = phase_line(SIGMA2, TAU, etas=(0.0, ETA, 0.17))
    a, b, c = fig.axes[:3]
    assert all(ax.get_xlabel().startswith("$p$") for ax in (a, b, c))
    assert a.get_title().startswith("(a)") and b.get_title().startswith("(b)") and c.get_title().startswith("(c)")
    np.testing.assert_allclose(_fixed(a, "semi-stable")[:, 0], [0.0], atol=0)
    np.testing.assert_allclose(_fixed(a, "stable")[:, 0], [TAU / (1 + SIGMA2)], rtol=FLOAT64)
    np.testing.assert_allclose(_fixed(b, "unstable")[:, 0], [P_MINUS], atol=PRINTED)
    np.testing.assert_allclose(sorted(_fixed(b, "stable")[:, 0]), [0.0, P_PLUS], atol=PRINTED)
    assert _fixed(c, "stable").tolist() == [[0.0, 0.0]] and _fixed(c, "unstable").size == 0
    # just below eta_c the basin edge is 0.3267 (theory.md §3.4)
    np.testing.assert_allclose(_fixed(phase_line(SIGMA2, TAU, etas=(0.1666,)).axes[0], "unstable")[:, 0], [0.3267],
                               atol=0.5e-4)
    assert "0.1667" in fig.get_suptitle()  # eta_c = 1/6


def test_trajectories_compared(comparison, simsiam_pair):
    fig = trajectories_compared(comparison)
    ax_s, ax_p = fig.axes[:2]
    assert ax_s.get_yscale() == "log" and ax_s.get_xlabel() == "flow time t" == ax_p.get_xlabel()
    lines = [ln for ln in ax_s.get_lines() if ln.get_linestyle() == "-"]
    markers = [ln for ln in ax_s.get_lines() if ln.get_marker() == "o"]
    k = comparison.sizes["mode"]
    assert len(lines) == k and len(markers) == k
    np.testing.assert_array_equal(lines[1].get_ydata(), comparison["s_predicted"].isel(mode=1).values)
    np.testing.assert_array_equal(markers[1].get_ydata(), comparison["s_measured"].isel(mode=1).values)
    # the two-Dataset form draws the same, and refuses mixed time units
    flow, sgd = simsiam_pair
    two = trajectories_compared(flow, sgd, modes=[0, 2])
    assert len([ln for ln in two.axes[1].get_lines() if ln.get_marker() == "o"]) == 2
    steps = sgd.assign_coords(time=sgd["time"].assign_attrs(units="step"))
    with pytest.raises(ValueError, match="mix time units"):
        trajectories_compared(flow, steps)


def test_phase_diagram_measured(phase_ds):
    fig = phase_diagram_measured(phase_ds)
    ax = fig.axes[0]
    meas, pred = phase_ds["collapsed_measured"].values, phase_ds["collapsed_predicted"].values
    pct = 100 * np.mean(meas == pred)
    assert re.search(rf"agreement {pct:.1f}% of {meas.size} runs", ax.get_title())
    assert "weight decay" in ax.get_xlabel() and "p(0)" in ax.get_ylabel()
    n_points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    assert n_points == meas.size
    (boundary,) = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == phase_ds.sizes["boundary_point"]]
    np.testing.assert_array_equal(boundary.get_xdata(), phase_ds["boundary_x"].values)
    bare = phase_ds.copy()
    bare.attrs = {}
    with pytest.raises(ValueError, match="attribute 'x'"):
        phase_diagram_measured(bare)


def test_alignment_and_commutator(simsiam_pair, byol_runs):
    flow, sgd = simsiam_pair
    fig = alignment_and_commutator({"flow": flow, "SGD": sgd, "BYOL": byol_runs[0]}, modes=2)
    ax_a, ax_c = fig.axes[:2]
    assert "cos(W_p u_j, u_j)" in ax_a.get_ylabel() and ax_c.get_yscale() == "log"
    assert ax_a.get_xlabel() == ax_c.get_xlabel() == "flow time t"
    assert len(ax_a.get_lines()) == 3 * 2 and len(ax_c.get_lines()) == 3
    np.testing.assert_array_equal(ax_c.get_lines()[1].get_ydata(), sgd["commutator"].isel(run=0).values)
    labels = [t.get_text() for t in ax_c.get_legend().get_texts()]
    assert labels[:3] == ["flow", "SGD", "BYOL"] and "mode 1" in labels


def _wp_flow_dataset() -> xr.Dataset:
    """W_p on the reduced manifold, W_p' = -(1+sigma2) W_p W_p^T W_p + tau W_p^T W_p - eta W_p (theory.md §2.3,
    Fig. 8's setting), from a non-symmetric start; its symmetric and antisymmetric parts over time."""
    n, eta = 3, 0.05
    w0 = np.random.default_rng(3).standard_normal((n, n)) * 0.5 + np.eye(n) * 0.5

    def rhs(_, y):
        w = y.reshape(n, n)
        return (-(1 + SIGMA2) * w @ w.T @ w + TAU * w.T @ w - eta * w).ravel()

    t = np.linspace(0.0, 60.0, 31)
    sol = solve_ivp(rhs, (0, t[-1]), w0.ravel(), t_eval=t, rtol=1e-10, atol=1e-12)
    wp = torch.as_tensor(sol.y.T.reshape(-1, n, n))
    sym, anti = (x.numpy() for x in symmetric_part_norms(wp))
    asym = 2 * anti / np.linalg.norm(sol.y.T.reshape(-1, n, n), axis=(1, 2))
    return build_dataset({"asymmetry": asym}, time=t, time_units="flow", source="theory", method="simsiam",
                         config="{}",
                         extra_vars={"wp_sym_norm": (("time",), sym), "wp_antisym_norm": (("time",), anti)})


def test_predictor_symmetry(byol_runs):
    wp = _wp_flow_dataset()
    fig = predictor_symmetry({"reduced W_p flow": wp, "BYOL": byol_runs[0]})
    ax_n, ax_a = fig.axes[:2]
    assert ax_n.get_xlabel() == "flow time t" and "W_p" in ax_n.get_ylabel()
    solid = [ln for ln in ax_n.get_lines() if ln.get_linestyle() == "-"]
    dashed = [ln for ln in ax_n.get_lines() if ln.get_linestyle() == "--"]
    np.testing.assert_array_equal(solid[0].get_ydata(), wp["wp_sym_norm"].values)
    np.testing.assert_array_equal(dashed[0].get_ydata(), wp["wp_antisym_norm"].values)
    assert wp["wp_antisym_norm"].values[-1] < 1e-2 * wp["wp_antisym_norm"].values[0]  # Fig. 8: B vanishes
    # BYOL carries only the contract's asymmetry: drawn in the second panel
    assert "asymmetry" in ax_a.get_ylabel() and len(ax_a.get_lines()) == 1
    np.testing.assert_array_equal(ax_a.get_lines()[0].get_ydata(), byol_runs[0]["asymmetry"].isel(run=0).values)


def test_collapse_metrics(ablations):
    fig = collapse_metrics(ablations)
    ax_std, ax_rank = fig.axes[:2]
    assert ax_std.get_xlabel() == "flow time t" and "std" in ax_std.get_ylabel()
    assert ax_rank.get_ylabel() == "effective rank"
    ref = [ln for ln in ax_std.get_lines() if ln.get_label().startswith("$1/")]
    assert len(ref) == 1 and ref[0].get_ydata()[0] == pytest.approx(1 / np.sqrt(4), rel=FLOAT64)  # d = n2 = 4
    data = [ln for ln in ax_std.get_lines() if ln not in ref]
    assert [ln.get_label() for ln in data] == list(ablations)
    np.testing.assert_array_equal(data[0].get_ydata(), ablations["BYOL"]["std_l2"].values)


def test_predictor_rules(byol_runs):
    learned, rule = byol_runs
    fig = predictor_rules({"DirectPred": rule, "learned W_p": learned})
    (ax,) = fig.axes[:1]
    assert ax.get_xlabel().startswith("mode j") and ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["DirectPred [directpred]", "learned W_p"]
    s_end = rule["s"].isel(run=0, time=-1).values
    shown = np.asarray(ax.get_lines()[0].get_ydata())
    assert s_end.min() / s_end.max() > 1e-12  # no mode collapsed: nothing clipped for the log axis
    np.testing.assert_allclose(shown, s_end / s_end.max(), rtol=FLOAT64)


def test_render_gallery_writes_what_the_inputs_allow(tmp_path, modes_ds, comparison, byol_runs, phase_ds, ablations):
    learned, rule = byol_runs
    everything = {"cmp": comparison, "modes": modes_ds, "byol": learned, "directpred": rule, "phase": phase_ds,
                  "no-ema": ablations["no EMA"]}
    kinds = [item.kind for item in gallery_plan(everything)]
    assert set(kinds) == {"trajectories-compared", "phase-portrait", "phase-line", "phase-diagram", "alignment",
                          "symmetry", "collapse-metrics", "predictor-rules"}
    # only a theory Dataset: no comparison, no phase diagram, no collapse metrics, no rules
    paths = render_gallery({"modes": modes_ds}, tmp_path)
    names = sorted({p.stem for p in paths})
    assert names == ["alignment-commutator", "phase-line", "phase-portrait-modes", "predictor-symmetry"]
    for stem in names:
        png, pdf = tmp_path / f"{stem}.png", tmp_path / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    # a DirectPred run alone gets no portrait (its p is set by the rule, not by Eq. 11) and no rules figure
    skipped: list[str] = []
    plan = gallery_plan({"dp": rule}, skipped)
    assert "phase-portrait" not in [i.kind for i in plan] and "predictor-rules" not in [i.kind for i in plan]
    assert any("learned predictor" in s for s in skipped)


def test_cli_figures_end_to_end(tmp_path, capsys, comparison, phase_ds):
    # a comparison without flow parameters (no portrait, no phase line) and a phase diagram: neither has the
    # theory/sampled/measured contract's time axis and source, and both are read
    write_netcdf(comparison.assign_attrs(config="{}"), tmp_path / "cmp.nc")
    write_netcdf(phase_ds, tmp_path / "phase.nc")
    out = tmp_path / "figs"
    assert main(["figures", str(tmp_path / "cmp.nc"), str(tmp_path / "phase.nc"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    wrote = [ln.split(":")[0] for ln in lines if ": wrote " in ln]
    assert wrote == ["trajectories-compared", "phase-diagram", "alignment"]
    assert any(ln.startswith("skipped phase-portrait-cmp") for ln in lines)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}.{e}" for s in ("trajectories-cmp", "phase-diagram-phase", "alignment-commutator") for e in ("png", "pdf"))
    # a netCDF file that is not a contract Dataset, and a file that is not netCDF: one line each, exit 2
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(tmp_path / "plain.nc")
    (tmp_path / "notes.nc").write_text("not netCDF")
    for bad in ("plain.nc", "notes.nc"):
        assert main(["figures", str(tmp_path / bad), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("stopgrad: error:") and bad in err


def test_figures_imports_only_numpy_xarray_matplotlib():
    """design.md's layering: figures imports the standard library, numpy, xarray and matplotlib only."""
    allowed = {"numpy", "xarray", "matplotlib"} | set(sys.stdlib_module_names)
    folder = Path(__file__).resolve().parents[2] / "figures"
    files = sorted(folder.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [node.module.split(".")[0]]
            else:
                continue
            assert set(tops) <= allowed, f"{path.name} imports {tops}"
