"""numba backend 2: SIMD lanes for the per-mode system of many runs (k modes each).

The per-mode system of one run has 2-3 state variables per mode: a per-run solver spends its time in
loop overhead. Here L runs ("lanes") advance together in structure-of-arrays form, each with its own
clock and step size; every arithmetic loop runs over the lanes and vectorises. A lane whose run is
done takes the next run of its queue. Same tableaux, error norms and step controller as numba_runs.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ..runs import LAM
from .control import accept_factor, lands, reject_factor, starting_step, trial_step, underflow
from .numba_rhs import _FM, mode_rhs_lanes
from .numba_runs import finish_run

LANES = 16


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def _lane_rms(a, scale, l):
    acc = 0.0
    for c in range(a.shape[0]):
        v = a[c, l] / scale[c, l]
        acc += v * v
    return math.sqrt(acc / a.shape[0])



@nb.njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def mode_lanes_solve(Y0, PRM, cfg, t_save, A, B, Cc, E, E3, E5, s, dop853, exponent, order,
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
    prm[LAM : LAM + 2 * k, :] = 1.0  # idle lanes compute on harmless values
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
            mode_rhs_lanes(y, prm, cfg, ynew, pbuf, gbuf)
            for l in range(L):
                if fresh[l]:
                    for c in range(n):
                        K[0, c, l] = ynew[c, l]
                        scale[c, l] = atol + abs(y[c, l]) * rtol
                    d0 = _lane_rms(y, scale, l)
                    d1 = _lane_rms(ynew, scale, l)
                    he[l] = trial_step(d0, d1)
                else:
                    he[l] = 0.0
                for c in range(n):
                    ytmp[c, l] = y[c, l] + he[l] * K[0, c, l]
            mode_rhs_lanes(ytmp, prm, cfg, ynew, pbuf, gbuf)
            for l in range(L):
                if fresh[l]:
                    acc = 0.0
                    for c in range(n):
                        v = (ynew[c, l] - K[0, c, l]) / scale[c, l]
                        acc += v * v
                    d1 = _lane_rms(K[0], scale, l)
                    h[l] = starting_step(he[l], d1, math.sqrt(acc / n) / he[l], order)
                    nfev[l] = 2
                    fresh[l] = False
        for l in range(L):
            if run[l] >= 0:
                gap = t_save[pos[l]] - t[l]
                land[l] = lands(h[l], gap)
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
            mode_rhs_lanes(ytmp, prm, cfg, K[i], pbuf, gbuf)
        for c in range(n):
            for l in range(L):
                ynew[c, l] = y[c, l]
        for m in range(s):
            b = B[m]
            if b != 0.0:
                for c in range(n):
                    for l in range(L):
                        ynew[c, l] += b * he[l] * K[m, c, l]
        mode_rhs_lanes(ynew, prm, cfg, K[s], pbuf, gbuf)
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
                h_new = he[l] * accept_factor(err, exponent)
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
                h[l] = he[l] * reject_factor(err, exponent)
                if underflow(h[l], t[l]):
                    status = 2
            if status == 0 and nst[l] + nrej[l] >= max_steps and pos[l] < S:
                status = 3
            if status != 0 or pos[l] >= S:
                finish_run(out, stats, tfail, r, pos[l], status, nfev[l], nst[l], nrej[l], t[l])
                run[l] = -1
                free += 1
                for c in range(n):  # park the lane on harmless values
                    y[c, l] = 0.0
                for q in range(P):
                    prm[q, l] = 1.0 if q >= LAM else 0.0
