"""Properties of the SSL losses: negative cosine (SimSiam/BYOL), NT-Xent (SimCLR), InfoNCE (MoCo) and
the stop-gradient.

All inputs are float64; the tolerances are round-off bounds: a dot product of d terms has an error of at
most d u sum|x_i y_i| <= d u ||x|| ||y|| (u = eps/2, Higham, Accuracy and Stability, Eq. 3.5), each norm,
division and exp/log adds a few u, and a loss with logits of size 1/T carries that error times 1/T.
SAFETY multiplies the leading-order count to cover the lower-order terms we do not enumerate.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from stopgrad.ssl_models import info_nce, negative_cosine, nt_xent
from stopgrad.testing import strategies as sgst

EPS = float(np.finfo(np.float64).eps)  # 2u
SAFETY = 8.0
f64 = torch.float64


def T(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=f64)


def cos_tol(d: int) -> float:
    """Round-off bound of one cosine of d-vectors (dot product, two norms, one division)."""
    return SAFETY * (d + 4) * EPS


def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """NT-Xent written out as the mean over the 2N views of the cross-entropy -log softmax_pos, with
    the view itself excluded from the denominator (Chen et al. 2020, Eq. 1), in float64 numpy."""
    u = np.concatenate([z1, z2])
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    n2 = u.shape[0]
    n = n2 // 2
    s = u @ u.T / temperature
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        others = np.delete(s[i], i)
        m = others.max()
        total += -s[i, pos] + m + math.log(np.exp(others - m).sum())
    return total / n2


def nt_xent_tol(n: int, d: int, temperature: float) -> float:
    """|loss - reference| bound: cosines off by cos_tol(d), amplified by 1/T, plus the log-sum-exp of 2N terms."""
    return SAFETY * (cos_tol(d) / temperature + 2 * n * EPS) * 4


# --- negative cosine ----------------------------------------------------------------------------------
@given(sgst.embedding_pairs())
def test_negative_cosine_lies_in_minus_one_one(pair):
    """-cos(p, z) is in [-1, 1] by Cauchy-Schwarz, for every row and for the batch mean."""
    p, z = pair
    per_row = negative_cosine(T(p), T(z), reduce=False).numpy()
    bound = 1.0 + cos_tol(p.shape[1])
    assert np.all(np.abs(per_row) <= bound)
    assert abs(float(negative_cosine(T(p), T(z)))) <= bound


@given(sgst.embedding_pairs())
def test_negative_cosine_is_symmetric_and_its_mean_is_the_mean_of_rows(pair):
    """cos(p, z) = cos(z, p) (the inner product and the product of norms are symmetric), and the
    reduced loss is the mean of the per-row losses."""
    p, z = pair
    a = negative_cosine(T(p), T(z), reduce=False)
    b = negative_cosine(T(z), T(p), reduce=False)
    tol = cos_tol(p.shape[1])
    assert torch.allclose(a, b, rtol=0, atol=tol)
    assert abs(float(negative_cosine(T(p), T(z))) - float(a.mean())) <= tol


@given(sgst.embedding_pairs(), st.lists(sgst.scales(), min_size=2, max_size=2))
def test_negative_cosine_is_invariant_to_positive_rescaling_and_odd_under_sign(pair, cs):
    """cos(a p, b z) = cos(p, z) for a, b > 0 (the cosine only sees directions), and cos(-p, z) = -cos(p, z)."""
    p, z = pair
    a, b = cs
    ref = negative_cosine(T(p), T(z), reduce=False)
    tol = 2 * cos_tol(p.shape[1])
    assert torch.allclose(negative_cosine(T(a * p), T(b * z), reduce=False), ref, rtol=0, atol=tol)
    assert torch.allclose(negative_cosine(T(-p), T(z), reduce=False), -ref, rtol=0, atol=tol)


@given(sgst.embeddings())
def test_negative_cosine_of_a_batch_with_itself_is_minus_one(z):
    """cos(z, z) = 1 for every non-zero row, so the loss of identical views is its minimum, -1."""
    loss = float(negative_cosine(T(z), T(z)))
    assert abs(loss + 1.0) <= cos_tol(z.shape[1])


# --- stop-gradient ------------------------------------------------------------------------------------
@given(sgst.embedding_pairs())
def test_stop_gradient_gives_no_gradient_to_the_target_and_keeps_the_value(pair):
    """L = -cos(p, sg(z)): detach() cuts the graph, so z receives no gradient (None: not even a zero
    tensor is accumulated), while the forward value is bit-for-bit that of -cos(p, z)."""
    p0, z0 = pair
    p = T(p0).requires_grad_(True)
    z = T(z0).requires_grad_(True)
    loss_sg = negative_cosine(p, z.detach())
    loss = negative_cosine(p, z)
    assert float(loss_sg.detach()) == float(loss.detach())
    loss_sg.backward()
    assert z.grad is None
    assert p.grad is not None and torch.isfinite(p.grad).all()


@given(sgst.embedding_pairs())
def test_negative_cosine_gradient_matches_the_closed_form_and_is_orthogonal_to_p(pair):
    """d/dp_i of -(1/B) sum_j cos(p_j, z_j) is -(z_i/|z_i| - cos_i p_i/|p_i|) / (B |p_i|) (quotient rule);
    it is orthogonal to p_i (Euler's theorem for a scale-invariant function)."""
    p0, z0 = pair
    p = T(p0).requires_grad_(True)
    negative_cosine(p, T(z0).detach()).backward()
    g = p.grad.numpy()
    B, d = p0.shape
    pn = np.linalg.norm(p0, axis=1, keepdims=True)
    zn = np.linalg.norm(z0, axis=1, keepdims=True)
    cos = (p0 * z0).sum(1, keepdims=True) / (pn * zn)
    expected = -(z0 / zn - cos * p0 / pn) / (B * pn)
    scale = 1.0 / (B * pn)  # the size of each row of the gradient
    assert np.all(np.abs(g - expected) <= 4 * cos_tol(d) * scale)
    assert np.all(np.abs((g * p0).sum(1)) <= 4 * cos_tol(d) * scale[:, 0] * pn[:, 0])


# --- NT-Xent ------------------------------------------------------------------------------------------
TEMPS = st.floats(0.05, 5.0)


@given(sgst.embedding_pairs(max_n=8), TEMPS)
def test_nt_xent_equals_the_written_out_cross_entropy(pair, temperature):
    """nt_xent is the mean over the 2N views of -log(exp(s_pos/T) / sum_{k != i} exp(s_ik/T)) on
    L2-normalised views (an independent float64 reference)."""
    z1, z2 = pair
    got = float(nt_xent(T(z1), T(z2), temperature))
    ref = nt_xent_reference(z1, z2, temperature)
    assert abs(got - ref) <= nt_xent_tol(*z1.shape, temperature) * max(1.0, abs(ref))


@given(sgst.embedding_pairs(max_n=8), TEMPS, st.data())
def test_nt_xent_is_invariant_to_positive_rescaling_of_each_embedding(pair, temperature, data):
    """NT-Xent normalises every embedding first, so multiplying each row of z1 and of z2 by its own
    positive factor leaves the loss unchanged."""
    z1, z2 = pair
    n = z1.shape[0]
    c1 = np.asarray(data.draw(st.lists(sgst.scales(), min_size=n, max_size=n)))[:, None]
    c2 = np.asarray(data.draw(st.lists(sgst.scales(), min_size=n, max_size=n)))[:, None]
    a = float(nt_xent(T(z1), T(z2), temperature))
    b = float(nt_xent(T(c1 * z1), T(c2 * z2), temperature))
    assert abs(a - b) <= 2 * nt_xent_tol(*z1.shape, temperature) * max(1.0, abs(a))


@given(sgst.embedding_pairs(max_n=8), TEMPS, st.randoms(use_true_random=False))
def test_nt_xent_is_invariant_to_a_joint_permutation_and_to_swapping_the_views(pair, temperature, rnd):
    """Permuting the images (the same permutation for both views) permutes the 2N per-view terms, and
    swapping z1 and z2 exchanges the two halves: the mean is unchanged either way."""
    z1, z2 = pair
    perm = list(range(z1.shape[0]))
    rnd.shuffle(perm)
    a = float(nt_xent(T(z1), T(z2), temperature))
    tol = 2 * nt_xent_tol(*z1.shape, temperature) * max(1.0, abs(a))
    assert abs(float(nt_xent(T(z1[perm]), T(z2[perm]), temperature)) - a) <= tol
    assert abs(float(nt_xent(T(z2), T(z1), temperature)) - a) <= tol


@given(st.integers(1, 16), st.integers(1, 8), sgst.seeds(), TEMPS)
def test_nt_xent_of_coinciding_embeddings_is_log_2n_minus_1(n, d, seed, temperature):
    """When all 2N embeddings point the same way every logit is 1/T, so each view's softmax is uniform
    over its 2N - 1 candidates and the loss is log(2N - 1) at every temperature."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(d)
    v = v if np.linalg.norm(v) > sgst.MIN_ROW_NORM else np.ones(d)
    z1, z2 = rng.uniform(0.5, 2.0, (n, 1)) * v, rng.uniform(0.5, 2.0, (n, 1)) * v
    loss = float(nt_xent(T(z1), T(z2), temperature))
    expected = math.log(2 * n - 1)
    assert abs(loss - expected) <= nt_xent_tol(n, d, temperature) * max(1.0, expected)


@given(sgst.embedding_pairs(max_n=8), st.floats(1e-3, 1e3))
def test_nt_xent_temperature_limits(pair, temperature):
    """With d_ik = s_ik - s_i,pos in [-2, 2], the loss of view i is log(1 + sum_{k != i, pos} exp(d_ik/T)).
    Hence, for every T: |L - log(2N - 1)| <= 2/T (the T -> inf limit is log(2N - 1)), and
    0 <= T L - mean_i max(0, max_k d_ik) <= T log(2N - 1) (the T -> 0 limit is the mean hinge)."""
    z1, z2 = pair
    n, d = z1.shape
    loss = float(nt_xent(T(z1), T(z2), temperature))
    tol = nt_xent_tol(n, d, temperature) * max(1.0, abs(loss))
    log_c = math.log(2 * n - 1)
    assert abs(loss - log_c) <= 2.0 / temperature + tol
    u = np.concatenate([z1, z2])
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    s = u @ u.T
    hinge = []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        rest = np.delete(s[i], [i, pos]) - s[i, pos]
        hinge.append(max(0.0, rest.max()) if rest.size else 0.0)
    excess = temperature * loss - float(np.mean(hinge))
    slack = temperature * tol + 4 * cos_tol(d)
    assert -slack <= excess <= temperature * log_c + slack


# --- InfoNCE ------------------------------------------------------------------------------------------
@st.composite
def moco_batches(draw, max_n=8, max_d=6, max_k=12):
    """(q (N, d), k (N, d), queue (d, K) with unit-norm columns, as MoCo stores it)."""
    q, k = draw(sgst.embedding_pairs(max_n=max_n, max_d=max_d))
    K = draw(st.integers(1, max_k))
    queue = draw(sgst.embeddings(K, q.shape[1])).T
    queue = queue / np.linalg.norm(queue, axis=0, keepdims=True)
    return q, k, np.ascontiguousarray(queue)


def info_nce_reference(q, k, queue, temperature) -> float:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=1, keepdims=True)
    logits = np.concatenate([(qn * kn).sum(1, keepdims=True), qn @ queue], axis=1) / temperature
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float(np.mean(lse - logits[:, 0]))


@given(moco_batches(), TEMPS)
def test_info_nce_equals_the_written_out_cross_entropy(batch, temperature):
    """info_nce is the mean over queries of -log softmax of the positive key among 1 + K candidates
    (the positive, then the K queue keys), on L2-normalised q and k."""
    q, k, queue = batch
    got = float(info_nce(T(q), T(k), T(queue), temperature))
    ref = info_nce_reference(q, k, queue, temperature)
    assert abs(got - ref) <= nt_xent_tol(queue.shape[1], q.shape[1], temperature) * max(1.0, abs(ref))


@given(moco_batches(), TEMPS, st.data())
def test_info_nce_is_invariant_to_rescaling_q_k_and_to_permutations(batch, temperature, data):
    """q and k are normalised inside, so positive row factors change nothing; permuting the batch
    (q and k jointly) permutes the per-query terms, and permuting the queue's columns permutes each
    query's negatives: the mean is unchanged."""
    q, k, queue = batch
    n, K = q.shape[0], queue.shape[1]
    a = float(info_nce(T(q), T(k), T(queue), temperature))
    tol = 2 * nt_xent_tol(K, q.shape[1], temperature) * max(1.0, abs(a))
    c = np.asarray(data.draw(st.lists(sgst.scales(), min_size=2 * n, max_size=2 * n)))[:, None]
    assert abs(float(info_nce(T(c[:n] * q), T(c[n:] * k), T(queue), temperature)) - a) <= tol
    perm = data.draw(st.permutations(range(n)))
    qperm = data.draw(st.permutations(range(K)))
    assert abs(float(info_nce(T(q[perm]), T(k[perm]), T(queue[:, qperm]), temperature)) - a) <= tol


@given(st.integers(1, 8), st.integers(1, 6), st.integers(1, 12), sgst.seeds(), TEMPS)
def test_info_nce_of_coinciding_keys_is_log_k_plus_1(n, d, K, seed, temperature):
    """When q, k and every queue key point the same way all 1 + K logits are 1/T: the loss is log(K + 1)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(d)
    v = v / np.linalg.norm(v) if np.linalg.norm(v) > sgst.MIN_ROW_NORM else np.ones(d) / math.sqrt(d)
    q, k = rng.uniform(0.5, 2, (n, 1)) * v, rng.uniform(0.5, 2, (n, 1)) * v
    queue = np.repeat(v[:, None], K, axis=1)
    loss = float(info_nce(T(q), T(k), T(queue), temperature))
    assert abs(loss - math.log(K + 1)) <= nt_xent_tol(K, d, temperature) * max(1.0, math.log(K + 1))


@given(moco_batches(), st.floats(1e-3, 1e3))
def test_info_nce_tends_to_log_k_plus_1_at_high_temperature(batch, temperature):
    """All logits are cosines / T in [-1/T, 1/T], so |L - log(K + 1)| <= 2/T for every T: the limit at
    T -> inf is log(K + 1), and the loss is never negative."""
    q, k, queue = batch
    loss = float(info_nce(T(q), T(k), T(queue), temperature))
    tol = nt_xent_tol(queue.shape[1], q.shape[1], temperature) * max(1.0, abs(loss))
    assert abs(loss - math.log(queue.shape[1] + 1)) <= 2.0 / temperature + tol
    assert loss >= -tol
