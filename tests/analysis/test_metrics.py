"""Collapse metrics against closed forms (reference/methods.md §7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stopgrad.analysis import (align_loss, alpha_req, effective_rank, embedding_spectrum, rankme,
                               std_of_l2_normalized, uniformity)


def _rot(d, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def test_identity_and_collapse_closed_forms():
    d = 16
    eye = np.eye(d)
    assert std_of_l2_normalized(eye) == pytest.approx(1 / math.sqrt(d), rel=1e-12)
    assert effective_rank(eye) == pytest.approx(d, rel=1e-12)
    assert rankme(eye, eps=0.0) == pytest.approx(d, rel=1e-12)
    collapsed = np.tile(np.random.default_rng(0).standard_normal(d), (50, 1))
    assert std_of_l2_normalized(collapsed) == pytest.approx(0.0, abs=1e-12)
    assert effective_rank(collapsed) == pytest.approx(1.0, abs=1e-9)
    assert rankme(collapsed, eps=0.0) == pytest.approx(1.0, abs=1e-9)


def test_bounds_and_rotation_invariance():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((200, 12)) @ np.diag(np.linspace(0.1, 2, 12))
    Q = _rot(12)
    for f in (effective_rank, rankme, std_of_l2_normalized, uniformity):
        if f is std_of_l2_normalized:
            continue  # per-channel std is not rotation invariant (it depends on the axes)
        assert f(z @ Q) == pytest.approx(f(z), rel=1e-9), f.__name__
    assert 1.0 <= effective_rank(z) <= 12.0
    assert 1.0 <= effective_rank(z, kind="covariance") <= 12.0
    assert effective_rank(z) != pytest.approx(effective_rank(z, kind="covariance"))
    assert -4.0 <= uniformity(z) <= 0.0
    assert np.allclose(embedding_spectrum(z @ Q, normalize=False), embedding_spectrum(z, normalize=False))


def test_std_of_isotropic_gaussian_is_one_over_sqrt_d():
    z = np.random.default_rng(2).standard_normal((20000, 64))
    assert std_of_l2_normalized(z) == pytest.approx(1 / 8, rel=0.01)


def test_alpha_req_recovers_a_power_law():
    d, alpha = 40, 1.3
    lam = np.arange(1, d + 1) ** (-alpha)
    rng = np.random.default_rng(3)
    z = rng.standard_normal((200000, d)) * np.sqrt(lam)
    assert alpha_req(z, fit_range=(1, 20)) == pytest.approx(alpha, abs=0.05)


def test_alignment_and_torch_inputs_stay_on_torch():
    z = torch.randn(64, 8)
    assert align_loss(z, z) == pytest.approx(0.0, abs=1e-12)
    assert align_loss(z, -z) == pytest.approx(4.0, rel=1e-9)  # ||a - (-a)||^2 = 4 on the sphere
    out = effective_rank(z)
    assert isinstance(out, torch.Tensor) and out.ndim == 0
    with pytest.raises(ValueError, match="shape"):
        rankme(torch.randn(3))
