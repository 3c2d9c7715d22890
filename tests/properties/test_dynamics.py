"""Properties of the linear BYOL/SimSiam dynamics (reference/theory.md): symmetries of the flow, the
Theorem 1 invariant, the decay without stop-gradient, and the per-mode reduction.

Two kinds of check. *Pointwise* identities of the right-hand side at arbitrary states are pure
arithmetic (float64 round-off bounds). *Trajectory* comparisons use fixed-step RK4, whose iterates
inherit every linear symmetry of the right-hand side exactly in exact arithmetic, so two runs differ by
round-off only: at most ~ n^2 u relative per stage (n x n matrix products), 4 stages a step, each such
perturbation then amplified by the flow's sensitivity over [0, t]. A worst-case Lipschitz bound of the
cubic right-hand side (exp(L t) with L ~ 100) would make the check vacuous, so the sensitivity is
measured: the run is repeated from a start perturbed by DELTA in a random direction, and the largest
output change per unit perturbation, times sqrt(state size) (a random direction sees at least about
1/sqrt(dim) of the worst one), bounds the amplification.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stopgrad.dynamics import (
    DataSpec,
    InitSpec,
    LinearModel,
    MatrixFlow,
    ModeFlow,
    Solver,
    draw_initial_matrices,
    integrate,
)
from stopgrad.testing import strategies as sgst

EPS = float(np.finfo(np.float64).eps)
SAFETY = 16.0
f64 = torch.float64
HEAVY = settings(max_examples=max(3, settings.default.max_examples // 3))
RK4_DT = 0.05
T_END = 0.5


def params(**values) -> dict[str, torch.Tensor]:
    """Per-run (R = 1) float64 hyperparameters."""
    base = dict(alpha_p=1.0, eta=0.0, eta_p=None, beta=0.0, sigma2=0.0)
    base.update(values)
    if base["eta_p"] is None:
        base["eta_p"] = base["eta"]
    return {k: torch.tensor([float(v)], dtype=f64) for k, v in base.items()}


def general_model(n1, n2, X, Xp, method="byol", **kw) -> LinearModel:
    return LinearModel(n1=n1, n2=n2, method=method, beta=0.5 if method == "byol" else None,
                       data=DataSpec(kind="general", X=X.tolist(), X_prime=Xp.tolist()), **kw)


@st.composite
def states(draw, max_n1=5):
    """(n1, n2, W, Wp, Wa) with entries of size ~1, and PSD data moments X, X' of norm <= 1."""
    n1 = draw(st.integers(1, max_n1))
    n2 = draw(st.integers(1, n1))
    rng = np.random.default_rng(draw(sgst.seeds()))
    W = rng.standard_normal((n2, n1)) / math.sqrt(n1)
    Wp = rng.standard_normal((n2, n2)) / math.sqrt(n2)
    Wa = rng.standard_normal((n2, n1)) / math.sqrt(n1)
    X = draw(sgst.psd_matrices(n=n1, scale=1.0, min_rank=1))
    Xp = draw(sgst.psd_matrices(n=n1, scale=draw(st.floats(0.0, 1.0))))
    return n1, n2, W, Wp, Wa, X, Xp


def rhs_at(flow: MatrixFlow, p: dict) -> dict[str, torch.Tensor]:
    dy = flow.rhs(torch.zeros(1, dtype=f64), flow.y0, flow.params)
    return {k: v[0] for k, v in flow.layout.views(dy).items()}


@given(states(), st.floats(0.1, 4.0), st.floats(0.0, 0.5), st.sampled_from(["byol", "simsiam"]))
def test_theorem1_quantity_decays_exactly_at_rate_two_eta(state, alpha_p, eta, method):
    """Theorem 1: with eta_p = eta, d/dt (W W^T - W_p^T W_p / alpha_p) = -2 eta (W W^T - W_p^T W_p / alpha_p)
    at every state (the W_p^T G W^T terms of dW W^T and W_p^T dW_p / alpha_p cancel), for any data
    moments, BYOL or SimSiam."""
    n1, n2, W, Wp, Wa, X, Xp = state
    model = general_model(n1, n2, X, Xp, method)
    init = {"W": W[None], "Wp": Wp[None], "Wa": (W if method == "simsiam" else Wa)[None]}
    p = params(alpha_p=alpha_p, eta=eta, beta=0.5)
    flow = MatrixFlow(model, p, init, reduce=False)
    d = rhs_at(flow, p)
    Wt, Wpt = torch.as_tensor(W), torch.as_tensor(Wp)
    dW, dWp = d["W"], d["Wp"]
    lhs = dW @ Wt.T + Wt @ dW.T - (dWp.T @ Wpt + Wpt.T @ dWp) / alpha_p
    C = Wt @ Wt.T - Wpt.T @ Wpt / alpha_p
    size = (1 + float(np.abs(X).max() + np.abs(Xp).max())) * (1 + float(np.abs(Wp).max())) ** 2 * (1 + alpha_p)
    tol = SAFETY * n1 * n1 * EPS * size * (1 + 1 / alpha_p) * 8
    assert float((lhs + 2 * eta * C).abs().max()) <= tol


@given(states(), st.floats(0.0, 0.5), st.sampled_from(["learned", "identity"]))
def test_without_stop_gradient_the_norm_never_grows_faster_than_the_decay(state, eta, predictor):
    """Theorem 2 (no stop-gradient, SimSiam): dW = -(W_p^T W_p + I) W X' - (W_p - I)^T (W_p - I) W X - eta W,
    so <W, dW> + eta ||W||^2 = -tr(...X'...) - tr(...X...) <= 0 at every state (PSD terms), i.e.
    d||W||/dt <= -eta ||W||; integrated: ||W(t)|| <= e^(-eta t) ||W(0)||."""
    n1, n2, W, Wp, Wa, X, Xp = state
    model = general_model(n1, n2, X, Xp, "simsiam", stop_grad=False, predictor=predictor)
    flow = MatrixFlow(model, params(eta=eta), {"W": W[None], "Wp": Wp[None], "Wa": W[None]}, reduce=False)
    dW = rhs_at(flow, params(eta=eta))["W"]
    Wt = torch.as_tensor(W)
    rate = float((Wt * dW).sum()) + eta * float((Wt * Wt).sum())
    size = (1 + float(np.abs(X).max() + np.abs(Xp).max())) * (1 + float(np.abs(Wp).max())) ** 2
    assert rate <= SAFETY * n1 * n1 * EPS * size * float((Wt * Wt).sum() + 1)


@HEAVY
@given(sgst.seeds(), st.floats(0.0, 0.3))
def test_removing_stop_gradient_never_exceeds_the_decay_bound(seed, eta):
    """The integrated form of the previous property along a whole run (adaptive DOP853 at rtol 1e-10):
    ||W(t)||_F <= e^(-eta t) ||W(0)||_F, up to the solver's relative tolerance."""
    rng = np.random.default_rng(seed)
    n1, n2 = 4, 3
    A, B = rng.standard_normal((n1, n1)), rng.standard_normal((n1, n1))
    model = LinearModel(n1=n1, n2=n2, method="simsiam", beta=None, stop_grad=False, eta=eta,
                        data=DataSpec(kind="general", X=(A @ A.T / n1).tolist(), X_prime=(B @ B.T / n1).tolist()))
    init = draw_initial_matrices(model, [seed], [2.0], [2.0])
    flow = MatrixFlow(model, params(eta=eta), init)
    t = np.linspace(0, 5, 6)
    solver = Solver(rtol=1e-10, atol=1e-12)
    res = integrate(flow.rhs, flow.y0, t, solver, params=flow.params, observe=flow.observe)
    norm = res.values["weight_norm"][0].numpy()
    assert (norm <= np.exp(-eta * t) * norm[0] * (1 + 100 * solver.rtol)).all()


@HEAVY
@given(sgst.seeds(), st.floats(0.3, 3.0), st.floats(0.0, 0.3), st.floats(0.05, 1.0),
       st.sampled_from(["byol", "simsiam"]))
def test_theorem1_invariant_holds_along_random_runs(seed, alpha_p, eta, beta, method):
    """Along an integrated run the Theorem 1 residual (the contract's ``balance``) stays at the solver's
    accuracy (DOP853 at rtol 1e-12): W W^T - W_p^T W_p / alpha_p = e^(-2 eta t) C for all t."""
    rng = np.random.default_rng(seed)
    n1, n2 = 4, 2
    A, B = rng.standard_normal((n1, n1)), rng.standard_normal((n1, n1))
    model = LinearModel(n1=n1, n2=n2, method=method, beta=beta if method == "byol" else None, alpha_p=alpha_p,
                        eta=eta, data=DataSpec(kind="general", X=(A @ A.T / n1).tolist(),
                                               X_prime=(0.5 * B @ B.T / n1).tolist()),
                        init=InitSpec(seed=seed % 1000, wa="random" if method == "byol" else "zero"))
    init = draw_initial_matrices(model, [seed], [1.0], [1.0])
    flow = MatrixFlow(model, params(alpha_p=alpha_p, eta=eta, beta=beta), init)
    solver = Solver(rtol=1e-12, atol=1e-14)
    res = integrate(flow.rhs, flow.y0, np.linspace(0, 4, 5), solver, params=flow.params, observe=flow.observe)
    assert float(res.values["balance"].max()) < 1e3 * solver.rtol


def assert_close_nan(a: np.ndarray, b: np.ndarray, tol: float, key: str) -> None:
    """|a - b| <= tol max(1, max|a|), with NaN (the contract's collapsed-mode p) in the same places."""
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(b)), key
    scale = max(1.0, float(np.abs(a[~nan]).max(initial=0.0)))
    assert np.abs(a[~nan] - b[~nan]).max(initial=0.0) <= tol * scale, key


def _rk4(flow) -> dict[str, np.ndarray]:
    t = np.linspace(0.0, T_END, 3)
    res = integrate(flow.rhs, flow.y0, t, Solver(method="rk4", dt=RK4_DT), params=flow.params, observe=flow.observe)
    return {k: v[0].numpy() for k, v in res.values.items()}


DELTA = 1e-6  # relative size of the perturbation that measures the sensitivity


def _amplification(make, init: dict, seed: int, keys=("s", "p")) -> float:
    """max |output change| / DELTA over ``keys`` for a start perturbed by DELTA (relative) at random,
    times sqrt(state size); at least 1."""
    rng = np.random.default_rng(seed)
    base = _rk4(make(init))
    pert = {k: v + DELTA * max(1.0, float(np.abs(v).max())) * rng.standard_normal(v.shape) for k, v in init.items()}
    moved = _rk4(make(pert))
    dim = sum(v.size for v in init.values())
    change = max(float(np.abs(moved[k] - base[k]).max()) for k in keys)
    return max(1.0, change / DELTA) * math.sqrt(dim)


def _roundoff_bound(n: int, amplification: float) -> float:
    """Round-off of two RK4 runs of one flow in different coordinates: n^2 u per stage, 4 stages a step."""
    steps = T_END / RK4_DT
    return SAFETY * n * n * EPS * 4 * steps * amplification


@HEAVY
@given(states(max_n1=4), st.data(), st.floats(0.2, 2.0), st.floats(0.0, 0.3))
def test_rotating_the_input_space_leaves_s_and_p_unchanged(state, data, alpha_p, eta):
    """x -> Q x (so X -> Q X Q^T, X' -> Q X' Q^T) with W -> W Q^T, W_a -> W_a Q^T: the flow is equivariant
    (G -> G Q^T, dW_p unchanged), F = W X W^T is invariant, and so are its eigenvalues s and the predictor's
    p along them, at every time."""
    n1, n2, W, Wp, Wa, X, Xp = state
    Q = data.draw(sgst.orthogonal_matrices(n=n1))
    p = params(alpha_p=alpha_p, eta=eta, beta=0.5)
    model = general_model(n1, n2, X, Xp)
    init = {"W": W[None], "Wp": Wp[None], "Wa": Wa[None]}
    a = _rk4(MatrixFlow(model, p, init, reduce=False))
    b = _rk4(MatrixFlow(general_model(n1, n2, Q @ X @ Q.T, Q @ Xp @ Q.T), p,
                        {"W": (W @ Q.T)[None], "Wp": Wp[None], "Wa": (Wa @ Q.T)[None]}, reduce=False))
    amp = _amplification(lambda y0: MatrixFlow(model, p, y0, reduce=False), init, n1 * 7 + n2,
                         keys=("s", "p", "weight_norm", "loss"))
    tol = _roundoff_bound(n1, amp)
    for key in ("s", "p", "weight_norm", "loss"):
        assert_close_nan(a[key], b[key], tol, key)


@HEAVY
@given(st.integers(1, 4), st.integers(0, 3), sgst.seeds(), st.floats(0.2, 2.0), st.floats(0.0, 0.3),
       st.floats(0.0, 1.0), st.sampled_from(["byol", "simsiam"]))
def test_the_matrix_flow_equals_the_per_mode_system_on_aligned_starts(n2, extra, seed, alpha_p, eta, sigma2, method):
    """§3.1: with isotropic data and an aligned start W = U diag(w) V^T, W_a = U diag(w_a) V^T,
    W_p = U diag(p) U^T the flow keeps that form, and (p_j, w_j, w_a,j) follow the per-mode system with
    lambda_s = 1 + sigma2, lambda_d = 1: s_j = w_j^2 and p_j agree at all times (sorted, as the matrix
    engine reports modes by decreasing s)."""
    n1 = n2 + extra
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.3, 1.2, n2)
    wa = w.copy() if method == "simsiam" else rng.uniform(0.0, 1.0, n2)
    pp = rng.uniform(-0.3, 1.0, n2)
    U, _ = np.linalg.qr(rng.standard_normal((n2, n2)))
    V, _ = np.linalg.qr(rng.standard_normal((n1, n1)))
    init = {"W": (U @ np.diag(w) @ V[:, :n2].T)[None], "Wa": (U @ np.diag(wa) @ V[:, :n2].T)[None],
            "Wp": (U @ np.diag(pp) @ U.T)[None]}
    model = LinearModel(n1=n1, n2=n2, method=method, beta=0.3 if method == "byol" else None,
                        data=DataSpec(sigma2=sigma2))
    p = params(alpha_p=alpha_p, eta=eta, beta=0.3, sigma2=sigma2)
    a = _rk4(MatrixFlow(model, p, init, reduce=False))
    amp = _amplification(lambda y0: MatrixFlow(model, p, y0, reduce=False), init, seed)
    Tt = lambda v: torch.as_tensor(np.asarray(v, float)[None], dtype=f64)  # noqa: E731
    md = ModeFlow(model, p, Tt(np.full(n2, 1 + sigma2)), Tt(np.ones(n2)), Tt(pp), Tt(w**2), Tt(wa))
    b = _rk4(md)
    tol = _roundoff_bound(n1, amp)
    for key in ("s", "p"):
        assert_close_nan(np.sort(a[key], axis=-1), np.sort(b[key], axis=-1), tol, key)


@given(st.integers(1, 6), sgst.seeds(), st.floats(0.2, 2.0), st.floats(0.0, 0.3), st.floats(0.0, 1.0),
       st.randoms(use_true_random=False))
def test_the_per_mode_system_is_equivariant_under_permuting_modes(k, seed, alpha_p, eta, sigma2, rnd):
    """The modes are uncoupled (learned predictor): permuting (p0, s0, w_a0, lambda_s, lambda_d) permutes
    the right-hand side's components the same way, bit for bit (the same operations on the same numbers)."""
    rng = np.random.default_rng(seed)
    perm = list(range(k))
    rnd.shuffle(perm)
    model = LinearModel(n1=k, n2=k, method="byol", beta=0.3, data=DataSpec(sigma2=sigma2))
    p = params(alpha_p=alpha_p, eta=eta, beta=0.3, sigma2=sigma2)
    vals = [rng.uniform(0.5, 2.0, k), rng.uniform(0.5, 1.0, k), rng.uniform(-0.3, 1.0, k), rng.uniform(0.1, 2.0, k),
            rng.uniform(0.0, 1.0, k)]
    Tt = lambda v: torch.as_tensor(np.asarray(v, float)[None], dtype=f64)  # noqa: E731
    a = ModeFlow(model, p, *(Tt(v) for v in vals))
    b = ModeFlow(model, p, *(Tt(v[perm]) for v in vals))
    zero = torch.zeros(1, dtype=f64)
    da = a.layout.views(a.rhs(zero, a.y0, a.params))
    db = b.layout.views(b.rhs(zero, b.y0, b.params))
    for key in da:
        assert torch.equal(da[key][0][perm], db[key][0]), key


def _short(doc: dict, t_end: float = 0.5) -> dict:
    """The document on a short horizon with an adaptive solver (the property is about the bookkeeping)."""
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    doc["simulate"] = dict(doc["simulate"], t_end=min(doc["simulate"]["t_end"], t_end), n_save=3)
    doc["solver"] = {"method": "dop853", "rtol": 1e-10, "atol": 1e-12}
    return doc


@HEAVY
@given(sgst.simulation_documents(engines=("matrix", "modes"), max_n1=4, grid=True))
def test_a_sweep_is_the_product_of_its_grid_and_each_run_equals_the_run_alone(doc):
    """simulate() of a [grid] gives one run per point of the Cartesian product (in itertools.product
    order, the last key fastest), with the swept values as run coordinates, and every run equals the
    same configuration simulated alone: runs in a batch are independent (each has its own step-size
    control), so they agree to the solver's tolerance (a few rtol of the values' size)."""
    import itertools
    import warnings

    from stopgrad.cmd_dynamics import simulation_from_dict
    from stopgrad.dynamics import simulate

    doc = _short(doc)
    sim = simulation_from_dict(doc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a failing run is reported in `status`
        ds = simulate(sim)
    keys = list(doc["grid"])
    points = list(itertools.product(*(doc["grid"][k] for k in keys)))
    assert ds.sizes["run"] == len(points) == sim.n_runs and ds.sizes["time"] == 3
    for i, point in enumerate(points):
        assert tuple(float(ds[k].values[i]) for k in keys) == tuple(float(v) for v in point)
    i = len(points) - 1  # the last run, alone
    alone = _short(dict(doc, grid={}))
    for k, v in zip(keys, points[i]):
        if k in ("p0", "s0"):
            alone["modes"] = dict(alone.get("modes", {}), **{k: v})
        elif k in ("seed", "w_scale"):
            alone["model"] = dict(alone["model"], init=dict(alone["model"]["init"], **{k: v}))
        else:
            alone["model"] = dict(alone["model"], **{k: v})
            if k == "eta" and "eta_p" not in alone["model"] and "eta_p" not in keys:
                pass  # eta_p follows eta run by run, as it does alone
    alone.pop("grid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        one = simulate(simulation_from_dict(alone))
    assert str(one["status"].values[0]) == str(ds["status"].values[i])
    if str(one["status"].values[0]) != "ok":
        return
    for key in ("s", "weight_norm", "loss"):
        a, b = ds[key].values[i], one[key].values[0]
        scale = max(1.0, float(np.nanmax(np.abs(b))))
        assert np.allclose(a, b, rtol=0, atol=100 * 1e-10 * scale, equal_nan=True), key
