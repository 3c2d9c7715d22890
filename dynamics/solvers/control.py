"""The one adaptive step controller, shared by the torch loop and every numba kernel.

Standard elementary control (Hairer, Norsett & Wanner I, II.4; scipy's ``RK45``/``DOP853``): after a
step with scaled error ``err`` (accept when err <= 1) the next step is ``h * factor`` with

    factor = clip(SAFETY * err^exponent, MIN_FACTOR, MAX_FACTOR)    exponent = -1 / (error order + 1)

(MAX_FACTOR when err = 0; at most 1 after a rejection; MIN_FACTOR when err is not finite). A step
within LANDING of the gap to the next save time is clipped onto it. A rejected step smaller than
MIN_STEP * max(1, |t|) is a step-size underflow (the torch loop: any step below MIN_STEP times
the whole time span, see :func:`underflow_span_t`). The first step is Hairer's starting step (scipy's
``select_initial_step``), built from :func:`trial_step` and :func:`starting_step`.

The scalar functions are numba ``inline="always"``: the kernels compile them into their loops, so
there is one written controller. The torch loop calls the ``*_t`` versions, written with the same
constants.
"""

from __future__ import annotations

import math

import numba as nb
import torch

__all__ = ["FIXED_STEP_SLACK", "LANDING", "MAX_FACTOR", "MIN_FACTOR", "MIN_STEP", "SAFETY", "accept_factor", "reject_factor",
           "starting_step", "step_factor_dp5", "trial_step"]

SAFETY = 0.9  #: the controller aims at err = SAFETY^(1/exponent) < 1, so that most steps pass
MIN_FACTOR = 0.2  #: largest shrink of a step after a rejection
MAX_FACTOR = 10.0  #: largest growth of a step after an acceptance
MIN_STEP = 1e-14  #: a rejected step below MIN_STEP * max(1, |t|) is a step-size underflow
LANDING = 1e-12  #: a step of at least (1 - LANDING) * gap lands exactly on the next save time
# Hairer's starting step (scipy's select_initial_step): norms below TINY_NORM count as zero,
# the trial step is TRIAL_FRACTION of ||y|| / ||f||, the final one at most GROWTH_LIMIT trial steps
TINY_NORM, TINY_STEP, TRIAL_FRACTION, FLAT, FLAT_FRACTION, GROWTH_LIMIT = 1e-5, 1e-6, 0.01, 1e-15, 1e-3, 100.0
#: rk4 (fixed step): a gap between save times takes ceil(gap / dt - FIXED_STEP_SLACK) equal steps, so
#: that a gap that is a whole number of dt up to round-off does not take one step more
FIXED_STEP_SLACK = 1e-9

_FM = {"reassoc", "contract"}


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def fixed_steps(gap, dt):
    """rk4's number of equal steps over a gap between save times (at least one)."""
    return max(1, math.ceil(gap / dt - FIXED_STEP_SLACK))


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def lands(h, gap):
    """Whether a step of size h reaches the next save time ``gap`` ahead (it is then clipped to gap)."""
    return h >= gap * (1.0 - LANDING)


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def accept_factor(err, exponent):
    """Step growth after an accepted step (err <= 1)."""
    return MAX_FACTOR if err == 0.0 else min(MAX_FACTOR, SAFETY * err**exponent)


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def reject_factor(err, exponent):
    """Step shrink after a rejected step (err > 1, possibly inf)."""
    return max(MIN_FACTOR, SAFETY * err**exponent) if math.isfinite(err) else MIN_FACTOR


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def underflow(h, t):
    """Whether step h at time t is below the representable resolution of t."""
    return h < MIN_STEP * max(1.0, abs(t))


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def trial_step(d0, d1):
    """Hairer's first trial step from ||y0|| and ||f(y0)|| (scaled RMS norms)."""
    return TINY_STEP if (d0 < TINY_NORM or d1 < TINY_NORM) else TRIAL_FRACTION * d0 / d1


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def starting_step(h0, d1, d2, order):
    """Hairer's starting step from the trial step h0, ||f(y0)|| and ||f(y0 + h0 f0) - f(y0)|| / h0."""
    dmax = max(d1, d2)
    h1 = max(TINY_STEP, h0 * FLAT_FRACTION) if dmax <= FLAT else (TRIAL_FRACTION / dmax) ** (1.0 / (order + 1))
    return min(GROWTH_LIMIT * h0, h1)


@nb.njit(inline="always", fastmath=_FM, error_model="numpy")
def step_factor_dp5(err):
    """SAFETY * err^(-1/5) (the Dormand-Prince 5(4) controller) without a libm call, to a few ulp of pow.

    For kernels whose lane loop must vectorise (no libm call inside). err is clamped to [1e-6, 1e4];
    outside it the factor is clipped to [MIN_FACTOR, MAX_FACTOR] anyway (0.9 * 1e4^(-1/5) = 0.14 <
    0.2, 0.9 * 1e-6^(-1/5) = 14 > 10). tests/dynamics/test_solvers.py holds it to pow.
    """
    x = min(max(err, 1e-6), 1e4)
    m = SAFETY
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


# --- the same controller on torch tensors (one entry per run) -----------------------------------------

def next_step_t(h_eff: torch.Tensor, h: torch.Tensor, err: torch.Tensor, accept: torch.Tensor, landing: torch.Tensor,
                exponent: float) -> torch.Tensor:
    """The next proposed step of every run: accept_factor / reject_factor of err, and after an accepted
    step clipped onto a save time the unclipped proposal if it was larger."""
    factor = torch.where(err == 0, torch.full_like(err, MAX_FACTOR), SAFETY * err.clamp(min=1e-300) ** exponent)
    factor = torch.where(accept, factor.clamp(max=MAX_FACTOR), factor.clamp(min=MIN_FACTOR, max=1.0))
    h_new = h_eff * factor
    return torch.where(accept & landing, torch.maximum(h_new, h), h_new)


def lands_t(h: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`lands`: True where a step h reaches the save time ``gap`` ahead (then clipped)."""
    return h >= gap * (1 - LANDING)


def underflow_span_t(h: torch.Tensor, t: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """The torch loop's step-size underflow: any step (accepted or not, NaN included) below
    MIN_STEP * max(|t|, span), span = max(1, the whole integration interval). Stricter than the numba
    kernels' :func:`underflow` (rejected steps below MIN_STEP * max(1, |t|)), as on the old layout."""
    return ~(h >= MIN_STEP * torch.maximum(t.abs(), span))


def starting_step_t(rhs, t, y, f0, p, order, rtol, atol, rms):
    """Hairer's starting step per run (as :func:`trial_step` then :func:`starting_step`); one RHS call."""
    scale = atol + y.abs() * rtol
    d0, d1 = rms(y / scale), rms(f0 / scale)
    h0 = torch.where((d0 < TINY_NORM) | (d1 < TINY_NORM), torch.full_like(d0, TINY_STEP),
                     TRIAL_FRACTION * d0 / d1.clamp(min=1e-300))
    f1 = rhs(t + h0, y + h0[:, None] * f0, p)
    d2 = rms((f1 - f0) / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= FLAT, torch.maximum(torch.full_like(h0, TINY_STEP), h0 * FLAT_FRACTION),
                     (TRIAL_FRACTION / dmax.clamp(min=1e-300)) ** (1.0 / (order + 1)))
    return torch.minimum(GROWTH_LIMIT * h0, h1)
