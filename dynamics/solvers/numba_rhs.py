"""The built-in flows' right-hand sides for the numba backends (the kernel side of matrix_flow/mode_flow).

Each takes ``(t, y, prm, cfg, dy, work)``: state y and its derivative dy (n,) in flow-time units, one
row ``prm`` of :class:`stopgrad.dynamics.runs.RunTable`'s kernel view (its column constants name the
entries), the integer ``cfg`` of the flow (below) and scratch ``work``.

cfg (int64, shared by all runs)
  matrix: [n2, r, predictor (0 learned, 1 symmetric, 2 identity), stop_grad, simsiam]
  modes:  [k, predictor (0 learned, 1 symmetric, 2 identity, 3 rule), stop_grad, simsiam, rule_normalize]

The per-mode terms have one written definition, :func:`mode_terms` (inlined by every kernel); the
torch flows are the other definition, held equal to round-off by tests/dynamics/test_solvers.py.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ..predictor_rules import ROUNDOFF
from ..runs import ALPHA_P, BETA, ETA, ETA_P, LAM, RULE_EPS, RULE_FLOOR, RULE_POWER, SIGMA2

_FM = {"reassoc", "contract"}  # lets LLVM vectorise the dot products; results stay deterministic
# error_model="numpy": IEEE division (inf/NaN, caught by the finiteness checks) instead of Python's
# ZeroDivisionError: a blow-up is a status with its time (as in the torch loop), never an exception.

SYSTEMS = {"matrix": 0, "modes": 1}


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def matrix_rhs(t, y, prm, cfg, dy, work):
    """Reduced isotropic matrix flow: state C (n2, r), [W_p (n2, n2)], [C_a (n2, r)].

    The three small products go to BLAS (np.dot inside numba calls scipy's dgemm): 25 GFLOP/s a core
    for 32 x 32, against ~18 for the best hand-written loop measured here.
    """
    n2, r, pred, stop_grad, simsiam = cfg[0], cfg[1], cfg[2], cfg[3], cfg[4]
    alpha_p, eta, eta_p, beta, sigma2 = prm[ALPHA_P], prm[ETA], prm[ETA_P], prm[BETA], prm[SIGMA2]
    lam_s = 1.0 + sigma2
    nc, nw = n2 * r, n2 * n2
    has_wp = pred != 2
    C = y[:nc].reshape((n2, r))
    dC = dy[:nc].reshape((n2, r))
    off = nc
    if has_wp:
        Wp = y[off : off + nw].reshape((n2, n2))
        dWp = dy[off : off + nw].reshape((n2, n2))
        off += nw
    if simsiam:
        Ca = C
    else:
        Ca = y[off : off + nc].reshape((n2, r))
        dCa = dy[off : off + nc].reshape((n2, r))
    G = work[:nc].reshape((n2, r))
    M = work[nc : nc + nw].reshape((n2, n2))
    # G = C_a - lam_s W_p C
    if has_wp:
        np.dot(Wp, C, G)
        for i in range(n2):
            for j in range(r):
                G[i, j] = Ca[i, j] - lam_s * G[i, j]
    else:
        for i in range(n2):
            for j in range(r):
                G[i, j] = Ca[i, j] - lam_s * C[i, j]
    if has_wp:
        # dW_p = alpha_p G C^T - eta_p W_p   (symmetrised for the symmetric predictor)
        np.dot(G, C.T, dWp)
        if pred == 1:
            for i in range(n2):
                for j in range(i + 1, n2):
                    v = 0.5 * (dWp[i, j] + dWp[j, i])
                    dWp[i, j] = v
                    dWp[j, i] = v
        for i in range(n2):
            for j in range(n2):
                dWp[i, j] = alpha_p * dWp[i, j] - eta_p * Wp[i, j]
    if stop_grad:
        if has_wp:
            np.dot(Wp.T, G, dC)  # W_p^T G
            for i in range(n2):
                for j in range(r):
                    dC[i, j] -= eta * C[i, j]
        else:
            for i in range(n2):
                for j in range(r):
                    dC[i, j] = G[i, j] - eta * C[i, j]
    else:
        # dC = -[(1+s2) W_p^T W_p - W_p - W_p^T + (1+s2) I] C - eta C   (Theorem 2's flow)
        if has_wp:
            np.dot(Wp.T, Wp, M)
            for i in range(n2):
                for j in range(n2):
                    M[i, j] = lam_s * M[i, j] - Wp[i, j] - Wp[j, i]
        else:
            for i in range(n2):
                for j in range(n2):
                    M[i, j] = (lam_s - 2.0) if i == j else 0.0
        for i in range(n2):
            M[i, i] += lam_s
        np.dot(M, C, dC)
        for i in range(n2):
            for j in range(r):
                dC[i, j] = -dC[i, j] - eta * C[i, j]
    if not simsiam:
        for i in range(n2):
            for j in range(r):
                dCa[i, j] = beta * (C[i, j] - Ca[i, j])


def matrix_work_size(n2: int, r: int) -> int:
    """Scratch floats :func:`matrix_rhs` needs for W (n2, r): n2 r + n2^2."""
    return n2 * r + n2 * n2



@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def mode_terms(p, w, a, ap, eta, etap, beta, ls, ld, stop_grad):
    """The per-mode right-hand side (module docstring of mode_flow), one mode on scalars.

    Args: predictor eigenvalue p (state, 1 for no predictor, or a rule's value), w, target w_a (w
    for SimSiam), alpha_p, eta, eta_p, beta, lambda_s, lambda_d, stop_grad. Returns (dp, dw, dw_a)
    in flow-time units; the caller keeps those its state has.
    """
    g = a * ld - p * w * ls
    dp = ap * w * g - etap * p
    if stop_grad:
        dw = p * g - eta * w
    else:
        dw = -(p * p + 1.0) * w * (ls - ld) - (p - 1.0) * (p - 1.0) * w * ld - eta * w
    da = beta * (w - a)
    return dp, dw, da


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def directset_p(s, s_max, power, eps, floor):
    """DirectSet's p = max(floor, (max(s, 0) / s_max)^power + eps), with round-off-small ratios as 0.

    The torch definition is predictor_rules.directset (its ``phi``); tests/dynamics/test_solvers.py
    holds the two equal to round-off.
    """
    e = max(s, 0.0) / s_max
    if e <= ROUNDOFF:
        e = 0.0
    return max(floor, e**power + eps)


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def mode_rhs(t, y, prm, cfg, dy, work):
    """Per-mode system: state [p (k)], w (k), [w_a (k)] (y, dy (n,)); prm a modes row of RunTable."""
    k, pred, stop_grad, simsiam, normalize = cfg[0], cfg[1], cfg[2], cfg[3], cfg[4]
    alpha_p, eta, eta_p, beta = prm[ALPHA_P], prm[ETA], prm[ETA_P], prm[BETA]
    power, eps, floor = prm[RULE_POWER], prm[RULE_EPS], prm[RULE_FLOOR]
    lam_s = prm[LAM : LAM + k]
    lam_d = prm[LAM + k : LAM + 2 * k]
    has_p = pred <= 1
    off = k if has_p else 0
    w = y[off : off + k]
    wa = w if simsiam else y[off + k : off + 2 * k]
    p = work[:k]
    if has_p:
        for j in range(k):
            p[j] = y[j]
    elif pred == 2:
        for j in range(k):
            p[j] = 1.0
    else:  # DirectSet family on s = lam_s w^2, normalised by its largest value
        s_max = 0.0
        for j in range(k):
            s_max = max(s_max, lam_s[j] * w[j] * w[j])
        if s_max <= 0.0 or not normalize:
            s_max = 1.0
        for j in range(k):
            p[j] = directset_p(lam_s[j] * w[j] * w[j], s_max, power, eps, floor)
    for j in range(k):
        dp, dw, da = mode_terms(p[j], w[j], wa[j], alpha_p, eta, eta_p, beta, lam_s[j], lam_d[j], stop_grad)
        if has_p:
            dy[j] = dp
        dy[off + j] = dw
        if not simsiam:
            dy[off + k + j] = da


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def rhs(system, t, y, prm, cfg, dy, work):
    """The kernel-side right-hand side of one run: writes dy/dt into ``dy``.

    Args:
        system: 0 for the reduced matrix flow (:func:`matrix_rhs`), 1 for the per-mode system
            (:func:`mode_rhs`), as ``driver.SYSTEMS`` numbers them.
        t: flow time (float); unused (autonomous flows).
        y: the run's flat state, (n,).
        prm: the run's kernel row of the RunTable, (P,) (its column layout: ``runs.RunTable``).
        cfg: the system's integer configuration (int64 array, see each flow's ``numba_system``).
        dy: output, (n,), in units of 1 / flow time.
        work: scratch buffer of the system's work size.
    """
    # a branch rather than a function argument: numba cannot reuse its on-disk cache across
    # processes for functions that take other jitted functions as arguments
    if system == 0:
        matrix_rhs(t, y, prm, cfg, dy, work)
    else:
        mode_rhs(t, y, prm, cfg, dy, work)



@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def mode_rhs_lanes(y, prm, cfg, dy, pbuf, gbuf):
    """:func:`mode_rhs` for L lanes: y, dy (n, L); prm (P, L), one RunTable modes row per lane;
    scratch pbuf (k, L), gbuf (L,) (unused)."""
    k, pred, stop_grad, simsiam, normalize = cfg[0], cfg[1], cfg[2], cfg[3], cfg[4]
    L = y.shape[1]
    has_p = pred <= 1
    off = k if has_p else 0
    if has_p:
        for j in range(k):
            for l in range(L):
                pbuf[j, l] = y[j, l]
    elif pred == 2:
        for j in range(k):
            for l in range(L):
                pbuf[j, l] = 1.0
    else:
        for l in range(L):
            s_max = 0.0
            for j in range(k):
                w = y[off + j, l]
                s_max = max(s_max, prm[LAM + j, l] * w * w)
            if s_max <= 0.0 or not normalize:
                s_max = 1.0
            for j in range(k):
                w = y[off + j, l]
                pbuf[j, l] = directset_p(prm[LAM + j, l] * w * w, s_max, prm[RULE_POWER, l], prm[RULE_EPS, l],
                                         prm[RULE_FLOOR, l])
    for j in range(k):
        wo = off + j
        ao = wo if simsiam else off + k + j
        for l in range(L):
            dp, dw, da = mode_terms(pbuf[j, l], y[wo, l], y[ao, l], prm[ALPHA_P, l], prm[ETA, l], prm[ETA_P, l],
                                    prm[BETA, l], prm[LAM + j, l], prm[LAM + k + j, l], stop_grad)
            if has_p:
                dy[j, l] = dp
            dy[wo, l] = dw
            if not simsiam:
                dy[off + k + j, l] = da


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def one_mode_rhs(p, w, a, ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam):
    """:func:`mode_terms` for a one-mode state: (dp, dw, dw_a), unused slots (no p, SimSiam's w_a) 0."""
    pp = p if has_p else 1.0
    aa = w if simsiam else a
    dp, dw, da = mode_terms(pp, w, aa, ap, eta, etap, beta, ls, ld, stop_grad)
    return (dp if has_p else 0.0), dw, (0.0 if simsiam else da)
