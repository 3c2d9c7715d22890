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
