"""figures/gsg.py: the plotted means are the data's means over seeds (real Datasets from the simulator)."""

from __future__ import annotations

import numpy as np
import pytest

from stopgrad.dynamics import SiameseData, SiameseSimulation, SiameseSpec, simulate_siamese
from stopgrad.figures import gsg_neg_dist_over_time, gsg_no_predictor, gsg_quality_vs_batch


@pytest.fixture(scope="module")
def ds():
    sim = SiameseSimulation(steps=4, n_save=3, eval_size=16, data=SiameseData(n1=4, n_points=16, n_clusters=2),
                            train=SiameseSpec(n2=2, predictor=False), grid={"method": ["simsiam", "gsg"], "batch": [4, 8],
                                                                             "seed": [0, 1, 2]})
    return simulate_siamese(sim)


def test_quality_vs_batch_plots_the_mean_over_seeds(ds):
    fig = gsg_quality_vs_batch(ds)
    line = fig.axes[0].lines[0]  # first method (simsiam), errorbar's data line
    sel = ds.isel(run=np.flatnonzero(ds["method"].values == "simsiam"))
    want = [sel.isel(run=np.flatnonzero(sel["batch"].values == b))["knn_acc"].values[:, -1].mean() for b in (4, 8)]
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), want, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(line.get_xdata(), dtype=float), [4, 8])


def test_over_time_panels_plot_flow_time_and_means(ds):
    fig = gsg_neg_dist_over_time({"sampled": ds}, methods=("gsg",))
    line = fig.axes[0].lines[0]
    sel = ds.isel(run=np.flatnonzero(ds["method"].values == "gsg"))
    np.testing.assert_allclose(line.get_xdata(), sel["flow_time"].values[0])
    np.testing.assert_allclose(line.get_ydata(), sel["neg_dist"].values.mean(0), rtol=1e-12)
    assert len(gsg_no_predictor(ds).axes) == 3


# ------------------------------------------------------------------ real-network runs over time (t-interval)
def _measured(seed: int, method: str, n_time: int = 6, d: int = 8):
    from stopgrad.analysis import build_dataset

    rng = np.random.default_rng(seed)
    t = np.arange(n_time) * 4.0
    std = 0.3 + 0.05 * rng.standard_normal(n_time)
    nd = 10 + rng.standard_normal(n_time)
    std[-1] = nd[-1] = np.nan  # the trainer's final record holds only knn_acc
    ds = build_dataset({"std_l2": std, "neg_dist": nd, "s": rng.random((n_time, d))}, time=t, time_units="step",
                       source="measured", method=method, config="")
    return ds.assign_coords(epoch=("time", t / 8))


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    from stopgrad.figures import t_quantile_975

    for df in range(1, 31):  # the table is rounded to 3 decimals
        assert abs(t_quantile_975(df) - stats.t.ppf(0.975, df)) <= 5e-4, df
    for df in (31, 60, 1000):  # Cornish-Fisher beyond the table: its O(1/df^3) term is < 1e-4 relative here
        assert abs(t_quantile_975(df) / stats.t.ppf(0.975, df) - 1) < 1e-4, df
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_real_network_over_time_plots_mean_and_t_band():
    from stopgrad.figures import gsg_real_network_over_time, t_quantile_975

    runs = {m: [_measured(10 * k + s, m) for s in range(3)] for k, m in enumerate(("simsiam", "simsiam-gsg"))}
    fig = gsg_real_network_over_time(runs)
    assert len(fig.axes) == 2
    for j, var in enumerate(("neg_dist", "std_l2")):
        ax = fig.axes[j]
        for k, m in enumerate(runs):
            y = np.stack([ds[var].values for ds in runs[m]])[:, :-1]  # NaN probe dropped
            line = ax.lines[k]
            np.testing.assert_allclose(line.get_xdata(), np.arange(5) * 4.0 / 8)
            np.testing.assert_allclose(line.get_ydata(), y.mean(0), rtol=1e-12)
            band = ax.collections[k].get_paths()[0].vertices[:, 1]
            half = t_quantile_975(2) * y.std(0, ddof=1) / np.sqrt(3)  # t_{0.975,2} checked against scipy above
            # the band polygon's extremes are the extremes of mean -+ half
            np.testing.assert_allclose([band.min(), band.max()], [(y.mean(0) - half).min(), (y.mean(0) + half).max()],
                                       rtol=1e-12)
    assert fig.axes[1].lines[-1].get_ydata()[0] == pytest.approx(1 / np.sqrt(8))  # isotropic level, d = 8
