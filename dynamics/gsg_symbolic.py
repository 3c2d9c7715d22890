"""Symbolic pieces of the expected GSG flow (sympy), used by docs/gsg_theory.md and ``stopgrad check``.

1. ``min_of_two_gaussians``: for g1, g2 i.i.d. N(0, s^2), E[min] = -s/sqrt(pi), E[min^2] = s^2 and
   E[min * max] = 0: the moments of the chosen view's noise along the pair's direction.
2. ``scalar_gradient``: the expected gradient of 1/2 (w_p w x_s - SG(w x_t))^2 in the scalar model
   (n1 = n2 = 1) from the moments E[e_s] = m, E[e_t] = -m, E[e_s^2] = E[e_t^2] = sigma^2, E[e_s e_t] = 0,
   minus the matrix formula of gsg_flow at n1 = n2 = 1: simplifies to 0.
3. ``two_point_rate``: two data points a, b (delta = a - b), no predictor, W = v delta^T / ||delta||:
   d||v||/dt = lambda ||v|| with lambda = c sigma (1 - 1/B) ||delta|| / (2 sqrt(pi)) - sigma^2 - eta.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["min_of_two_gaussians", "scalar_gradient", "two_point_rate"]


def min_of_two_gaussians() -> dict[str, sp.Expr]:
    """E[min(g1, g2)], E[min^2], E[min max] for g1, g2 i.i.d. N(0, s^2), by integration (s > 0)."""
    s = sp.symbols("s", positive=True)
    x, y = sp.symbols("x y", real=True)
    phi = lambda u: sp.exp(-u**2 / (2 * s**2)) / (sp.sqrt(2 * sp.pi) * s)  # noqa: E731
    # the density of min is 2 phi(x) P(g > x); E[f(min)] = 2 int f(x) phi(x) (1 - Phi(x)) dx
    tail = sp.integrate(phi(y), (y, x, sp.oo))
    e_min = sp.simplify(sp.integrate(2 * x * phi(x) * tail, (x, -sp.oo, sp.oo)))
    e_min2 = sp.simplify(sp.integrate(2 * x**2 * phi(x) * tail, (x, -sp.oo, sp.oo)))
    # min * max = g1 g2, whose mean is 0 for independent zero-mean g
    e_minmax = sp.integrate(sp.integrate(x * y * phi(x) * phi(y), (x, -sp.oo, sp.oo)), (y, -sp.oo, sp.oo))
    return {"s": s, "E_min": e_min, "E_min2": e_min2, "E_minmax": sp.simplify(e_minmax)}


def scalar_gradient() -> dict[str, sp.Expr]:
    """Expected gradients (d/dw, d/dw_p) of the scalar GSG loss from the noise moments, and their
    differences from gsg_flow's matrix formula at n1 = n2 = 1 (both simplify to 0)."""
    w, wp, wt, a, m, sigma = sp.symbols("w w_p w_t a m sigma", real=True)
    es, et = sp.symbols("e_s e_t", real=True)
    loss = sp.Rational(1, 2) * (wp * w * (a + es) - wt * (a + et)) ** 2  # target weight w_t: stop-gradient
    moments = {es**2: sigma**2, et**2: sigma**2, es * et: 0, es: m, et: -m}

    def expect(expr):
        poly = sp.Poly(sp.expand(expr), es, et)
        total = 0
        for (i, j), c in poly.terms():
            mono = es**i * et**j
            total += c * (1 if (i, j) == (0, 0) else moments[mono])
        return sp.expand(total)

    g_w = expect(sp.diff(loss, w)).subs(wt, w)
    g_wp = expect(sp.diff(loss, wp)).subs(wt, w)
    X, M = a**2, m * a  # scalar X = E[a a^T], M = E[m a^T]
    Cs, Cts = X + sigma**2 + 2 * M, X + M - M
    formula_w = wp * wp * w * Cs - wp * w * Cts
    formula_wp = wp * w * Cs * w - w * Cts * w
    return {"grad_w": g_w, "grad_wp": g_wp, "residual_w": sp.simplify(g_w - formula_w),
            "residual_wp": sp.simplify(g_wp - formula_wp)}


def two_point_rate() -> dict[str, sp.Expr]:
    """Growth rate and threshold of the no-predictor flow for two points, W = v delta_hat^T.

    With K = 2, S(W) = delta delta^T / (2 ||W^T W delta||) and W^T W delta = ||v||^2 ||delta|| delta_hat,
    so dW/dt = -(sigma^2 + eta) W + c kappa (1 - 1/B) W W^T W S keeps W rank one along delta and
    dv/dt = lambda v. Returns lambda and the distance ||delta||* above which GSG (c = 1) grows."""
    sigma, eta, B, d, v, c = sp.symbols("sigma eta B delta_norm v_norm c", positive=True)
    kappa = sigma / sp.sqrt(sp.pi)
    # scalar bookkeeping of W W^T W S delta_hat for W = v delta_hat^T (v stands for ||v||)
    A_delta = v**2 * d  # ||W^T W delta||
    WWtW_S_dhat = v * v**2 * d**2 / (2 * A_delta)  # coefficient of v_hat
    rate = sp.simplify((-(sigma**2 + eta) * v + c * kappa * (1 - 1 / B) * WWtW_S_dhat) / v)
    threshold = sp.solve(sp.Eq(rate.subs(c, 1), 0), d)[0]
    return {"rate": rate, "threshold": sp.simplify(threshold),
            "symbols": {"sigma": sigma, "eta": eta, "B": B, "delta_norm": d, "c": c}}
