"""Rung 1's linear trainer: its gradients, its optimiser step, its unit mapping and its moment estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stopgrad.analysis import augmentation_moments, psd_part, to_flow, validate_dataset
from stopgrad.ssl_models import AugmentConfig, LinearRun, LinearRunConfig

DTYPE = torch.float64


def _weights(R=3, n1=7, n2=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(R, a, b, generator=g, dtype=DTYPE) for a, b in ((n2, n1), (n2, n2), (n2, n1))]


def test_gradients_equal_autograd_of_the_symmetrised_euclidean_loss():
    """The written-out gradients are those of J = 1/(4B) sum ||Wp W x1 - SG(Wa x2)||^2 + (1 <-> 2), for each
    run separately; float64, so the two agree to round-off (1e-12 relative)."""
    W, Wp, Wa = _weights()
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(2, 32, 7, generator=g, dtype=DTYPE)
    gw, gp, loss = LinearRun.gradients(W, Wp, Wa, x1, x2)
    W_, Wp_ = W.clone().requires_grad_(), Wp.clone().requires_grad_()
    e1 = (Wp_ @ W_ @ x1.T) - (Wa @ x2.T)
    e2 = (Wp_ @ W_ @ x2.T) - (Wa @ x1.T)
    J = (e1.square().sum(dim=(1, 2)) + e2.square().sum(dim=(1, 2))) / (4 * 32)
    J.sum().backward()
    torch.testing.assert_close(loss, J.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(gw, W_.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gp, Wp_.grad, rtol=1e-12, atol=1e-14)


def test_expected_gradient_is_the_flow_of_eqs_2_and_3():
    """E over views of the batch gradient is the flow's right-hand side without decay: with views
    x = m + n, m ~ N(0, X), n ~ N(0, X'), E[dJ/dW] = -W_p^T(-W_p W (X + X') + W_a X) and likewise for W_p.
    The batch mean's error is a sampling error: every entry must lie within 6 of its own standard errors
    (std of the per-sample contributions / sqrt(B)), which a wrong factor (e.g. 1/B vs 1/(2B)) breaks."""
    n1, n2, B = 5, 3, 200_000
    W, Wp, Wa = (w[:1] for w in _weights(R=1, n1=n1, n2=n2, seed=3))
    g = torch.Generator().manual_seed(4)
    A = torch.randn(n1, n1, generator=g, dtype=DTYPE) / math.sqrt(n1)
    Bm = 0.5 * torch.randn(n1, n1, generator=g, dtype=DTYPE) / math.sqrt(n1)
    X, Xp = A @ A.T, Bm @ Bm.T
    m = torch.randn(B, n1, generator=g, dtype=DTYPE) @ A.T
    x1 = m + torch.randn(B, n1, generator=g, dtype=DTYPE) @ Bm.T
    x2 = m + torch.randn(B, n1, generator=g, dtype=DTYPE) @ Bm.T
    gw, gp, _ = LinearRun.gradients(W, Wp, Wa, x1, x2)
    w, wp, wa = W[0], Wp[0], Wa[0]
    e1 = x1 @ (wp @ w).T - x2 @ wa.T  # (B, n2)
    e2 = x2 @ (wp @ w).T - x1 @ wa.T
    per_w = 0.5 * (torch.einsum("ij,bj,bk->bik", wp.T, e1, x1) + torch.einsum("ij,bj,bk->bik", wp.T, e2, x2))
    per_p = 0.5 * (torch.einsum("bi,bj->bij", e1, x1 @ w.T) + torch.einsum("bi,bj->bij", e2, x2 @ w.T))
    flow_w = wp.T @ (-wp @ w @ (X + Xp) + wa @ X)
    flow_p = (-wp @ w @ (X + Xp) + wa @ X) @ w.T
    for got, per, want in ((gw[0], per_w, -flow_w), (gp[0], per_p, -flow_p)):
        torch.testing.assert_close(got, per.mean(0), rtol=1e-10, atol=1e-12)
        se = per.std(0) / math.sqrt(B)
        assert bool(((got - want).abs() < 6 * se).all()), ((got - want) / se).abs().max()


def test_one_step_is_torch_sgd_with_weight_decay_and_the_ema():
    """The trainer's update equals torch.optim.SGD (lr, weight_decay; predictor lr * ratio and its own
    decay) on the same loss, followed by W_a = m W_a + (1 - m) W."""
    lr, wd, ratio, wd_p, m = 0.03, 0.1, 2.0, 0.05, 0.9
    W, Wp, Wa = (w[:1] for w in _weights(R=1))
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(2, 16, 7, generator=g, dtype=DTYPE)
    W_new, Wp_new, Wa_new, _ = LinearRun.sgd_step(W, Wp, Wa, x1, x2, lr, wd, wd_p, ratio, m, byol=True)

    Wt, Wpt = torch.nn.Parameter(W.clone()), torch.nn.Parameter(Wp.clone())
    opt = torch.optim.SGD([{"params": [Wt], "lr": lr, "weight_decay": wd},
                           {"params": [Wpt], "lr": lr * ratio, "weight_decay": wd_p}])
    e1 = Wpt @ Wt @ x1.T - Wa @ x2.T
    e2 = Wpt @ Wt @ x2.T - Wa @ x1.T
    ((e1.square().sum() + e2.square().sum()) / (4 * 16)).backward()
    opt.step()
    torch.testing.assert_close(W_new, Wt.detach(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(Wp_new, Wpt.detach(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(Wa_new, m * Wa + (1 - m) * Wt.detach(), rtol=1e-12, atol=1e-15)
    W_s, _, Wa_s, _ = LinearRun.sgd_step(W, Wp, Wa, x1, x2, lr, wd, wd_p, ratio, m, byol=False)
    assert torch.equal(Wa_s, W_s)  # SimSiam: the target is the online network
    gw_s, _, _ = LinearRun.gradients(W, Wp, W, x1, x2)  # ... and its gradient takes the target W, not Wa
    torch.testing.assert_close(W_s, W - lr * (gw_s + wd * W), rtol=1e-12, atol=1e-15)


def test_flow_units_follow_the_unit_mapping_and_keep_theorem_1_exact():
    cfg = LinearRunConfig(lr=0.02, grid={"weight_decay": [0.01, 0.2], "predictor_lr_ratio": [1.0, 4.0],
                                         "ema_momentum": [0.9]})
    flow = cfg.flow_table()
    table = cfg.run_table()
    assert cfg.n_runs == 4
    for r in range(4):
        f = to_flow(cfg.optimizer_units(table, r))
        assert (f.eta, f.alpha_p) == (flow["eta"][r], flow["alpha_p"][r]) == (table["weight_decay"][r],
                                                                              table["predictor_lr_ratio"][r])
        assert f.beta == pytest.approx(0.1 / 0.02, rel=1e-12)
        assert f.theorem1_exact  # predictor_weight_decay = None takes weight_decay / ratio
    assert np.allclose(flow["eta_p"], flow["eta"], rtol=1e-15)


def test_augmentation_moments_are_unbiased_on_a_known_model():
    """Views x_ik = m_i + n_ik with m ~ N(0, X), n ~ N(0, X'): both estimates are means over images of
    per-image contributions, so every entry must lie within 6 standard errors (std of the contributions /
    sqrt(M)) of the truth. Without the X'/K correction X_hat is biased by X'/K, many standard errors here."""
    rng = np.random.default_rng(0)
    n, M, K = 4, 20_000, 4
    A = rng.standard_normal((n, n)) / 2
    Bm = rng.standard_normal((n, n)) / 2
    X, Xp = A @ A.T, Bm @ Bm.T
    means = rng.standard_normal((M, n)) @ A.T
    views = means[:, None, :] + rng.standard_normal((M, K, n)) @ Bm.T
    Xh, Xph = augmentation_moments(views)
    vbar = views.mean(axis=1)
    dev = views - vbar[:, None, :]
    c_prime = np.einsum("mki,mkj->mij", dev, dev) / (K - 1)
    c_x = np.einsum("mi,mj->mij", vbar, vbar) - c_prime / K
    for est, contrib, truth in ((Xh, c_x, X), (Xph, c_prime, Xp)):
        np.testing.assert_allclose(est, contrib.mean(0), rtol=1e-10, atol=1e-13)
        se = contrib.std(0, ddof=1) / math.sqrt(M)
        assert np.all(np.abs(est - truth) < 6 * se), np.abs(est - truth) / se
    se_x = c_x.std(0, ddof=1) / math.sqrt(M)
    assert np.any(np.abs(Xp / K) > 6 * se_x)  # without the correction, the 6-SE check above would fail


def test_psd_part_removes_only_the_negative_eigenvalues():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    lam = np.array([3.0, 1.0, 0.5, -0.01, -0.02])
    P, mass = psd_part((Q * lam) @ Q.T)
    np.testing.assert_allclose(np.linalg.eigvalsh(P), [0, 0, 0.5, 1, 3], atol=1e-13)
    assert mass == pytest.approx(np.linalg.norm([0.01, 0.02]) / np.linalg.norm(lam), rel=1e-12)


def test_a_short_real_run_on_cifar10_gives_a_contract_dataset(cifar_small):
    """Real images and augmentations: the measured Dataset validates, time is in steps with lr recorded,
    s are the eigenvalues of W X_hat W^T of the initial weights at step 0, and the weights moved."""
    cfg = LinearRunConfig(n1=12, n2=4, steps=6, probe_every=3, batch_size=32, train_subset=512,
                          moment_images=256, moment_views=4, augment=AugmentConfig(jitter_p=0.0, grayscale_p=0.0))
    run = LinearRun(cfg, cifar_small)
    run.run(snapshot_steps=(3,))
    ds = run.to_dataset("")
    validate_dataset(ds)
    assert ds["time"].attrs["units"] == "step" and list(ds["time"].values) == [0, 3, 6]
    assert float(ds["lr"][0]) == cfg.lr and ds.attrs["source"] == "measured"
    W0 = run.init["W"]
    s0 = np.sort(np.linalg.eigvalsh(W0.numpy() @ run.X @ W0.numpy().T))[::-1]
    np.testing.assert_allclose(ds["s"].isel(time=0).values, s0, rtol=1e-10)
    assert float((run.snapshots[3]["W"][0] - W0).abs().max()) > 1e-4
    assert np.all(np.isfinite(ds["loss"].values[1:]))
