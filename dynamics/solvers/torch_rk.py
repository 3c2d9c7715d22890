"""Batched ODE integrators over a leading ``run`` axis, in torch (float64 on the CPU, or the GPU).

* ``rk4``: classical fixed-step Runge-Kutta, all runs in lockstep.
* ``dopri5`` / ``dop853``: embedded adaptive Runge-Kutta pairs (Dormand-Prince 5(4) and Hairer's
  8(5,3)), with the coefficients of scipy's ``RK45`` / ``DOP853`` classes. Every run has its own
  step size and clock: a stiff run does not slow the others down. Runs are integrated in chunks
  sized to stay in cache on the CPU; a finished run's slot is refilled with a pending run, so the
  batch stays full. Steps are clipped to land exactly on the save times.

A run whose state stops being finite, exceeds ``blowup`` times its initial size, or whose step size
underflows is stopped and reported with the time at which that happened (``status``/``t_fail``);
its later values are NaN, never silently extrapolated.
"""

from __future__ import annotations

import math
import time as _time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.integrate
import torch

from .._checks import check, check_choice, check_range
from .control import fixed_steps, lands_t, next_step_t, starting_step_t, underflow_span_t
from .tableaux import METHODS, tableau

__all__ = ["IntegrationResult", "STATUS", "STATUS_NAMES", "Solver", "integrate", "integrate_scipy"]

RHS = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]
Observe = Callable[[torch.Tensor, torch.Tensor, dict], dict]

#: status codes of a run
STATUS = {0: "ok", 1: "blow-up", 2: "step-size underflow", 3: "max steps"}
STATUS_NAMES = np.array([STATUS[c] for c in range(len(STATUS))])  # STATUS_NAMES[codes]: names of an array of codes


@dataclass(frozen=True)
class Solver:
    """How to integrate. ``rtol``/``atol`` for the adaptive methods, ``dt`` for rk4.

    chunk: runs integrated together (0: automatic, about 2 MB of state per chunk on the CPU, all runs
    on a GPU). device: "cpu", "cuda" or "auto" (a GPU if there is one). blowup: a state entry above
    ``blowup * max(1, max|y0|)`` counts as a blow-up.
    """

    method: str = "dop853"
    rtol: float = 1e-8
    atol: float = 1e-10
    dt: float = 0.01
    max_steps: int = 1_000_000
    chunk: int = 0
    device: str = "cpu"
    blowup: float = 1e8

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_range("rtol", self.rtol, 0, 1, lo_open=True)
        # atol > 0: with a pure relative tolerance a collapsing mode is followed down to the underflow
        # threshold at full relative accuracy (found by the fuzz of issue 14: such sweeps ran for minutes)
        check_range("atol", self.atol, 0, None, lo_open=True)
        check_range("dt", self.dt, 0, None, lo_open=True)
        check_range("max_steps", self.max_steps, 1, None, integer=True)
        check_range("chunk", self.chunk, 0, None, integer=True)
        check_choice("device", self.device, ("cpu", "cuda", "auto"))
        check_range("blowup", self.blowup, 1, None, lo_open=True)

    def torch_device(self) -> torch.device:
        """The device to integrate on: CUDA for "auto" when available, else the CPU."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda":
            check("device", self.device, torch.cuda.is_available(), "no CUDA device is available here")
        return torch.device(self.device)


@dataclass
class IntegrationResult:
    """Observed values at the save times and per-run bookkeeping.

    values[name]: (R, S, ...) tensors on the CPU; status: (R,) codes (see STATUS); t_fail: (R,) time of
    the failure (NaN when ok); nfev/steps/rejected: (R,) right-hand-side evaluations, accepted and
    rejected steps per run; wall: seconds.
    """

    t: np.ndarray
    values: dict[str, torch.Tensor]
    status: np.ndarray
    t_fail: np.ndarray
    nfev: np.ndarray
    steps: np.ndarray
    rejected: np.ndarray
    wall: float = 0.0
    info: dict = field(default_factory=dict)

    def failures(self) -> list[str]:
        """One line per failed run: its index, what happened and when."""
        return [
            f"run {r}: {STATUS[int(self.status[r])]} at t = {self.t_fail[r]:.6g}"
            for r in np.flatnonzero(self.status)
        ]




def _auto_chunk(n_runs: int, n_state: int, device: torch.device) -> int:
    if device.type != "cpu":
        return n_runs
    # Measured on 2 cores: the batched small-matrix RHS runs ~4x faster per run when a chunk's state
    # stays within a few MB (L2/L3) than at 4096 runs per batch.
    return int(min(n_runs, max(16, 2**18 // max(n_state, 1))))


class _Recorder:
    """Buffers states that landed on save times and observes them in large batches."""

    def __init__(self, observe: Observe | None, params: dict, t_save: torch.Tensor, n_runs: int, flush_rows: int):
        self.observe = observe or (lambda t, y, p: {"y": y})
        self.params, self.t_save, self.R = params, t_save, n_runs
        self.flush_rows = flush_rows
        self.buf_ids, self.buf_pos, self.buf_y = [], [], []
        self.rows = 0
        self.values: dict[str, torch.Tensor] = {}

    def add(self, ids: torch.Tensor, pos: torch.Tensor, y: torch.Tensor) -> None:
        """Buffer states y (m, n) of runs ``ids`` (m,) at save indices ``pos`` (m,)."""
        if ids.numel() == 0:
            return
        self.buf_ids.append(ids)
        self.buf_pos.append(pos)
        self.buf_y.append(y.clone())
        self.rows += ids.numel()
        if self.rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Observe the buffered states and write them into ``values`` (R, S, ...)."""
        if not self.rows:
            return
        ids, pos, y = torch.cat(self.buf_ids), torch.cat(self.buf_pos), torch.cat(self.buf_y)
        self.buf_ids, self.buf_pos, self.buf_y, self.rows = [], [], [], 0
        sub = {k: v[ids] for k, v in self.params.items()}
        obs = self.observe(self.t_save[pos], y, sub)
        ids_c, pos_c = ids.cpu(), pos.cpu()
        for name, val in obs.items():
            val = val.detach().to("cpu")
            if name not in self.values:
                S = self.t_save.numel()
                self.values[name] = torch.full((self.R, S) + tuple(val.shape[1:]), math.nan, dtype=val.dtype)
            self.values[name][ids_c, pos_c] = val


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(dim=1).sqrt()


def integrate(
    rhs: RHS,
    y0: torch.Tensor,
    t_save,
    solver: Solver = Solver(),
    params: dict | None = None,
    observe: Observe | None = None,
    progress: bool | str = False,
) -> IntegrationResult:
    """Integrate dy/dt = rhs(t, y, params) for every run from t_save[0] and observe at each t_save.

    Args:
        rhs: ``rhs(t, y, p)`` with t (A,), y (A, n) and p the per-run ``params`` of the A runs in the
            batch; returns dy/dt (A, n). It must treat runs independently.
        y0: (R, n) initial states (float64 recommended), on the solver's device.
        t_save: increasing save times (S,), t_save[0] the initial time.
        params: per-run tensors with leading dim R, gathered for each batch.
        observe: ``observe(t, y, p) -> {name: (b, ...)}`` applied to saved states; default keeps y.
        progress: show a progress bar (a string sets its description).
    """
    params = {k: v for k, v in (params or {}).items()}
    t_np = np.asarray(t_save, dtype=float)
    check("t_save", t_np.tolist()[:4], t_np.ndim == 1 and t_np.size >= 1, "must be a 1-D sequence of times")
    check("t_save", t_np.tolist()[:4], bool(np.all(np.diff(t_np) > 0)), "must be strictly increasing")
    check("y0", tuple(y0.shape), y0.ndim == 2, "must have shape (runs, state)")
    for k, v in params.items():
        check(f"params[{k!r}]", tuple(v.shape), v.shape[0] == y0.shape[0], f"needs leading dim {y0.shape[0]}")
    device, dtype = y0.device, y0.dtype
    t_save_t = torch.as_tensor(t_np, dtype=dtype, device=device)
    R, n = y0.shape
    chunk = solver.chunk or _auto_chunk(R, n, device)
    start = _time.perf_counter()
    rec = _Recorder(observe, params, t_save_t, R, flush_rows=max(chunk, 2048))
    bar = _progress_bar(progress, R * len(t_np))
    scale0 = y0.abs().amax(dim=1).clamp(min=1.0)
    status = torch.zeros(R, dtype=torch.int8)
    t_fail = torch.full((R,), math.nan, dtype=torch.float64)
    nfev = torch.zeros(R, dtype=torch.int64)
    steps = torch.zeros(R, dtype=torch.int64)
    rejected = torch.zeros(R, dtype=torch.int64)
    counters = (status, t_fail, nfev, steps, rejected)
    all_ids = torch.arange(R, device=device)
    rec.add(all_ids, torch.zeros(R, dtype=torch.long, device=device), y0)
    bar.update(R)
    if len(t_np) > 1:
        if solver.method == "rk4":
            _run_rk4(rhs, y0, t_save_t, solver, params, rec, bar, chunk, scale0, counters)
        else:
            _run_adaptive(rhs, y0, t_save_t, solver, params, rec, bar, chunk, scale0, counters)
    rec.flush()
    bar.close()
    return IntegrationResult(
        t=t_np,
        values=rec.values,
        status=status.numpy(),
        t_fail=t_fail.numpy(),
        nfev=nfev.numpy(),
        steps=steps.numpy(),
        rejected=rejected.numpy(),
        wall=_time.perf_counter() - start,
        info={"method": solver.method, "chunk": chunk, "device": str(device)},
    )


def _progress_bar(progress, total):
    from tqdm.auto import tqdm

    desc = progress if isinstance(progress, str) else "integrating"
    return tqdm(total=total, desc=desc, unit="save", disable=not progress, leave=False, mininterval=0.5)


def _mark_failed(ids, code, t, counters):
    status, t_fail = counters[0], counters[1]
    ids_c = ids.cpu()
    status[ids_c] = code
    t_fail[ids_c] = t.detach().to("cpu", torch.float64)


def _run_rk4(rhs, y0, t_save, solver, params, rec, bar, chunk, scale0, counters):
    R = y0.shape[0]
    status, _, nfev, steps, _ = counters
    for lo in range(0, R, chunk):
        ids = torch.arange(lo, min(R, lo + chunk), device=y0.device)
        p = {k: v[ids] for k, v in params.items()}
        y = y0[ids].clone()
        alive = torch.ones(ids.numel(), dtype=torch.bool, device=y.device)
        limit = solver.blowup * scale0[ids]
        taken = 0  # steps so far; the runs of a chunk step in lockstep
        for i in range(1, t_save.numel()):
            t0, t1 = float(t_save[i - 1]), float(t_save[i])
            n_sub = fixed_steps.py_func(t1 - t0, solver.dt)
            h = (t1 - t0) / n_sub
            if taken + n_sub > solver.max_steps:  # max_steps binds rk4 as it binds the adaptive methods
                n_do = solver.max_steps - taken
                _rk4_steps(rhs, y, alive, p, t0, h, n_do, limit, ids, counters)
                nfev[ids.cpu()] += 4 * n_do
                steps[ids.cpu()] += n_do
                t_stop = torch.full((int(alive.sum()),), t0 + n_do * h, dtype=torch.float64)
                _mark_failed(ids[alive], 3, t_stop, counters)
                bar.update(ids.numel() * (t_save.numel() - i))
                break
            y = _rk4_steps(rhs, y, alive, p, t0, h, n_sub, limit, ids, counters)
            taken += n_sub
            nfev[ids.cpu()] += 4 * n_sub
            steps[ids.cpu()] += n_sub
            pos = torch.full((int(alive.sum()),), i, dtype=torch.long, device=y.device)
            rec.add(ids[alive], pos, y[alive])
            bar.update(ids.numel())


def _rk4_steps(rhs, y, alive, p, t0, h, n_steps, limit, ids, counters):
    """``n_steps`` classical RK4 steps of size h from t0; a run that blows up is marked, set to NaN and
    dropped from ``alive`` (in place). Returns the new state."""
    for j in range(n_steps):
        t = torch.full((ids.numel(),), t0 + j * h, dtype=y.dtype, device=y.device)
        k1 = rhs(t, y, p)
        k2 = rhs(t + h / 2, y + (h / 2) * k1, p)
        k3 = rhs(t + h / 2, y + (h / 2) * k2, p)
        k4 = rhs(t + h, y + h * k3, p)
        y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        bad = alive & ~(torch.isfinite(y).all(dim=1) & (y.abs().amax(dim=1) <= limit))
        if bool(bad.any()):
            _mark_failed(ids[bad], 1, t[bad] + h, counters)
            alive &= ~bad
            y[bad] = math.nan
    return y


def _run_adaptive(rhs, y0, t_save, solver, params, rec, bar, chunk, scale0, counters):
    device, dtype = y0.device, y0.dtype
    tab = tableau(solver.method).to(device, dtype)
    status, t_fail, nfev, steps, rejected = counters
    R, n = y0.shape
    S = t_save.numel()
    rtol, atol = solver.rtol, solver.atol
    pending = deque(range(R))
    span = (t_save[-1] - t_save[0]).abs().clamp(min=1.0)

    # the active batch: run ids, state, clock, proposed step, first stage, next save index, step count
    ids = torch.empty(0, dtype=torch.long, device=device)
    y = torch.empty(0, n, dtype=dtype, device=device)
    t = torch.empty(0, dtype=dtype, device=device)
    h = torch.empty(0, dtype=dtype, device=device)
    k0 = torch.empty(0, n, dtype=dtype, device=device)
    pos = torch.empty(0, dtype=torch.long, device=device)
    nstep = torch.empty(0, dtype=torch.long, device=device)
    p: dict = {}
    limit = torch.empty(0, dtype=dtype, device=device)

    def refill(keep: torch.Tensor | None):
        nonlocal ids, y, t, h, k0, pos, nstep, p, limit
        if keep is not None:
            ids, y, t, h, k0, pos, nstep, limit = (x[keep] for x in (ids, y, t, h, k0, pos, nstep, limit))
        free = chunk - ids.numel()
        if free <= 0 or not pending:
            p = {k: v[ids] for k, v in params.items()}
            return
        new = torch.tensor([pending.popleft() for _ in range(min(free, len(pending)))], device=device)
        pn = {k: v[new] for k, v in params.items()}
        yn = y0[new]
        tn = t_save[0].expand(new.numel()).clone()
        fn = rhs(tn, yn, pn)
        hn = starting_step_t(rhs, tn, yn, fn, pn, tab.order, rtol, atol, _rms)
        nfev[new.cpu()] += 2
        ids, y, t, h, k0 = torch.cat([ids, new]), torch.cat([y, yn]), torch.cat([t, tn]), torch.cat([h, hn]), torch.cat([k0, fn])
        pos = torch.cat([pos, torch.ones_like(new)])
        nstep = torch.cat([nstep, torch.zeros_like(new)])
        limit = torch.cat([limit, solver.blowup * scale0[new.cpu()].to(device, dtype)])
        p = {k: v[ids] for k, v in params.items()}

    refill(None)
    s = tab.s
    while ids.numel():
        A = ids.numel()
        t_next = t_save[pos]
        gap = t_next - t
        landing = lands_t(h, gap)
        h_eff = torch.where(landing, gap, h)
        hc = h_eff[:, None]
        K = torch.empty(s + 1, A, n, dtype=dtype, device=device)
        K[0] = k0
        for i in range(1, s):
            dy = (tab.A[i, :i] @ K[:i].reshape(i, -1)).reshape(A, n)
            K[i] = rhs(t + tab.C[i] * h_eff, torch.addcmul(y, hc, dy), p)
        y_new = torch.addcmul(y, hc, (tab.B @ K[:s].reshape(s, -1)).reshape(A, n))
        K[s] = rhs(t + h_eff, y_new, p)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        Kf = K.reshape(s + 1, -1)
        if tab.dop853:
            e5 = (tab.E5 @ Kf).reshape(A, n) / scale
            e3 = (tab.E3 @ Kf).reshape(A, n) / scale
            n5, n3 = e5.pow(2).sum(1), e3.pow(2).sum(1)
            denom = (n5 + 0.01 * n3).clamp(min=1e-300)
            err = torch.where((n5 == 0) & (n3 == 0), torch.zeros_like(n5), h_eff.abs() * n5 / torch.sqrt(denom * n))
        else:
            err = _rms(h_eff[:, None] * (tab.E @ Kf).reshape(A, n) / scale)
        finite = torch.isfinite(err) & torch.isfinite(y_new).all(dim=1)
        err = torch.where(finite, err, torch.full_like(err, math.inf))
        accept = err <= 1.0
        nstep += 1
        ids_c = ids.cpu()
        nfev[ids_c] += s
        acc_c = accept.cpu()
        steps[ids_c[acc_c]] += 1
        rejected[ids_c[~acc_c]] += 1

        h = next_step_t(h_eff, h, err, accept, landing, tab.exponent)
        t = torch.where(accept, t + h_eff, t)
        t = torch.where(accept & landing, t_next, t)
        y = torch.where(accept[:, None], y_new, y)
        k0 = torch.where(accept[:, None], K[s], k0)

        blown = accept & (y.abs().amax(dim=1) > limit)
        # step-size underflow: a step below MIN_STEP of the time axis' scale (|t|, the whole span, or 1) would
        # need more than ~1e14 steps, so it is reported now, accepted or not, instead of after max_steps
        # (written as "not >=" so that a NaN step, from a non-finite right-hand side at the start, counts too)
        tiny = underflow_span_t(h, t, span)
        maxed = nstep >= solver.max_steps
        failed = blown | tiny | maxed
        landed = accept & landing & ~failed
        if bool(landed.any()):
            rec.add(ids[landed], pos[landed], y[landed])
            bar.update(int(landed.sum()))
            pos = pos + landed.long()
        done = failed | (pos >= S)
        if bool(failed.any()):
            for code, mask in ((1, blown), (2, tiny & ~blown), (3, maxed & ~blown & ~tiny)):
                if bool(mask.any()):
                    _mark_failed(ids[mask], code, t[mask], counters)
            bar.update(int((S - pos[failed]).sum()))
        if bool(done.any()):
            refill(~done)


def integrate_scipy(
    fun: Callable[[float, np.ndarray], np.ndarray],
    y0: np.ndarray,
    t_save,
    method: str = "RK45",
    rtol: float = 1e-8,
    atol: float = 1e-10,
) -> tuple[np.ndarray, int]:
    """Reference: one ``scipy.integrate.solve_ivp`` call; returns states (S, n) at t_save and nfev."""
    t_save = np.asarray(t_save, dtype=float)
    sol = scipy.integrate.solve_ivp(
        fun, (t_save[0], t_save[-1]), np.asarray(y0, dtype=float), method=method, t_eval=t_save, rtol=rtol, atol=atol
    )
    if sol.status != 0:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    return sol.y.T, sol.nfev
