"""Properties of the collapse metrics (stopgrad.analysis): rotation invariance and their bounds.

Tolerances: the metrics depend on the singular values of z (or of the normalised rows), which a
rotation z -> z Q changes by at most c (n + d) u ||z|| (backward-stable SVD), so each p_k = sigma_k / sum
moves by ~ (n + d) u; -p log p moves by at most that times |log((n + d) u)| <= |log u| (its slope), and exp
adds a relative u. SAFETY covers the constants c we do not track.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from stopgrad.analysis import (
    align_loss,
    effective_rank,
    embedding_spectrum,
    entropy_rank,
    rankme,
    std_of_l2_normalized,
    uniformity,
)
from stopgrad.testing import strategies as sgst

EPS = float(np.finfo(np.float64).eps)
SAFETY = 64.0
BATCHES = sgst.embeddings(max_n=24, max_d=6, min_n=2)


def svd_tol(z: np.ndarray) -> float:
    """Relative error bound of a spectrum-based metric of z (n, d) in float64."""
    n, d = z.shape
    return SAFETY * (n + d) * EPS * (1.0 + abs(math.log(EPS)))


@given(BATCHES, st.data())
def test_rank_metrics_are_invariant_to_rotating_the_embedding_space(z, data):
    """Effective rank, RankMe and the covariance spectrum depend only on the singular values of z (or
    of its centred version), which z -> z Q with Q orthogonal leaves unchanged."""
    Q = data.draw(sgst.orthogonal_matrices(n=z.shape[1]))
    tol = svd_tol(z)
    # centring cancels: z - mean carries errors u |z|, i.e. relative errors larger by |z| / |z - mean|
    centred = np.abs(z - z.mean(axis=0)).max()
    cancel = max(1.0, float(np.abs(z).max()) / max(float(centred), 1e-300))
    for f, r in ((effective_rank, 1.0), (rankme, 1.0), (lambda x: effective_rank(x, kind="covariance"), cancel)):
        a, b = f(z), f(z @ Q)
        assert abs(a - b) <= tol * r * max(1.0, a)
    ea, eb = embedding_spectrum(z, normalize=False), embedding_spectrum(z @ Q, normalize=False)
    assert np.abs(ea - eb).max() <= tol * cancel * max(1e-300, float(ea.max()))


@given(BATCHES)
def test_effective_rank_lies_between_one_and_the_rank(z):
    """exp(H(p)) of a distribution over r non-zero singular values lies in [1, r] (entropy in [0, log r])."""
    er = effective_rank(z)
    r = int(np.linalg.matrix_rank(z))
    tol = svd_tol(z)
    assert 1.0 - tol <= er <= min(z.shape) + tol
    assert er <= r * (1 + tol) + tol * min(z.shape)


@given(BATCHES, st.data())
def test_uniformity_is_bounded_rotation_and_scale_invariant(z, data):
    """Uniformity log E exp(-t ||x - y||^2) on unit rows has ||x - y||^2 in [0, 4], so it lies in
    [-4t, 0]; it sees only the normalised rows' distances, invariant to rotations and to positive
    rescaling of each row."""
    t = data.draw(st.floats(0.1, 10.0))
    Q = data.draw(sgst.orthogonal_matrices(n=z.shape[1]))
    c = np.asarray(data.draw(st.lists(sgst.scales(), min_size=z.shape[0], max_size=z.shape[0])))[:, None]
    u = uniformity(z, t)
    tol = SAFETY * z.shape[1] * EPS * t * 4
    assert -4 * t - tol <= u <= tol
    assert abs(uniformity(z @ Q, t) - u) <= tol
    assert abs(uniformity(c * z, t) - u) <= tol


@given(sgst.embedding_pairs(max_n=16, max_d=6), st.data())
def test_alignment_is_bounded_zero_on_equal_views_and_rotation_invariant(pair, data):
    """Alignment E ||x - y||^alpha of unit rows lies in [0, 2^alpha], is 0 for identical (or positively
    rescaled) views, 2^alpha for antipodal ones, and is invariant to rotating both views. A distance
    error delta becomes at most delta^alpha (alpha < 1, Hoelder) or alpha 2^(alpha-1) delta (alpha >= 1)."""
    z1, z2 = pair
    alpha = data.draw(st.floats(0.5, 3.0))
    Q = data.draw(sgst.orthogonal_matrices(n=z1.shape[1]))
    delta = SAFETY * z1.shape[1] * EPS
    tol = delta**alpha if alpha < 1 else alpha * 2 ** (alpha - 1) * delta
    a = align_loss(z1, z2, alpha)
    assert -tol <= a <= 2**alpha + tol
    assert abs(align_loss(z1 @ Q, z2 @ Q, alpha) - a) <= tol
    assert align_loss(z1, 3.0 * z1, alpha) <= tol
    assert abs(align_loss(z1, -z1, alpha) - 2**alpha) <= tol


@given(BATCHES, st.data())
def test_std_of_l2_normalized_bounds(z, data):
    """The per-channel unbiased std of unit rows: sum_c var_c = sum_i ||x_i - mean||^2 / (N - 1)
    <= N / (N - 1), so by Jensen mean_c std_c <= sqrt(N / ((N - 1) d)); it is invariant to positive row
    rescaling, and 0 when all rows point the same way."""
    n, d = z.shape
    v = std_of_l2_normalized(z)
    tol = SAFETY * d * EPS
    assert -tol <= v <= math.sqrt(n / ((n - 1) * d)) + tol
    c = np.asarray(data.draw(st.lists(sgst.scales(), min_size=n, max_size=n)))[:, None]
    assert abs(std_of_l2_normalized(c * z) - v) <= tol
    collapsed = c * z[:1]
    assert std_of_l2_normalized(collapsed) <= tol


@given(st.lists(st.floats(0.0, 1e3), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_entropy_rank_is_permutation_invariant_and_counts_equal_values(values, rnd):
    """exp(H) of the normalised values is symmetric in its arguments, lies in [1, #non-zero], and equals
    k for k equal non-zero values (the uniform distribution)."""
    v = torch.tensor(values, dtype=torch.float64)
    e = float(entropy_rank(v))
    perm = list(range(len(values)))
    rnd.shuffle(perm)
    tol = SAFETY * len(values) * EPS
    assert abs(float(entropy_rank(v[perm])) - e) <= tol * max(1.0, e)
    nz = sum(x > 0 for x in values)
    if nz:
        assert 1 - tol <= e <= nz * (1 + tol)
    k = len(values)
    assert abs(float(entropy_rank(torch.full((k,), 2.5, dtype=torch.float64))) - k) <= tol * k
