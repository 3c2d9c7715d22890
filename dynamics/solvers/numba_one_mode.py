"""numba backend 3: one mode per run, Dormand-Prince 5(4): the phase-diagram fast path.

A per-mode grid (one (p, w, w_a) system per run) is the common case of numba_lanes. Here a whole
step of a lane is straight-line code on scalars, so LLVM vectorises the lane loop with every stage
in registers. That needs (measured with numba 0.63 / LLVM 22): a compile-time lane count with
compile-time row offsets into one buffer (runtime offsets need more alias checks than LLVM allows),
a sum rather than a max reduction, and no libm call in the loop (hence control.step_factor_dp5).
Same steps as the other kernels: tableau, error norm, the step controller's constants, save-time
clipping and failure codes.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ..runs import ALPHA_P, BETA, ETA, ETA_P, LAM
from .control import MAX_FACTOR, MIN_FACTOR, lands, starting_step, step_factor_dp5, trial_step, underflow
from .numba_rhs import _FM, one_mode_rhs
from .numba_runs import finish_run
from .scheduling import n_shares, run_shares

ONE_LANES = 16
# rows of the lane buffer: quantity q of lane l lives at buf[q * ONE_LANES + l]
(_P, _W, _A, _K1P, _K1W, _K1A, _AP, _ETA, _ETAP, _BETA, _LS, _LD, _T, _H, _TN, _LIM, _ACT, _NFEV, _NST, _NREJ,
 _EV, _ERR, _NROWS) = range(23)


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
        land = lands(h, gap)
        he = (gap if land else h) * act
        k2p, k2w, k2a = one_mode_rhs(p + he * (a21 * k1p), w + he * (a21 * k1w), a + he * (a21 * k1a),
                                 ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
        k3p, k3w, k3a = one_mode_rhs(p + he * (a31 * k1p + a32 * k2p), w + he * (a31 * k1w + a32 * k2w),
                                 a + he * (a31 * k1a + a32 * k2a), ap, eta, etap, beta, ls, ld, has_p, stop_grad,
                                 simsiam)
        k4p, k4w, k4a = one_mode_rhs(p + he * (a41 * k1p + a42 * k2p + a43 * k3p),
                                 w + he * (a41 * k1w + a42 * k2w + a43 * k3w),
                                 a + he * (a41 * k1a + a42 * k2a + a43 * k3a),
                                 ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
        k5p, k5w, k5a = one_mode_rhs(p + he * (a51 * k1p + a52 * k2p + a53 * k3p + a54 * k4p),
                                 w + he * (a51 * k1w + a52 * k2w + a53 * k3w + a54 * k4w),
                                 a + he * (a51 * k1a + a52 * k2a + a53 * k3a + a54 * k4a),
                                 ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
        k6p, k6w, k6a = one_mode_rhs(p + he * (a61 * k1p + a62 * k2p + a63 * k3p + a64 * k4p + a65 * k5p),
                                 w + he * (a61 * k1w + a62 * k2w + a63 * k3w + a64 * k4w + a65 * k5w),
                                 a + he * (a61 * k1a + a62 * k2a + a63 * k3a + a64 * k4a + a65 * k5a),
                                 ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
        pn = p + he * (b1 * k1p + b3 * k3p + b4 * k4p + b5 * k5p + b6 * k6p)
        wn = w + he * (b1 * k1w + b3 * k3w + b4 * k4w + b5 * k5w + b6 * k6w)
        an = a + he * (b1 * k1a + b3 * k3a + b4 * k4a + b5 * k5a + b6 * k6a)
        k7p, k7w, k7a = one_mode_rhs(pn, wn, an, ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
        ep = he * (e1 * k1p + e3 * k3p + e4 * k4p + e5 * k5p + e6 * k6p + e7 * k7p) / (atol + rtol * max(abs(p), abs(pn)))
        ew = he * (e1 * k1w + e3 * k3w + e4 * k4w + e5 * k5w + e6 * k6w + e7 * k7w) / (atol + rtol * max(abs(w), abs(wn)))
        ea = he * (e1 * k1a + e3 * k3a + e4 * k4a + e5 * k5a + e6 * k6a + e7 * k7a) / (atol + rtol * max(abs(a), abs(an)))
        err = math.sqrt((ep * ep + ew * ew + wa_mask * ea * ea) / n)
        finite = err <= math.inf  # a NaN or inf in y_new reaches err through k7
        err = err if finite else math.inf
        fac = step_factor_dp5(err)
        acc = err <= 1.0
        h_acc = he * (MAX_FACTOR if err == 0.0 else min(MAX_FACTOR, fac))
        h_acc = max(h_acc, h) if land else h_acc
        h_rej = he * (max(MIN_FACTOR, fac) if finite else MIN_FACTOR)
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
        stuck = not acc and underflow(h_rej, t)
        ev = act if (landed or stuck or nst + nrej >= max_steps) else 0.0
        buf[_EV * L + l] = ev
        events += ev
    return events



@nb.njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def one_mode_solve(Y0, PRM, slots, has_p, stop_grad, simsiam, t_save, c, order, rtol, atol, max_steps, blowup, out,
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
            ap, eta, etap, beta = PRM[r, ALPHA_P], PRM[r, ETA], PRM[r, ETA_P], PRM[r, BETA]
            ls, ld = PRM[r, LAM], PRM[r, LAM + 1]
            f0 = one_mode_rhs(y[0], y[1], y[2], ap, eta, etap, beta, ls, ld, has_p, stop_grad, simsiam)
            d0 = 0.0
            d1 = 0.0
            for q in range(3):
                sc = atol + abs(y[q]) * rtol
                d0 += mask[q] * (y[q] / sc) ** 2
                d1 += mask[q] * (f0[q] / sc) ** 2
            d0 = math.sqrt(d0 / nf)
            d1 = math.sqrt(d1 / nf)
            h0 = trial_step(d0, d1)
            f1 = one_mode_rhs(y[0] + h0 * f0[0], y[1] + h0 * f0[1], y[2] + h0 * f0[2], ap, eta, etap, beta, ls, ld,
                          has_p, stop_grad, simsiam)
            d2 = 0.0
            for q in range(3):
                d2 += mask[q] * ((f1[q] - f0[q]) / (atol + abs(y[q]) * rtol)) ** 2
            h = starting_step(h0, d1, math.sqrt(d2 / nf) / h0, order)
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
            elif underflow(buf[_H * L + l], t):
                status = 2
            nst, nrej = buf[_NST * L + l], buf[_NREJ * L + l]
            if status == 0 and nst + nrej >= max_steps and pos[l] < S:
                status = 3
            if status != 0 or pos[l] >= S:
                finish_run(out, stats, tfail, r, pos[l], status, buf[_NFEV * L + l], nst, nrej, t)
                run[l] = -1
                active -= 1
                buf[_ACT * L + l] = 0.0



def one_mode_applies(system: str, cfg, tableau, n_runs: int) -> bool:
    """Whether solve_batch takes the one-mode Dormand-Prince path."""
    return (system == "modes" and int(cfg[0]) == 1 and int(cfg[1]) <= 2 and not tableau["dop853"]
            and tableau["s"] == 6 and n_runs >= 4 * ONE_LANES)



def solve_one_mode(Y0, PRM, cfg, t_save, tab, rtol, atol, max_steps, blowup, out, stats, tfail, schedule=None):
    """Integrate one-mode systems (k = 1) with dopri5 in registers, in shares of ONE_LANES runs.

    Y0 (R, n) and PRM (R, P) in, out (R, S, n), stats (R, 4) and tfail (R,) written in place, as
    :func:`.driver.solve_batch` describes; ``schedule`` as :func:`.scheduling.run_shares`.
    """
    has_p, stop_grad, simsiam = int(cfg[1]) <= 1, bool(cfg[2]), bool(cfg[3])
    slots = np.array(([_P] if has_p else []) + [_W] + ([] if simsiam else [_A]), dtype=np.int64)
    A, B, E = tab["A"], tab["B"], tab["E"]
    c = np.array([A[1, 0], A[2, 0], A[2, 1], A[3, 0], A[3, 1], A[3, 2], A[4, 0], A[4, 1], A[4, 2], A[4, 3],
                  A[5, 0], A[5, 1], A[5, 2], A[5, 3], A[5, 4], B[0], B[2], B[3], B[4], B[5],
                  E[0], E[2], E[3], E[4], E[5], E[6]], dtype=np.float64)
    assert B[1] == 0.0 and E[1] == 0.0  # the Dormand-Prince structure the step code relies on
    t_save = np.asarray(t_save, dtype=np.float64)
    rtol, atol, max_steps, blowup, order = float(rtol), float(atol), float(max_steps), float(blowup), int(tab["order"])

    def share(first: int, stride: int) -> None:
        one_mode_solve(Y0, PRM, slots, has_p, stop_grad, simsiam, t_save, c, order, rtol, atol, max_steps, blowup,
                       out, stats, tfail, first, stride)

    run_shares(share, n_shares(len(Y0) // ONE_LANES), schedule=schedule)
