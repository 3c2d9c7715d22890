"""The four-view Siamese simulator and the expected GSG flow: the rule, the measurements, the flow.

References: the trainer's own GSG (ssl_models.gsg, which matches the official code), stopgrad.analysis
metrics, brute-force loops, and the large-batch average of the sampled gradient.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stopgrad import analysis
from stopgrad.dynamics import (EvalSet, SiameseData, SiameseSimulation, SiameseSpec, batched_metrics,
                               candidate_losses, expected_gradients, four_view_loss, gsg_choice,
                               integrate_gsg_flow, make_dataset, negative_distances, pair_differences,
                               simulate_siamese)
from stopgrad.ssl_models.gsg import gsg_distances, gsg_loss

f64 = torch.float64


def _views(R=3, N=20, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(R, 4, N, d, generator=g, dtype=f64), torch.randn(R, 4, N, d, generator=g, dtype=f64)


def test_gsg_choice_is_the_brute_force_closest_and_farthest_pair():
    z, _ = _views()
    d = negative_distances(z)
    choice, rev = gsg_choice(d, "gsg"), gsg_choice(d, "gsg-reverse")
    pairs = [(0, 2), (0, 3), (1, 2), (1, 3)]
    for r in range(z.shape[0]):
        for i in range(z.shape[2]):
            dist = [math.dist(z[r, a, i].tolist(), z[r, b, i].tolist()) for a, b in pairs]
            assert int(choice[r, i]) == int(np.argmin(dist))
            assert int(rev[r, i]) == int(np.argmax(dist))
            np.testing.assert_allclose(d[r, i].numpy(), dist, rtol=1e-12)


def test_distances_and_cosine_candidates_equal_the_trainers_gsg():
    z, p = _views(R=1)
    d = negative_distances(z)[0]
    ref = gsg_distances(*z[0])  # the trainer's fp32 distances
    np.testing.assert_allclose(d.numpy(), ref.double().numpy(), rtol=1e-5)
    choice = gsg_choice(d, "gsg")
    mine = candidate_losses(p, z, "cosine")[0].gather(-1, choice[:, None]).mean()
    theirs = gsg_loss(*p[0], *z[0], choice)
    assert abs(float(mine) - float(theirs)) < 1e-5  # the trainer computes in fp32


def test_loss_is_symmetric_under_swapping_the_two_images():
    z, p = _views()
    swap = [2, 3, 0, 1]
    for method in ("gsg", "gsg-reverse"):
        a = candidate_losses(p, z, "l2").gather(-1, gsg_choice(negative_distances(z), method)[..., None])
        b = candidate_losses(p[:, swap], z[:, swap], "l2").gather(
            -1, gsg_choice(negative_distances(z[:, swap]), method)[..., None])
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-13)


def test_batched_metrics_equal_the_analysis_metrics_per_run():
    data = SiameseData(n1=6, n_points=30, n_clusters=3)
    ev = EvalSet.build(data, n2=4, size=40, seed=1)
    g = torch.Generator().manual_seed(3)
    W = torch.randn(3, 4, 6, generator=g, dtype=f64)
    z = ev.views.unsqueeze(0) @ W.mT.unsqueeze(1)
    bank = ev.bank.unsqueeze(0) @ W.mT
    m = batched_metrics(z, ev, bank, W)
    for r in range(3):
        z1, z2 = z[r, 0], z[r, 1]
        assert abs(float(m["std_l2"][r]) - float(analysis.std_of_l2_normalized(z1))) < 1e-12
        assert abs(float(m["effective_rank"][r]) - float(analysis.effective_rank(z1))) < 1e-10
        assert abs(float(m["uniformity"][r]) - float(analysis.uniformity(z1))) < 1e-10
        assert abs(float(m["align_loss"][r]) - float(analysis.align_loss(z1, z2))) < 1e-12
        acc = analysis.knn_accuracy(z1, ev.labels, bank[r], ev.bank_labels, ev.n_classes, k=10, temperature=0.1)
        assert abs(float(m["knn_acc"][r]) - acc) < 1e-12
        P = W[r].T @ torch.linalg.pinv(W[r] @ W[r].T) @ W[r]  # projector on W's row space
        assert abs(float(m["subspace"][r]) - float((P @ ev.pcs).pow(2).sum() / ev.pcs.shape[1])) < 1e-10


def _gradient(W, Wp, x, sigma, method, seed, B):
    g = torch.Generator().manual_seed(seed)
    xb = x[torch.randint(0, x.shape[0], (1, B), generator=g)]
    P = {"W": W.clone().requires_grad_(True), "Wp": Wp.clone().requires_grad_(True)}
    L = four_view_loss(P, xb, torch.tensor([sigma], dtype=f64), {"method": method, "loss": "l2", "encoder": "linear"}, g)
    return torch.autograd.grad(L.sum(), [P["W"], P["Wp"]])


@pytest.mark.parametrize("method,sign", [("gsg", 1.0), ("gsg-reverse", -1.0)])
def test_expected_flow_equals_the_large_batch_sampled_gradient(method, sign):
    """The selection-bias term: E[grad(GSG) - grad(SimSiam)] over common random numbers equals the flow's
    term, within 4 standard errors (norm over entries); the linearised selection is exact to O((sigma /
    ||W delta||)^2) and sigma / ||delta|| = 0.05 here."""
    sigma, B, reps = 0.2, 20000, 6
    data = SiameseData(n1=6, n_points=12, n_clusters=12, cluster_sep=3.0, cluster_std=0.0, aug_std=sigma)
    x, _, _ = make_dataset(data)
    g = torch.Generator().manual_seed(7)
    W = torch.randn(1, 3, 6, generator=g, dtype=f64) / math.sqrt(6)
    Wp = torch.eye(3, dtype=f64)[None] + 0.3 * torch.randn(1, 3, 3, generator=g, dtype=f64)
    X, D, K = x.T @ x / x.shape[0], pair_differences(x), x.shape[0]
    t = lambda v: torch.tensor([v], dtype=f64)  # noqa: E731
    G = expected_gradients(W, Wp, X, D, K, t(sigma), t(sign), t(1 - 1 / B))
    G0 = expected_gradients(W, Wp, X, D, K, t(sigma), t(0.0), t(1 - 1 / B))
    for k in range(2):  # W and W_p
        diff = torch.stack([_gradient(W, Wp, x, sigma, method, s, B)[k] - _gradient(W, Wp, x, sigma, "simsiam", s, B)[k]
                            for s in range(reps)])
        err = (diff.mean(0) - (G[k] - G0[k])).norm()
        se = (diff.std(0) / math.sqrt(reps)).norm()
        assert (G[k] - G0[k]).norm() > 10 * se  # the term is resolved
        assert err < 4 * se, (float(err), float(se))


def test_simsiam_flow_equals_the_large_batch_sampled_gradient():
    """With no selection (sign 0) the flow is Tian et al.'s: X + sigma^2 I and X; mean of batch gradients."""
    sigma, B, reps = 0.3, 20000, 6
    data = SiameseData(n1=5, n_points=10, n_clusters=10, aug_std=sigma)
    x, _, _ = make_dataset(data)
    g = torch.Generator().manual_seed(1)
    W, Wp = torch.randn(1, 3, 5, generator=g, dtype=f64), torch.randn(1, 3, 3, generator=g, dtype=f64)
    t = lambda v: torch.tensor([v], dtype=f64)  # noqa: E731
    G = expected_gradients(W, Wp, x.T @ x / 10, pair_differences(x), 10, t(sigma), t(0.0), t(1.0))
    grads = torch.stack([_gradient(W, Wp, x, sigma, "simsiam-random", s, B)[0] for s in range(reps)])
    se = (grads.std(0) / math.sqrt(reps)).norm()
    assert (grads.mean(0) - G[0]).norm() < 4 * se


def test_two_point_no_predictor_growth_rate():
    """Two points, no predictor, W = v delta_hat^T: ||W delta|| grows at
    lambda = sigma ||delta|| / (2 sqrt(pi)) - sigma^2 - eta (GSG), decays at -lambda - 2 (sigma^2 + eta)
    for reverse GSG and at -(sigma^2 + eta) for SimSiam (gsg_symbolic.two_point_rate)."""
    sigma, eta = 0.5, 0.01
    data = SiameseData(n1=3, n_points=2, n_clusters=2, cluster_sep=2.0, cluster_std=0.0, aug_std=sigma)
    x, _, _ = make_dataset(data)
    delta = x[0] - x[1]
    dn = float(delta.norm())
    v = torch.tensor([0.3, -0.2], dtype=f64)
    W0 = (v[:, None] * delta[None] / dn)[None]
    base = sigma * dn / (2 * math.sqrt(math.pi))
    for method, rate in (("gsg", base - sigma**2 - eta), ("gsg-reverse", -base - sigma**2 - eta),
                         ("simsiam", -sigma**2 - eta)):
        res = integrate_gsg_flow(data, W0, torch.eye(2, dtype=f64)[None], [0.0, 2.0], method=method, predictor=False,
                                 eta=eta)
        W = res.values["W"][0]
        measured = math.log(float((W[-1] @ delta).norm()) / float((W[0] @ delta).norm())) / 2.0
        assert abs(measured - rate) < 1e-7  # dop853 at rtol 1e-8


def test_cli_engine_siamese_runs_and_rejects_unknown_keys(tmp_path):
    from stopgrad.cmd_dynamics import simulation_from_dict
    from stopgrad.config import ConfigError

    doc = {"simulate": {"engine": "siamese", "steps": 4, "n_save": 2, "eval_size": 16},
           "data": {"n1": 4, "n_points": 8, "n_clusters": 2}, "train": {"n2": 2, "batch": 8},
           "grid": {"method": ["gsg", "simclr"], "seed": [0, 1]}}
    sim = simulation_from_dict(doc)
    assert isinstance(sim, SiameseSimulation) and len(sim.runs()) == 4
    ds = simulate_siamese(sim)
    assert ds.sizes["run"] == 4 and list(ds["method"].values) == ["gsg", "gsg", "simclr", "simclr"]
    assert np.isfinite(ds["neg_dist"].values).all() and "neg_dist_min" in ds
    with pytest.raises(ConfigError, match="train.lrr"):
        simulation_from_dict({**doc, "train": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match="grid.method"):
        simulation_from_dict({**doc, "grid": {"method": ["byol"]}})


def test_runs_are_batched_not_looped_and_reproducible():
    """The same config twice gives bitwise the same result; a run's initial weights depend on its seed only."""
    sim = SiameseSimulation(steps=3, n_save=2, eval_size=16, data=SiameseData(n1=4, n_points=8),
                            train=SiameseSpec(n2=2, batch=8), grid={"seed": [3, 5]})
    a, b = simulate_siamese(sim), simulate_siamese(sim)
    np.testing.assert_array_equal(a["neg_dist"].values, b["neg_dist"].values)
    alone = simulate_siamese(SiameseSimulation(steps=3, n_save=2, eval_size=16, data=SiameseData(n1=4, n_points=8),
                                               train=SiameseSpec(n2=2, batch=8), grid={"seed": [5]}))
    np.testing.assert_array_equal(a["neg_dist"].values[1, 0], alone["neg_dist"].values[0, 0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gsg_flow_vs_sampled", "contrastive_pca", "contrastive_pca_moco"])
def test_slow_gsg_checks_pass(name):
    """The sampled checks (1/sqrt(batch) convergence to the expected update; linear SimCLR and MoCo ~ PCA)."""
    from stopgrad.dynamics import theorems as th

    res = th.run_checks(seed=1, only=[name])[0]
    assert res.passed, (res.name, res.residual, res.tolerance, res.detail)
