"""numba kernels: the CPU fast path of the built-in flows.

On two CPU cores a batched torch step is bound by memory traffic and per-op overhead (design.md,
performance notes): a DOP853 step moves ~120 state-sized vectors through memory. Here each run is
integrated by one thread from start to end with its whole working set (13 stages of 3,072 doubles for
the 64x32 flow) in L2 cache, its own adaptive step size, and the small matrix products handed to BLAS from inside numba (~25 GFLOP/s
a core for 32 x 32, measured; a hand-vectorised loop reached ~18). Runs are spread over cores with
``prange``.

The stepping logic mirrors :mod:`stopgrad.dynamics.integrate` (same tableaux, error norms, step
control and save-time clipping); tests check the two backends agree.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

_FM = {"reassoc", "contract"}  # lets LLVM vectorise the dot products; results stay deterministic
# error_model="numpy": IEEE division (inf/NaN, caught by the finiteness checks) instead of Python's
# ZeroDivisionError, which numba cannot raise from inside a prange loop.

# cfg layout (int64 array shared by all runs)
#   matrix: [n2, r, predictor(0 learned, 1 symmetric, 2 identity), stop_grad, simsiam]
#   modes:  [k, predictor(0 learned, 1 symmetric, 2 identity, 3 rule), stop_grad, simsiam, rule_normalize]
# prm layout (float64 row per run)
#   matrix: [alpha_p, eta, eta_p, beta, sigma2]
#   modes:  [alpha_p, eta, eta_p, beta, rule_power, rule_eps, rule_floor, lam_s[0:k], lam_d[0:k]]


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def matrix_rhs(t, y, prm, cfg, dy, work):
    """Reduced isotropic matrix flow: state C (n2, r), [W_p (n2, n2)], [C_a (n2, r)].

    The three small products go to BLAS (np.dot inside numba calls scipy's dgemm): 25 GFLOP/s a core
    for 32 x 32, against ~18 for the best hand-written loop measured here.
    """
    n2, r, pred, stop_grad, simsiam = cfg[0], cfg[1], cfg[2], cfg[3], cfg[4]
    alpha_p, eta, eta_p, beta, sigma2 = prm[0], prm[1], prm[2], prm[3], prm[4]
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
    return n2 * r + n2 * n2


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def mode_rhs(t, y, prm, cfg, dy, work):
    """Per-mode system: state [p (k)], w (k), [w_a (k)]."""
    k, pred, stop_grad, simsiam, normalize = cfg[0], cfg[1], cfg[2], cfg[3], cfg[4]
    alpha_p, eta, eta_p, beta = prm[0], prm[1], prm[2], prm[3]
    power, eps, floor = prm[4], prm[5], prm[6]
    lam_s = prm[7 : 7 + k]
    lam_d = prm[7 + k : 7 + 2 * k]
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
    else:  # DirectSet family: p = max(floor, (max(s,0)/s_max)^power + eps), s = lam_s w^2
        s_max = 0.0
        for j in range(k):
            s_max = max(s_max, lam_s[j] * w[j] * w[j])
        if s_max <= 0.0 or not normalize:
            s_max = 1.0
        for j in range(k):
            e = max(lam_s[j] * w[j] * w[j], 0.0) / s_max
            if e <= 1e-12:  # round-off zero, as predictor_rules.ROUNDOFF
                e = 0.0
            p[j] = max(floor, e**power + eps)
    for j in range(k):
        g = wa[j] * lam_d[j] - p[j] * w[j] * lam_s[j]
        if has_p:
            dy[j] = alpha_p * w[j] * g - eta_p * p[j]
        if stop_grad:
            dw = p[j] * g
        else:
            dw = -(p[j] * p[j] + 1.0) * w[j] * (lam_s[j] - lam_d[j]) - (p[j] - 1.0) ** 2 * w[j] * lam_d[j]
        dy[off + j] = dw - eta * w[j]
        if not simsiam:
            dy[off + k + j] = beta * (w[j] - wa[j])


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def _rhs(system, t, y, prm, cfg, dy, work):
    # a branch rather than a function argument: numba cannot reuse its on-disk cache across
    # processes for functions that take other jitted functions as arguments
    if system == 0:
        matrix_rhs(t, y, prm, cfg, dy, work)
    else:
        mode_rhs(t, y, prm, cfg, dy, work)


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def _rms_scaled(a, scale):
    acc = 0.0
    for j in range(a.size):
        v = a[j] / scale[j]
        acc += v * v
    return math.sqrt(acc / a.size)


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def _trial_step(d0, d1):
    """Hairer's first trial step (scipy's select_initial_step) from ||y0|| and ||f(y0)|| (scaled RMS)."""
    return 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def _starting_step(h0, d1, d2, order):
    """Hairer's starting step from the trial step h0, ||f(y0)|| and ||f(y0 + h0 f0) - f(y0)|| / h0."""
    dmax = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if dmax <= 1e-15 else (0.01 / dmax) ** (1.0 / (order + 1))
    return min(100.0 * h0, h1)


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def _combine(coef, K, m, out):
    """out = sum_l coef[l] K[l] over the first m rows, as contiguous axpys."""
    for j in range(out.size):
        out[j] = 0.0
    for l in range(m):
        c = coef[l]
        if c != 0.0:
            row = K[l]
            for j in range(out.size):
                out[j] += c * row[j]


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def _solve_run(system, y0, prm, cfg, t_save, A, B, Cc, E, E3, E5, s, dop853, exponent, order,
               rtol, atol, max_steps, blowup, out, K, y, ytmp, scale, e1, e2, work, stats, tfail):
    n = y0.size
    S = t_save.size
    for j in range(n):
        y[j] = y0[j]
        out[0, j] = y0[j]
    t = t_save[0]
    ymax = 1.0
    for j in range(n):
        ymax = max(ymax, abs(y0[j]))
    limit = blowup * ymax
    _rhs(system, t, y, prm, cfg, K[0], work)
    nfev = 1
    # Hairer's starting step (as scipy's select_initial_step)
    for j in range(n):
        scale[j] = atol + abs(y[j]) * rtol
    d0 = _rms_scaled(y, scale)
    d1 = _rms_scaled(K[0], scale)
    h0 = _trial_step(d0, d1)
    for j in range(n):
        ytmp[j] = y[j] + h0 * K[0, j]
    _rhs(system, t + h0, ytmp, prm, cfg, K[1], work)
    nfev += 1
    for j in range(n):
        K[2, j] = K[1, j] - K[0, j]
    h = _starting_step(h0, d1, _rms_scaled(K[2], scale) / h0, order)
    pos = 1
    nsteps = 0
    nrej = 0
    status = 0
    ynew = K[s + 1]  # spare row used as y_new
    while pos < S:
        t_next = t_save[pos]
        gap = t_next - t
        landing = h >= gap * (1.0 - 1e-12)
        h_eff = gap if landing else h
        for i in range(1, s):
            for j in range(n):
                ytmp[j] = y[j]
            for l in range(i):
                a = A[i, l] * h_eff
                if a != 0.0:
                    for j in range(n):
                        ytmp[j] += a * K[l, j]
            _rhs(system, t + Cc[i] * h_eff, ytmp, prm, cfg, K[i], work)
        for j in range(n):
            ynew[j] = y[j]
        for l in range(s):
            b = B[l] * h_eff
            if b != 0.0:
                for j in range(n):
                    ynew[j] += b * K[l, j]
        _rhs(system, t + h_eff, ynew, prm, cfg, K[s], work)
        nfev += s
        finite = True
        for j in range(n):
            scale[j] = atol + rtol * max(abs(y[j]), abs(ynew[j]))
            if not math.isfinite(ynew[j]):
                finite = False
        if dop853:
            _combine(E5, K, s + 1, e1)
            _combine(E3, K, s + 1, e2)
            n5 = 0.0
            n3 = 0.0
            for j in range(n):
                v5 = e1[j] / scale[j]
                v3 = e2[j] / scale[j]
                n5 += v5 * v5
                n3 += v3 * v3
            if n5 == 0.0 and n3 == 0.0:
                err = 0.0
            else:
                err = abs(h_eff) * n5 / math.sqrt((n5 + 0.01 * n3) * n)
        else:
            _combine(E, K, s + 1, e1)
            acc = 0.0
            for j in range(n):
                v = h_eff * e1[j] / scale[j]
                acc += v * v
            err = math.sqrt(acc / n)
        if not (finite and math.isfinite(err)):
            err = math.inf
        if err <= 1.0:
            factor = 10.0 if err == 0.0 else min(10.0, 0.9 * err**exponent)
            h_new = h_eff * factor
            h = max(h_new, h) if landing else h_new
            t = t_next if landing else t + h_eff
            big = 0.0
            for j in range(n):
                y[j] = ynew[j]
                K[0, j] = K[s, j]
                big = max(big, abs(ynew[j]))
            nsteps += 1
            if big > limit:
                status = 1
                break
            if landing:
                for j in range(n):
                    out[pos, j] = y[j]
                pos += 1
        else:
            nrej += 1
            h = h_eff * max(0.2, 0.9 * err**exponent) if math.isfinite(err) else h_eff * 0.2
            if h < 1e-14 * max(1.0, abs(t)):
                status = 2
                break
        if nsteps + nrej >= max_steps:
            status = 3
            break
    for q in range(pos, S):
        for j in range(n):
            out[q, j] = math.nan
    stats[0] = status
    stats[1] = nfev
    stats[2] = nsteps
    stats[3] = nrej
    tfail[0] = t if status != 0 else math.nan


@nb.njit(cache=True, parallel=True, error_model="numpy")
def _solve_batch(system, Y0, PRM, cfg, t_save, A, B, Cc, E, E3, E5, s, dop853, exponent, order,
                 rtol, atol, max_steps, blowup, work_size, out, stats, tfail, n_tasks):
    R, n = Y0.shape
    # task q takes runs q, q + n_tasks, ...: a sweep's grid order puts similar (similarly stiff) runs
    # side by side, and contiguous shares per thread would leave one thread idle at the end
    for q in nb.prange(n_tasks):
        K = np.empty((s + 2, n))
        y = np.empty(n)
        ytmp = np.empty(n)
        scale = np.empty(n)
        e1 = np.empty(n)
        e2 = np.empty(n)
        work = np.empty(max(work_size, 1))
        for r in range(np.int64(q), R, n_tasks):
            _solve_run(system, Y0[r], PRM[r], cfg, t_save, A, B, Cc, E, E3, E5, s, dop853, exponent, order,
                       rtol, atol, max_steps, blowup, out[r], K, y, ytmp, scale, e1, e2, work, stats[r],
                       tfail[r:r + 1])


def solve_batch(system: str, Y0, PRM, cfg, t_save, tableau, rtol, atol, max_steps, blowup, work_size):
    """Integrate every row of Y0 (R, n); returns states (R, S, n), stats (R, 4) and t_fail (R,).

    stats columns: status (0 ok, 1 blow-up, 2 step-size underflow, 3 max steps), nfev, steps, rejected.
    """
    Y0 = np.ascontiguousarray(Y0, dtype=np.float64)
    PRM = np.ascontiguousarray(PRM, dtype=np.float64)
    R, n = Y0.shape
    S = len(t_save)
    out = np.empty((R, S, n))
    stats = np.zeros((R, 4), dtype=np.int64)
    tfail = np.full(R, np.nan)
    tab = tableau
    E = tab["E"] if tab["E"] is not None else np.zeros(tab["s"] + 1)
    E3 = tab["E3"] if tab["E3"] is not None else np.zeros(tab["s"] + 1)
    E5 = tab["E5"] if tab["E5"] is not None else np.zeros(tab["s"] + 1)
    args = (np.asarray(cfg, dtype=np.int64), np.asarray(t_save, dtype=np.float64), tab["A"], tab["B"], tab["C"], E, E3,
            E5, tab["s"], tab["dop853"], tab["exponent"], tab["order"], float(rtol), float(atol), int(max_steps),
            float(blowup))
    if one_mode_applies(system, cfg, tab, R):
        _solve_one_mode(Y0, PRM, cfg, t_save, tab, rtol, atol, max_steps, blowup, out, stats, tfail)
    elif system == "modes" and R >= 4 * LANES:
        # many tiny systems: SIMD lanes; a few tasks per thread balance the load
        n_tasks = max(1, min(R // LANES, 8 * nb.get_num_threads()))
        _mode_lanes_batch(Y0, PRM, *args, out, stats, tfail, n_tasks)
    else:
        n_tasks = max(1, min(R, 4 * nb.get_num_threads()))
        _solve_batch({"matrix": 0, "modes": 1}[system], Y0, PRM, *args, int(work_size), out, stats, tfail, n_tasks)
    return out, stats, tfail


# --- SIMD lanes for tiny systems ---------------------------------------------------------------------
# The per-mode system of one run has 2-3 state variables per mode: a per-run solver spends its time in
# loop overhead. Here L runs ("lanes") advance together in structure-of-arrays form, each with its own
# clock and step size; every arithmetic loop runs over the lanes and vectorises. A lane whose run is
# done takes the next run of its queue.

LANES = 16


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def _mode_rhs_lanes(y, prm, cfg, dy, pbuf, gbuf):
    """The per-mode RHS for L lanes: y, dy (n, L); prm (P, L) as in mode_rhs; scratch pbuf (k, L), gbuf (L,)."""
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
                s_max = max(s_max, prm[7 + j, l] * w * w)
            if s_max <= 0.0 or not normalize:
                s_max = 1.0
            for j in range(k):
                w = y[off + j, l]
                e = max(prm[7 + j, l] * w * w, 0.0) / s_max
                if e <= 1e-12:
                    e = 0.0
                pbuf[j, l] = max(prm[6, l], e ** prm[4, l] + prm[5, l])
    # the branches are hoisted out of the lane loops so that each loop vectorises
    for j in range(k):
        wo = off + j
        ao = wo if simsiam else off + k + j
        for l in range(L):  # g = w_a lam_d - p w lam_s
            gbuf[l] = y[ao, l] * prm[7 + k + j, l] - pbuf[j, l] * y[wo, l] * prm[7 + j, l]
        if has_p:
            for l in range(L):
                dy[j, l] = prm[0, l] * y[wo, l] * gbuf[l] - prm[2, l] * pbuf[j, l]
        if stop_grad:
            for l in range(L):
                dy[wo, l] = pbuf[j, l] * gbuf[l] - prm[1, l] * y[wo, l]
        else:
            for l in range(L):
                w = y[wo, l]
                ls = prm[7 + j, l]
                ld = prm[7 + k + j, l]
                p = pbuf[j, l]
                dy[wo, l] = -(p * p + 1.0) * w * (ls - ld) - (p - 1.0) * (p - 1.0) * w * ld - prm[1, l] * w
        if not simsiam:
            for l in range(L):
                dy[off + k + j, l] = prm[3, l] * (y[wo, l] - y[ao, l])


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def _lane_rms(a, scale, l):
    acc = 0.0
    for c in range(a.shape[0]):
        v = a[c, l] / scale[c, l]
        acc += v * v
    return math.sqrt(acc / a.shape[0])


@nb.njit(cache=True, error_model="numpy")
def _finish_run(out, stats, tfail, r, pos, status, nfev, nst, nrej, t):
    """Record run r's end: NaN after the last save reached, its counters, and t_fail if it failed."""
    for q in range(pos, out.shape[1]):
        for c in range(out.shape[2]):
            out[r, q, c] = math.nan
    stats[r, 0] = status
    stats[r, 1] = np.int64(nfev)
    stats[r, 2] = np.int64(nst)
    stats[r, 3] = np.int64(nrej)
    tfail[r] = t if status != 0 else math.nan


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def _mode_lanes_solve(Y0, PRM, cfg, t_save, A, B, Cc, E, E3, E5, s, dop853, exponent, order,
                      rtol, atol, max_steps, blowup, out, stats, tfail, first, stride):
    """Integrate runs first, first + stride, ... of Y0 in LANES SIMD lanes."""
    n = Y0.shape[1]
    P = PRM.shape[1]
    S = t_save.size
    L = LANES
    k = cfg[0]
    y = np.zeros((n, L))
    ytmp = np.zeros((n, L))
    ynew = np.zeros((n, L))
    scale = np.ones((n, L))
    K = np.zeros((s + 1, n, L))
    prm = np.zeros((P, L))
    prm[7 : 7 + 2 * k, :] = 1.0  # idle lanes compute on harmless values
    pbuf = np.zeros((k, L))
    gbuf = np.zeros(L)
    t = np.zeros(L)
    h = np.zeros(L)
    he = np.zeros(L)
    land = np.zeros(L, dtype=np.bool_)
    limit = np.zeros(L)
    pos = np.zeros(L, dtype=np.int64)
    run = np.full(L, -1, dtype=np.int64)
    fresh = np.zeros(L, dtype=np.bool_)
    nfev = np.zeros(L, dtype=np.int64)
    nst = np.zeros(L, dtype=np.int64)
    nrej = np.zeros(L, dtype=np.int64)
    n5 = np.zeros(L)
    n3 = np.zeros(L)
    hi = Y0.shape[0]
    nxt = first
    free = L
    while True:
        any_new = False
        active = L - free
        for l in range(L):
            if free == 0:
                break
            if run[l] < 0 and nxt < hi:
                r = nxt
                nxt += stride
                run[l] = r
                big = 1.0
                for c in range(n):
                    y[c, l] = Y0[r, c]
                    out[r, 0, c] = Y0[r, c]
                    big = max(big, abs(Y0[r, c]))
                for q in range(P):
                    prm[q, l] = PRM[r, q]
                t[l] = t_save[0]
                pos[l] = 1
                limit[l] = blowup * big
                nfev[l] = 0
                nst[l] = 0
                nrej[l] = 0
                fresh[l] = True
                any_new = True
                free -= 1
                active += 1
        if active == 0:
            break
        if any_new:  # first stage and Hairer's starting step for the new lanes
            _mode_rhs_lanes(y, prm, cfg, ynew, pbuf, gbuf)
            for l in range(L):
                if fresh[l]:
                    for c in range(n):
                        K[0, c, l] = ynew[c, l]
                        scale[c, l] = atol + abs(y[c, l]) * rtol
                    d0 = _lane_rms(y, scale, l)
                    d1 = _lane_rms(ynew, scale, l)
                    he[l] = _trial_step(d0, d1)
                else:
                    he[l] = 0.0
                for c in range(n):
                    ytmp[c, l] = y[c, l] + he[l] * K[0, c, l]
            _mode_rhs_lanes(ytmp, prm, cfg, ynew, pbuf, gbuf)
            for l in range(L):
                if fresh[l]:
                    acc = 0.0
                    for c in range(n):
                        v = (ynew[c, l] - K[0, c, l]) / scale[c, l]
                        acc += v * v
                    d1 = _lane_rms(K[0], scale, l)
                    h[l] = _starting_step(he[l], d1, math.sqrt(acc / n) / he[l], order)
                    nfev[l] = 2
                    fresh[l] = False
        for l in range(L):
            if run[l] >= 0:
                gap = t_save[pos[l]] - t[l]
                land[l] = h[l] >= gap * (1.0 - 1e-12)
                he[l] = gap if land[l] else h[l]
            else:
                land[l] = False
                he[l] = 0.0
        for i in range(1, s):
            for c in range(n):
                for l in range(L):
                    ytmp[c, l] = y[c, l]
            for m in range(i):
                a = A[i, m]
                if a != 0.0:
                    for c in range(n):
                        for l in range(L):
                            ytmp[c, l] += a * he[l] * K[m, c, l]
            _mode_rhs_lanes(ytmp, prm, cfg, K[i], pbuf, gbuf)
        for c in range(n):
            for l in range(L):
                ynew[c, l] = y[c, l]
        for m in range(s):
            b = B[m]
            if b != 0.0:
                for c in range(n):
                    for l in range(L):
                        ynew[c, l] += b * he[l] * K[m, c, l]
        _mode_rhs_lanes(ynew, prm, cfg, K[s], pbuf, gbuf)
        # error estimates, lanes innermost: e5 and e3 accumulate in the ytmp and scale buffers
        for c in range(n):
            for l in range(L):
                ytmp[c, l] = 0.0
                scale[c, l] = 0.0
        for m in range(s + 1):
            w5 = E5[m] if dop853 else E[m]
            if w5 != 0.0:
                for c in range(n):
                    for l in range(L):
                        ytmp[c, l] += w5 * K[m, c, l]
            if dop853 and E3[m] != 0.0:
                w3 = E3[m]
                for c in range(n):
                    for l in range(L):
                        scale[c, l] += w3 * K[m, c, l]
        for l in range(L):
            n5[l] = 0.0
            n3[l] = 0.0
        for c in range(n):
            for l in range(L):
                sc = atol + rtol * max(abs(y[c, l]), abs(ynew[c, l]))
                e5 = ytmp[c, l] / sc
                e3 = scale[c, l] / sc
                if not dop853:
                    e5 *= he[l]
                n5[l] += e5 * e5
                n3[l] += e3 * e3
        for l in range(L):
            r = run[l]
            if r < 0:
                continue
            nfev[l] += s
            if dop853:
                err = 0.0 if (n5[l] == 0.0 and n3[l] == 0.0) else abs(he[l]) * n5[l] / math.sqrt((n5[l] + 0.01 * n3[l]) * n)
            else:
                err = math.sqrt(n5[l] / n)
            if not math.isfinite(err):  # a NaN or inf in y_new reaches err through K[s] = f(y_new)
                err = math.inf
            status = 0
            if err <= 1.0:
                factor = 10.0 if err == 0.0 else min(10.0, 0.9 * err**exponent)
                h_new = he[l] * factor
                h[l] = max(h_new, h[l]) if land[l] else h_new
                t[l] = t_save[pos[l]] if land[l] else t[l] + he[l]
                big = 0.0
                for c in range(n):
                    y[c, l] = ynew[c, l]
                    K[0, c, l] = K[s, c, l]
                    big = max(big, abs(ynew[c, l]))
                nst[l] += 1
                if big > limit[l]:
                    status = 1
                elif land[l]:
                    for c in range(n):
                        out[r, pos[l], c] = y[c, l]
                    pos[l] += 1
            else:
                nrej[l] += 1
                h[l] = he[l] * max(0.2, 0.9 * err**exponent) if math.isfinite(err) else he[l] * 0.2
                if h[l] < 1e-14 * max(1.0, abs(t[l])):
                    status = 2
            if status == 0 and nst[l] + nrej[l] >= max_steps and pos[l] < S:
                status = 3
            if status != 0 or pos[l] >= S:
                _finish_run(out, stats, tfail, r, pos[l], status, nfev[l], nst[l], nrej[l], t[l])
                run[l] = -1
                free += 1
                for c in range(n):  # park the lane on harmless values
                    y[c, l] = 0.0
                for q in range(P):
                    prm[q, l] = 1.0 if q >= 7 else 0.0


@nb.njit(cache=True, parallel=True, error_model="numpy")
def _mode_lanes_batch(Y0, PRM, cfg, t_save, A, B, Cc, E, E3, E5, s, dop853, exponent, order,
                      rtol, atol, max_steps, blowup, out, stats, tfail, n_tasks):
    for task in nb.prange(n_tasks):  # strided shares, as in _solve_batch
        _mode_lanes_solve(Y0, PRM, cfg, t_save, A, B, Cc, E, E3, E5, s, dop853, exponent, order,
                          rtol, atol, max_steps, blowup, out, stats, tfail, np.int64(task), np.int64(n_tasks))


# --- one mode per run, Dormand-Prince 5(4): the phase-diagram fast path ------------------------------
# A per-mode grid (one (p, w, w_a) system per run) is the common case of the lane kernel above. Here a
# whole step of a lane is straight-line code on scalars, so LLVM vectorises the lane loop with every
# stage in registers. That needs (measured with numba 0.63 / LLVM 22): a compile-time lane count with
# compile-time row offsets into one buffer (runtime offsets need more alias checks than LLVM allows),
# a sum rather than a max reduction, and no libm call in the loop (hence _step_factor). Same steps as
# the other kernels: tableau, error norm, step control, save-time clipping and failure codes.

ONE_LANES = 16
# rows of the lane buffer: quantity q of lane l lives at buf[q * ONE_LANES + l]
(_P, _W, _A, _K1P, _K1W, _K1A, _AP, _ETA, _ETAP, _BETA, _LS, _LD, _T, _H, _TN, _LIM, _ACT, _NFEV, _NST, _NREJ,
 _EV, _ERR, _NROWS) = range(23)


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def _step_factor(err):
    """0.9 err^(-1/5) (the Dormand-Prince controller) without a libm call, to a few ulp of pow.

    err is clamped to [1e-6, 1e4]; outside it the factor is clipped to [0.2, 10] anyway."""
    x = min(max(err, 1e-6), 1e4)
    m = 0.9
    # (x 2^(5j))^(-1/5) = x^(-1/5) 2^(-j): bring x into [1, 32) by powers of 32, then into [1, 2)
    for below, mul, f in ((2.0**-10, 2.0**10, 4.0), (2.0**-10, 2.0**10, 4.0), (1.0, 32.0, 2.0), (1.0, 32.0, 2.0)):
        c = x < below
        x = x * mul if c else x
        m = m * f if c else m
    for above, f in ((2.0**10, 0.25), (32.0, 0.5), (16.0, 16.0**-0.2), (4.0, 4.0**-0.2), (2.0, 2.0**-0.2)):
        c = x >= above
        x = x * (1.0 / above) if c else x
        m = m * f if c else m
    z = 1.0 - 0.12 * (x - 1.0)  # Newton for z = x^(-1/5) on [1, 2): 1e-2 -> 1e-4 -> 1e-8 -> 1e-16
    for _ in range(4):
        z2 = z * z
        z = z * (1.2 - 0.2 * x * z2 * z2 * z)
    return m * z


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def _one_rhs(p, w, a, ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam):
    """mode_rhs for one mode on scalars: (dp, dw, dw_a); unused slots (no p, SimSiam's w_a) get 0."""
    pp = p if has_p else 1.0
    aa = w if simsiam else a
    g = aa * ld - pp * w * ls
    dp = ap * w * g - etap * pp if has_p else 0.0
    if stop_grad:
        dw = pp * g - eta * w
    else:
        dw = -(pp * pp + 1.0) * w * (ls - ld) - (pp - 1.0) * (pp - 1.0) * w * ld - eta * w
    da = 0.0 if simsiam else beta * (w - a)
    return dp, dw, da


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def _one_lane_steps(buf, c, has_p, stop_grad, simsiam, n, rtol, atol, max_steps):
    """One Dormand-Prince step in each lane (idle lanes take h = 0); returns the number of lanes with
    an event (a landing on a save time, a failure or the step limit) for the scalar bookkeeping."""
    a21, a31, a32, a41, a42, a43 = c[0], c[1], c[2], c[3], c[4], c[5]
    a51, a52, a53, a54, a61, a62, a63, a64, a65 = c[6], c[7], c[8], c[9], c[10], c[11], c[12], c[13], c[14]
    b1, b3, b4, b5, b6 = c[15], c[16], c[17], c[18], c[19]
    e1, e3, e4, e5, e6, e7 = c[20], c[21], c[22], c[23], c[24], c[25]
    wa_mask = 0.0 if simsiam else 1.0
    L = ONE_LANES
    events = 0.0
    for l in range(L):
        p, w, a = buf[_P * L + l], buf[_W * L + l], buf[_A * L + l]
        k1p, k1w, k1a = buf[_K1P * L + l], buf[_K1W * L + l], buf[_K1A * L + l]
        ap, eta, etap, beta = buf[_AP * L + l], buf[_ETA * L + l], buf[_ETAP * L + l], buf[_BETA * L + l]
        ls, ld = buf[_LS * L + l], buf[_LD * L + l]
        t, h, tn, act = buf[_T * L + l], buf[_H * L + l], buf[_TN * L + l], buf[_ACT * L + l]
        gap = tn - t
        land = h >= gap * (1.0 - 1e-12)
        he = (gap if land else h) * act
        k2p, k2w, k2a = _one_rhs(p + he * (a21 * k1p), w + he * (a21 * k1w), a + he * (a21 * k1a),
                                 ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
        k3p, k3w, k3a = _one_rhs(p + he * (a31 * k1p + a32 * k2p), w + he * (a31 * k1w + a32 * k2w),
                                 a + he * (a31 * k1a + a32 * k2a), ap, eta, etap, beta, ls, ld, has_p, stop_grad,
                                 simsiam)
        k4p, k4w, k4a = _one_rhs(p + he * (a41 * k1p + a42 * k2p + a43 * k3p),
                                 w + he * (a41 * k1w + a42 * k2w + a43 * k3w),
                                 a + he * (a41 * k1a + a42 * k2a + a43 * k3a),
                                 ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
        k5p, k5w, k5a = _one_rhs(p + he * (a51 * k1p + a52 * k2p + a53 * k3p + a54 * k4p),
                                 w + he * (a51 * k1w + a52 * k2w + a53 * k3w + a54 * k4w),
                                 a + he * (a51 * k1a + a52 * k2a + a53 * k3a + a54 * k4a),
                                 ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
        k6p, k6w, k6a = _one_rhs(p + he * (a61 * k1p + a62 * k2p + a63 * k3p + a64 * k4p + a65 * k5p),
                                 w + he * (a61 * k1w + a62 * k2w + a63 * k3w + a64 * k4w + a65 * k5w),
                                 a + he * (a61 * k1a + a62 * k2a + a63 * k3a + a64 * k4a + a65 * k5a),
                                 ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
        pn = p + he * (b1 * k1p + b3 * k3p + b4 * k4p + b5 * k5p + b6 * k6p)
        wn = w + he * (b1 * k1w + b3 * k3w + b4 * k4w + b5 * k5w + b6 * k6w)
        an = a + he * (b1 * k1a + b3 * k3a + b4 * k4a + b5 * k5a + b6 * k6a)
        k7p, k7w, k7a = _one_rhs(pn, wn, an, ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
        ep = he * (e1 * k1p + e3 * k3p + e4 * k4p + e5 * k5p + e6 * k6p + e7 * k7p) / (atol + rtol * max(abs(p), abs(pn)))
        ew = he * (e1 * k1w + e3 * k3w + e4 * k4w + e5 * k5w + e6 * k6w + e7 * k7w) / (atol + rtol * max(abs(w), abs(wn)))
        ea = he * (e1 * k1a + e3 * k3a + e4 * k4a + e5 * k5a + e6 * k6a + e7 * k7a) / (atol + rtol * max(abs(a), abs(an)))
        err = math.sqrt((ep * ep + ew * ew + wa_mask * ea * ea) / n)
        finite = err <= math.inf  # a NaN or inf in y_new reaches err through k7
        err = err if finite else math.inf
        fac = _step_factor(err)
        acc = err <= 1.0
        h_acc = he * (10.0 if err == 0.0 else min(10.0, fac))
        h_acc = max(h_acc, h) if land else h_acc
        h_rej = he * (max(0.2, fac) if finite else 0.2)
        buf[_H * L + l] = h_acc if acc else h_rej
        buf[_T * L + l] = (tn if land else t + he) if acc else t
        buf[_P * L + l] = pn if acc else p
        buf[_W * L + l] = wn if acc else w
        buf[_A * L + l] = an if acc else a
        buf[_K1P * L + l] = k7p if acc else k1p
        buf[_K1W * L + l] = k7w if acc else k1w
        buf[_K1A * L + l] = k7a if acc else k1a
        nst = buf[_NST * L + l] + (act if acc else 0.0)
        nrej = buf[_NREJ * L + l] + (0.0 if acc else act)
        buf[_NST * L + l] = nst
        buf[_NREJ * L + l] = nrej
        buf[_NFEV * L + l] += 6.0 * act
        buf[_ERR * L + l] = err
        big = max(abs(pn), max(abs(wn), abs(an)))
        landed = acc and (land or big > buf[_LIM * L + l])
        stuck = not acc and h_rej < 1e-14 * max(1.0, abs(t))
        ev = act if (landed or stuck or nst + nrej >= max_steps) else 0.0
        buf[_EV * L + l] = ev
        events += ev
    return events


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def _one_mode_solve(Y0, PRM, slots, has_p, stop_grad, simsiam, t_save, c, order, rtol, atol, max_steps, blowup, out,
                    stats, tfail, first, stride):
    """Runs first, first + stride, ... of a one-mode system, ONE_LANES at a time. slots[q] is the lane
    row (_P, _W or _A) of state column q."""
    n = Y0.shape[1]
    S = t_save.size
    L = ONE_LANES
    buf = np.zeros(_NROWS * L)
    for l in range(L):  # idle lanes compute on harmless values
        buf[_P * L + l] = 1.0
        buf[_LS * L + l] = 1.0
        buf[_LD * L + l] = 1.0
    run = np.full(L, -1, dtype=np.int64)
    pos = np.zeros(L, dtype=np.int64)
    mask = np.array([1.0 if has_p else 0.0, 1.0, 0.0 if simsiam else 1.0])
    y = np.zeros(3)
    nf = float(n)
    nxt = first
    active = 0
    while True:
        for l in range(L):  # refill idle lanes; a new run starts with Hairer's initial step
            if run[l] >= 0 or nxt >= Y0.shape[0]:
                continue
            r = nxt
            nxt += stride
            run[l] = r
            y[0], y[1], y[2] = 1.0, 0.0, 0.0
            big = 1.0
            for q in range(n):
                y[slots[q]] = Y0[r, q]
                out[r, 0, q] = Y0[r, q]
                big = max(big, abs(Y0[r, q]))
            ap, eta, etap, beta, ls, ld = PRM[r, 0], PRM[r, 1], PRM[r, 2], PRM[r, 3], PRM[r, 7], PRM[r, 8]
            f0 = _one_rhs(y[0], y[1], y[2], ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
            d0 = 0.0
            d1 = 0.0
            for q in range(3):
                sc = atol + abs(y[q]) * rtol
                d0 += mask[q] * (y[q] / sc) ** 2
                d1 += mask[q] * (f0[q] / sc) ** 2
            d0 = math.sqrt(d0 / nf)
            d1 = math.sqrt(d1 / nf)
            h0 = _trial_step(d0, d1)
            f1 = _one_rhs(y[0] + h0 * f0[0], y[1] + h0 * f0[1], y[2] + h0 * f0[2], ap, eta, etap, beta, ls, ld,
                          has_p, stop_grad, simsiam)
            d2 = 0.0
            for q in range(3):
                d2 += mask[q] * ((f1[q] - f0[q]) / (atol + abs(y[q]) * rtol)) ** 2
            h = _starting_step(h0, d1, math.sqrt(d2 / nf) / h0, order)
            row = (y[0], y[1], y[2], f0[0], f0[1], f0[2], ap, eta, etap, beta, ls, ld, t_save[0], h,
                   t_save[1], blowup * big, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0)
            for q in range(_NROWS):
                buf[q * L + l] = row[q]
            pos[l] = 1
            active += 1
        if active == 0:
            break
        while _one_lane_steps(buf, c, has_p, stop_grad, simsiam, nf, rtol, atol, max_steps) == 0.0:
            pass
        for l in range(L):
            if buf[_EV * L + l] == 0.0:
                continue
            buf[_EV * L + l] = 0.0
            r = run[l]
            t = buf[_T * L + l]
            status = 0
            if buf[_ERR * L + l] <= 1.0:
                big = max(abs(buf[_P * L + l]), max(abs(buf[_W * L + l]), abs(buf[_A * L + l])))
                if big > buf[_LIM * L + l]:
                    status = 1
                elif t == t_save[pos[l]]:  # landed on a save time
                    for q in range(n):
                        out[r, pos[l], q] = buf[slots[q] * L + l]
                    pos[l] += 1
                    if pos[l] < S:
                        buf[_TN * L + l] = t_save[pos[l]]
            elif buf[_H * L + l] < 1e-14 * max(1.0, abs(t)):
                status = 2
            nst, nrej = buf[_NST * L + l], buf[_NREJ * L + l]
            if status == 0 and nst + nrej >= max_steps and pos[l] < S:
                status = 3
            if status != 0 or pos[l] >= S:
                _finish_run(out, stats, tfail, r, pos[l], status, buf[_NFEV * L + l], nst, nrej, t)
                run[l] = -1
                active -= 1
                buf[_ACT * L + l] = 0.0


@nb.njit(cache=True, parallel=True, error_model="numpy")
def _one_mode_batch(Y0, PRM, slots, has_p, stop_grad, simsiam, t_save, c, order, rtol, atol, max_steps, blowup, out,
                    stats, tfail, n_tasks):
    for task in nb.prange(n_tasks):  # strided shares, as in _solve_batch
        _one_mode_solve(Y0, PRM, slots, has_p, stop_grad, simsiam, t_save, c, order, rtol, atol, max_steps, blowup,
                        out, stats, tfail, np.int64(task), np.int64(n_tasks))


def one_mode_applies(system: str, cfg, tableau, n_runs: int) -> bool:
    """Whether solve_batch takes the one-mode Dormand-Prince path."""
    return (system == "modes" and int(cfg[0]) == 1 and int(cfg[1]) <= 2 and not tableau["dop853"]
            and tableau["s"] == 6 and n_runs >= 4 * ONE_LANES)


def _solve_one_mode(Y0, PRM, cfg, t_save, tab, rtol, atol, max_steps, blowup, out, stats, tfail):
    has_p, stop_grad, simsiam = int(cfg[1]) <= 1, bool(cfg[2]), bool(cfg[3])
    slots = np.array(([_P] if has_p else []) + [_W] + ([] if simsiam else [_A]), dtype=np.int64)
    A, B, E = tab["A"], tab["B"], tab["E"]
    c = np.array([A[1, 0], A[2, 0], A[2, 1], A[3, 0], A[3, 1], A[3, 2], A[4, 0], A[4, 1], A[4, 2], A[4, 3],
                  A[5, 0], A[5, 1], A[5, 2], A[5, 3], A[5, 4], B[0], B[2], B[3], B[4], B[5],
                  E[0], E[2], E[3], E[4], E[5], E[6]], dtype=np.float64)
    assert B[1] == 0.0 and E[1] == 0.0  # the Dormand-Prince structure the step code relies on
    n_tasks = max(1, min(len(Y0) // ONE_LANES, 8 * nb.get_num_threads()))
    _one_mode_batch(Y0, PRM, slots, has_p, stop_grad, simsiam, np.asarray(t_save, dtype=np.float64), c,
                    int(tab["order"]), float(rtol), float(atol), float(max_steps), float(blowup), out, stats, tfail,
                    n_tasks)
