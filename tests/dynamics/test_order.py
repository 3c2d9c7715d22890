"""Convergence order of every method on both backends against an exact solution (diffrax's test_ode_order).

Without a predictor and with stop-gradient, SimSiam's flow is linear, dW/dt = -(X' + eta I) W... for
isotropic data W(t) = W(0) exp(-(sigma2 + eta) t) exactly, so s_j(t) = s_j(0) exp(-2 lambda t) with
lambda = sigma2 + eta. A method of order q run with a fixed step h has a global error C h^q; the
slope of log(error) against log(h) over halvings of h is the fitted order.

Fixed steps from the adaptive methods: with atol = 1e300 every step's scaled error is 0, so every
step is accepted and grows by the controller's MAX_FACTOR until it is clipped onto the next save
time; with save times every h, all steps but the first few (1e-6 .. 1e-1, whose error is negligible)
are exactly h. rk4 takes its fixed ``dt`` on both backends.
"""

from __future__ import annotations

import numpy as np
import pytest

from stopgrad.dynamics import DataSpec, LinearModel, Simulation, Solver, simulate

T_END, SIGMA2, ETA = 4.0, 0.5, 0.5  # lambda = 1: lambda T = 4
ORDERS = {"rk4": 4, "dopri5": 5, "dop853": 8}
STEPS = {"rk4": (16, 32, 64), "dopri5": (16, 32, 64), "dop853": (8, 12, 16)}  # errors from ~1e-4 to ~1e-11
# the fitted slope of an order-q method approaches q as h -> 0; over these ranges the next term of
# the error expansion moves it by less than 0.3 (diffrax's test uses a comparable margin)
ORDER_TOL = 0.3


def fitted_order(method: str, backend: str) -> tuple[float, list[float]]:
    """(fitted order, relative errors of s(T)) of ``method`` on ``backend`` over STEPS[method] steps."""
    model = LinearModel(n1=4, n2=2, method="simsiam", beta=None, predictor="identity", eta=ETA,
                        data=DataSpec(sigma2=SIGMA2))
    errors, hs = [], []
    for n in STEPS[method]:
        h = T_END / n
        if method == "rk4":
            solver, n_save = Solver(method="rk4", dt=h), 2
        else:
            solver, n_save = Solver(method=method, rtol=0.5, atol=1e300), n + 1
        ds = simulate(Simulation(model=model, t_end=T_END, n_save=n_save, grid={"seed": [0, 1]}, solver=solver,
                                 backend=backend))
        s0, sT = ds.s.values[:, 0], ds.s.values[:, -1]
        exact = s0 * np.exp(-2 * (SIGMA2 + ETA) * T_END)
        errors.append(float(np.max(np.abs(sT / exact - 1.0))))
        hs.append(h)
    slope = float(np.polyfit(np.log(hs), np.log(errors), 1)[0])
    return slope, errors


CASES = [(method, backend) for backend in ("torch", "numba") for method in ("rk4", "dopri5", "dop853")]


@pytest.mark.parametrize("method,backend", CASES)
def test_fitted_order_matches_the_method(method, backend):
    slope, errors = fitted_order(method, backend)
    assert min(errors) > 1e-13, "errors must stay above round-off for the fit to mean anything"
    assert abs(slope - ORDERS[method]) <= ORDER_TOL, (slope, errors)


if __name__ == "__main__":  # the order table
    for method, backend in CASES:
        slope, errors = fitted_order(method, backend)
        print(f"{method:8s} {backend:6s} order {ORDERS[method]}  fitted {slope:.3f}  errors "
              + " ".join(f"{e:.2e}" for e in errors))
