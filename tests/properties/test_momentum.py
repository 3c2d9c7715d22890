"""Properties of the momentum (EMA) target update, BYOL's momentum schedule and MoCo's key queue."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stopgrad.ssl_models import (
    EncoderConfig,
    MethodConfig,
    MoCoV2,
    PredictorConfig,
    ProjectorConfig,
    TrainConfig,
    cosine_momentum,
    update_momentum,
)
from stopgrad.testing import strategies as sgst

EPS = float(np.finfo(np.float64).eps)
HEAVY = settings(max_examples=max(3, settings.default.max_examples // 3))
MOMENTA = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.99]), st.floats(0.0, 1.0))


def _pair_of_nets(seed: int, shapes) -> tuple[nn.Module, nn.Module]:
    """Two float64 modules with the same parameter structure and independent random values."""
    g = torch.Generator().manual_seed(seed)

    def net():
        m = nn.ParameterList([nn.Parameter(torch.randn(*s, generator=g, dtype=torch.float64)) for s in shapes])
        return m

    return net(), net()


SHAPES = st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4)


@given(sgst.seeds(), SHAPES, MOMENTA)
def test_ema_is_the_convex_combination(seed, shapes, m):
    """xi <- m xi + (1 - m) theta entry by entry: the result equals that combination (two products and
    one sum: error <= 3 u (|m xi| + |(1 - m) theta|)) and lies between xi and theta."""
    target, online = _pair_of_nets(seed, shapes)
    before = [p.detach().clone() for p in target.parameters()]
    update_momentum(target, online, m)
    for xi0, theta, xi in zip(before, online.parameters(), target.parameters()):
        expected = m * xi0 + (1 - m) * theta.detach()
        bound = 4 * EPS * (m * xi0.abs() + (1 - m) * theta.detach().abs())
        assert bool(((xi - expected).abs() <= bound).all())
        lo, hi = torch.minimum(xi0, theta), torch.maximum(xi0, theta)
        assert bool((xi >= lo - bound).all() and (xi <= hi + bound).all())


@given(sgst.seeds(), SHAPES)
def test_ema_with_m_one_keeps_the_target_and_m_zero_copies_the_online_net(seed, shapes):
    """m = 1: xi <- 1 xi + 0 theta = xi exactly; m = 0: xi <- 0 xi + 1 theta = theta exactly (multiplying
    by 0 or 1 and adding 0 are exact in floating point)."""
    target, online = _pair_of_nets(seed, shapes)
    before = [p.detach().clone() for p in target.parameters()]
    update_momentum(target, online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
    update_momentum(target, online, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))


@given(sgst.seeds(), SHAPES, MOMENTA, st.integers(1, 20))
def test_ema_fixed_point_and_geometric_approach(seed, shapes, m, k):
    """A target equal to the online net is a fixed point (m x + (1 - m) x = x up to 3 u |x|), and k
    updates towards a fixed online net give xi_k = theta + m^k (xi_0 - theta): the distance shrinks by
    exactly the factor m each step (up to a few u per step)."""
    target, online = _pair_of_nets(seed, shapes)
    copy_t = [p.detach().clone() for p in online.parameters()]
    fixed = nn.ParameterList([nn.Parameter(t.clone()) for t in copy_t])
    update_momentum(fixed, online, m)
    for a, b in zip(fixed.parameters(), copy_t):
        assert bool(((a - b).abs() <= 4 * EPS * b.abs()).all())
    xi0 = [p.detach().clone() for p in target.parameters()]
    for _ in range(k):
        update_momentum(target, online, m)
    for a, x0, th in zip(target.parameters(), xi0, online.parameters()):
        expected = th.detach() + m**k * (x0 - th.detach())
        bound = 4 * (k + 1) * EPS * (x0.abs() + th.detach().abs())
        assert bool(((a - expected).abs() <= bound).all())


@given(st.integers(1, 10_000), MOMENTA, MOMENTA)
def test_cosine_momentum_schedule_runs_from_base_to_final_monotonically(total, base, final):
    """m_k = final - (final - base)(cos(pi k/K) + 1)/2: m_0 = base, m_K = final, m_k between them, and
    monotone in k (cos is decreasing on [0, pi]); steps outside [0, K] are clamped."""
    ks = sorted({0, total, total // 2, max(0, total - 1), min(total, 1)})
    ms = [cosine_momentum(k, total, base, final) for k in ks]
    tol = 4 * EPS
    assert abs(ms[0] - base) <= tol and abs(ms[-1] - final) <= tol
    lo, hi = min(base, final), max(base, final)
    assert all(lo - tol <= m <= hi + tol for m in ms)
    diffs = np.diff(ms) * (1 if final >= base else -1)
    assert bool((diffs >= -tol).all())
    assert cosine_momentum(-5, total, base, final) == ms[0] and cosine_momentum(total + 7, total, base, final) == ms[-1]


def _moco(d: int, K: int) -> MoCoV2:
    cfg = TrainConfig(method=MethodConfig(name="mocov2", queue_size=K),
                      encoder=EncoderConfig(arch="convnet", width=1),
                      projector=ProjectorConfig(layers=1, hidden_dim=1, out_dim=d, last_bn=False),
                      predictor=PredictorConfig(kind="none"))
    return MoCoV2(cfg)


@HEAVY
@given(st.integers(1, 6), st.integers(1, 12), st.lists(st.integers(1, 15), min_size=1, max_size=6), sgst.seeds())
def test_moco_queue_is_a_fifo_of_the_newest_keys(d, K, batch_sizes, seed):
    """After enqueueing batches of keys, the queue keeps its shape (d, K), its pointer is the number of
    keys pushed mod K, and slot j holds the newest key whose running index is j mod K, i.e. the queue is
    a ring buffer holding the last K keys in arrival order (compared with a deque of maxlen K)."""
    torch.manual_seed(seed % 2**31)
    moco = _moco(d, K)
    initial = moco.queue.clone()
    g = torch.Generator().manual_seed(seed)
    ring = {}  # slot -> key, from a reference ring buffer
    fifo = deque(maxlen=K)
    pushed = 0
    for b in batch_sizes:
        keys = torch.randn(b, d, generator=g)
        moco.enqueue(keys)
        for row in keys:
            ring[pushed % K] = row
            fifo.append(row)
            pushed += 1
        assert tuple(moco.queue.shape) == (d, K)
        assert int(moco.queue_ptr) == pushed % K
    for j in range(K):
        expected = ring[j] if j in ring else initial[:, j]
        assert torch.equal(moco.queue[:, j], expected)
    if pushed >= K:  # reading the ring from the pointer gives the last K keys, oldest first
        order = [(int(moco.queue_ptr) + i) % K for i in range(K)]
        assert all(torch.equal(moco.queue[:, j], f) for j, f in zip(order, fifo))
    assert math.isfinite(float(moco.queue.sum()))
