"""numba backend 1: one run at a time per share, any built-in flow (numba_rhs), any adaptive tableau or rk4.

On two CPU cores a batched torch step is bound by memory traffic and per-op overhead (design.md,
performance notes): a DOP853 step moves ~120 state-sized vectors through memory. Here each run is
integrated by one thread from start to end with its whole working set (13 stages of 3,072 doubles for
the 64x32 flow) in L2 cache, its own adaptive step size, and the small matrix products handed to BLAS
from inside numba (~25 GFLOP/s a core for 32 x 32, measured; a hand-vectorised loop reached ~18).
Shares of runs are handed to threads dynamically (solvers.scheduling).

The stepping logic is the torch loop's (solvers.torch_rk): same tableaux, error norms, the one step
controller (solvers.control) and save-time clipping; tests check the backends agree.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .control import accept_factor, fixed_steps, lands, reject_factor, starting_step, trial_step, underflow
from .numba_rhs import _FM, rhs


@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def _rms_scaled(a, scale):
    acc = 0.0
    for j in range(a.size):
        v = a[j] / scale[j]
        acc += v * v
    return math.sqrt(acc / a.size)



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
def solve_run(system, y0, prm, cfg, t_save, A, B, Cc, E, E3, E5, s, dop853, exponent, order,
               rtol, atol, max_steps, blowup, out, K, y, ytmp, scale, e1, e2, work, stats, tfail):
    """Integrate one run with an adaptive embedded pair (tableau A, B, Cc, E/E3/E5), saving at t_save.

    y0 (n,) and prm (P,) in; out (S, n), stats (4,) and tfail (a 1-element view) written; K, y, ytmp,
    scale, e1, e2, work are caller-owned scratch, so that a share allocates them once.
    """
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
    rhs(system, t, y, prm, cfg, K[0], work)
    nfev = 1
    # Hairer's starting step (as scipy's select_initial_step)
    for j in range(n):
        scale[j] = atol + abs(y[j]) * rtol
    d0 = _rms_scaled(y, scale)
    d1 = _rms_scaled(K[0], scale)
    h0 = trial_step(d0, d1)
    for j in range(n):
        ytmp[j] = y[j] + h0 * K[0, j]
    rhs(system, t + h0, ytmp, prm, cfg, K[1], work)
    nfev += 1
    for j in range(n):
        K[2, j] = K[1, j] - K[0, j]
    h = starting_step(h0, d1, _rms_scaled(K[2], scale) / h0, order)
    pos = 1
    nsteps = 0
    nrej = 0
    status = 0
    ynew = K[s + 1]  # spare row used as y_new
    while pos < S:
        t_next = t_save[pos]
        gap = t_next - t
        landing = lands(h, gap)
        h_eff = gap if landing else h
        for i in range(1, s):
            for j in range(n):
                ytmp[j] = y[j]
            for l in range(i):
                a = A[i, l] * h_eff
                if a != 0.0:
                    for j in range(n):
                        ytmp[j] += a * K[l, j]
            rhs(system, t + Cc[i] * h_eff, ytmp, prm, cfg, K[i], work)
        for j in range(n):
            ynew[j] = y[j]
        for l in range(s):
            b = B[l] * h_eff
            if b != 0.0:
                for j in range(n):
                    ynew[j] += b * K[l, j]
        rhs(system, t + h_eff, ynew, prm, cfg, K[s], work)
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
            h_new = h_eff * accept_factor(err, exponent)
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
            h = h_eff * reject_factor(err, exponent)
            if underflow(h, t):
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



@nb.njit(cache=True, nogil=True, error_model="numpy")
def solve_runs_share(system, Y0, PRM, cfg, t_save, A, B, Cc, E, E3, E5, s, dop853, exponent, order,
                     rtol, atol, max_steps, blowup, work_size, out, stats, tfail, first, stride):
    """Integrate runs first, first + stride, ... of Y0 (one share; solvers.scheduling hands shares
    to threads), each from start to end with its own working set."""
    R, n = Y0.shape
    K = np.empty((s + 2, n))
    y = np.empty(n)
    ytmp = np.empty(n)
    scale = np.empty(n)
    e1 = np.empty(n)
    e2 = np.empty(n)
    work = np.empty(max(work_size, 1))
    for r in range(first, R, stride):
        solve_run(system, Y0[r], PRM[r], cfg, t_save, A, B, Cc, E, E3, E5, s, dop853, exponent, order,
                   rtol, atol, max_steps, blowup, out[r], K, y, ytmp, scale, e1, e2, work, stats[r],
                   tfail[r:r + 1])



@nb.njit(cache=True, fastmath=_FM, error_model="numpy")
def solve_run_rk4(system, y0, prm, cfg, t_save, dt, max_steps, blowup, out, K, y, ytmp, work, stats, tfail):
    """Classical RK4 with fixed steps, as the torch loop takes them: each gap between save times in
    control.fixed_steps equal steps; max_steps binds; a blow-up stops the run at the step's end."""
    n = y0.size
    S = t_save.size
    ymax = 1.0
    for j in range(n):
        y[j] = y0[j]
        out[0, j] = y0[j]
        ymax = max(ymax, abs(y0[j]))
    limit = blowup * ymax
    taken = 0
    status = 0
    t_stop = math.nan
    pos = 1
    while pos < S:
        t0 = t_save[pos - 1]
        n_sub = fixed_steps(t_save[pos] - t0, dt)
        h = (t_save[pos] - t0) / n_sub
        n_do = min(n_sub, max_steps - taken)
        for q in range(n_do):
            t = t0 + q * h
            rhs(system, t, y, prm, cfg, K[0], work)
            for j in range(n):
                ytmp[j] = y[j] + (h / 2) * K[0, j]
            rhs(system, t + h / 2, ytmp, prm, cfg, K[1], work)
            for j in range(n):
                ytmp[j] = y[j] + (h / 2) * K[1, j]
            rhs(system, t + h / 2, ytmp, prm, cfg, K[2], work)
            for j in range(n):
                ytmp[j] = y[j] + h * K[2, j]
            rhs(system, t + h, ytmp, prm, cfg, K[3], work)
            big = 0.0
            finite = True
            for j in range(n):
                y[j] = y[j] + (h / 6) * (K[0, j] + 2 * K[1, j] + 2 * K[2, j] + K[3, j])
                big = max(big, abs(y[j]))
                if not math.isfinite(y[j]):
                    finite = False
            taken += 1
            if not finite or big > limit:
                status = 1
                t_stop = t + h
                break
        if status == 0 and n_do < n_sub:
            status = 3
            t_stop = t0 + n_do * h
        if status != 0:
            break
        for j in range(n):
            out[pos, j] = y[j]
        pos += 1
    for q in range(pos, S):
        for j in range(n):
            out[q, j] = math.nan
    stats[0] = status
    stats[1] = 4 * taken
    stats[2] = taken
    stats[3] = 0
    tfail[0] = t_stop



@nb.njit(cache=True, nogil=True, error_model="numpy")
def solve_runs_rk4_share(system, Y0, PRM, cfg, t_save, dt, max_steps, blowup, work_size, out, stats, tfail, first,
                         stride):
    """Runs first, first + stride, ... of Y0 with fixed-step RK4 (one share, as solve_runs_share)."""
    R, n = Y0.shape
    K = np.empty((4, n))
    y = np.empty(n)
    ytmp = np.empty(n)
    work = np.empty(max(work_size, 1))
    for r in range(first, R, stride):
        solve_run_rk4(system, Y0[r], PRM[r], cfg, t_save, dt, max_steps, blowup, out[r], K, y, ytmp, work, stats[r],
                      tfail[r:r + 1])



@nb.njit(cache=True, error_model="numpy")
def finish_run(out, stats, tfail, r, pos, status, nfev, nst, nrej, t):
    """Record run r's end: NaN after the last save reached, its counters, and t_fail if it failed."""
    for q in range(pos, out.shape[1]):
        for c in range(out.shape[2]):
            out[r, q, c] = math.nan
    stats[r, 0] = status
    stats[r, 1] = np.int64(nfev)
    stats[r, 2] = np.int64(nst)
    stats[r, 3] = np.int64(nrej)
    tfail[r] = t if status != 0 else math.nan

