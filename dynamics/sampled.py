"""Sampled dynamics: the linear model trained by finite-batch SGD on Gaussian samples.

Data x-bar ~ N(0, X); two views x1 = x-bar + e1, x2 = x-bar + e2 with e ~ N(0, X') (so that
E[x1 x1^T] = X + X' and E[x1 x2^T] = X, as in §1.1), drawn as the equivalent joint Gaussian
(x1, x2) ~ N(0, [[X + X', X], [X, X + X']]). The loss is Eq. 1 on the batch,
0.5 mean_b ||W_p W x1 - SG(W_a x2)||^2, with the stop-gradient an explicit ``detach``; autograd
gives the gradients. Plain SGD with learning rate ``lr`` (the flow's time is t = lr * steps):

    W   <- W   - lr (grad_W + eta W)
    W_p <- W_p - lr (alpha_p grad_Wp + eta_p W_p)        (symmetrised for the symmetric predictor)
    W_a <- W_a + lr beta (W - W_a)

so the large-batch, small-lr limit is exactly the flow of Eqs. 2-4 (analysis.units documents the
mapping). Predictor rules overwrite W_p with rule(F-hat) every ``freq`` steps, F-hat a rho-EMA of the
online outputs of both views (DirectPred Eq. 19). Everything is batched over runs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ._checks import check
from .build import initial_state
from .matrix_flow import MatrixFlow
from .predictor_rules import CorrelationEMA
from .results import to_dataset
from .runs import RunTable
from .solvers import IntegrationResult
from .specs import SampledSpec

__all__ = ["autograd_gradients", "batch_moments", "moment_gradients", "simulate_sampled", "wishart_moments"]


def _sqrt_psd(M: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix (works for singular ones, unlike Cholesky)."""
    lam, V = np.linalg.eigh(0.5 * (M + M.T))
    return (V * np.sqrt(np.clip(lam, 0, None))) @ V.T


def batch_moments(x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S11, S21, S22) = (x1^T x1, x2^T x1, x2^T x2) / B for views (R, B, n1)."""
    B = x1.shape[-2]
    return x1.mT @ x1 / B, x2.mT @ x1 / B, x2.mT @ x2 / B


def wishart_moments(L: torch.Tensor, batch: np.ndarray, rng: np.random.Generator):
    """Draw (S11, S21, S22) of a batch of B Gaussian pairs z = (x1, x2) ~ N(0, L L^T) without drawing
    the batch: B S ~ Wishart(L L^T, B) by Bartlett's decomposition S = L A A^T L^T / B.
    L (R, 2 n1, 2 n1); batch (R,) sizes B >= 2 n1, one per run."""
    R, d, _ = L.shape
    n1 = d // 2
    batch = np.asarray(batch, dtype=np.int64).reshape(R, 1)
    A = np.zeros((R, d, d))
    rows, cols = np.tril_indices(d, -1)
    A[:, rows, cols] = rng.standard_normal((R, rows.size))
    A[:, np.arange(d), np.arange(d)] = np.sqrt(rng.chisquare(batch - np.arange(d)[None, :]))
    A = torch.as_tensor(A, dtype=L.dtype, device=L.device)
    LA = L @ A
    S = LA @ LA.mT / torch.as_tensor(batch[:, :, None], dtype=L.dtype, device=L.device)
    return S[:, :n1, :n1], S[:, n1:, :n1], S[:, n1:, n1:]


def moment_gradients(W, Wp, Wa, S11, S21, S22, *, stop_grad: bool, simsiam: bool, identity: bool):
    """Closed-form batch gradients of L = sum_runs 0.5 mean_b ||W_p W x1 - SG(T x2)||^2 (T = W_a, or W
    for SimSiam) from the batch moments: grad_W = W_p^T (W_p W S11 - T S21), grad_Wp = (W_p W S11 -
    T S21) W^T; without stop-gradient grad_W gains the target's term -(W_p W S12 - W S22). Returns
    (grad_W, grad_Wp or None, loss (R,))."""
    T = W if simsiam else Wa
    WpW = Wp @ W
    resid = WpW @ S11 - T @ S21  # E_b[(W_p W x1 - T x2) x1^T]
    gW = Wp.mT @ resid
    if simsiam and not stop_grad:
        gW = gW - (WpW @ S21.mT - W @ S22)
    gWp = None if identity else resid @ W.mT
    loss = 0.5 * ((WpW @ S11) * WpW).sum((-2, -1)) - ((T @ S21) * WpW).sum((-2, -1)) + 0.5 * ((T @ S22) * T).sum((-2, -1))
    return gW, gWp, loss


def autograd_gradients(W, Wp, Wa, x1, x2, *, stop_grad: bool, simsiam: bool, identity: bool):
    """The same gradients by autograd on the batch loss, the stop-gradient an explicit ``detach``.
    Shapes: W (R, n2, n1), Wp (R, n2, n2), Wa (R, n2, n1) or None for SimSiam, x1/x2 (R, B, n1)."""
    W = W.detach().requires_grad_(True)
    Wp = Wp.detach().requires_grad_(not identity)
    pred = (x1 @ W.mT) @ Wp.mT
    if simsiam:
        target = x2 @ W.mT
        target = target.detach() if stop_grad else target
    else:
        target = (x2 @ Wa.mT).detach()
    loss = 0.5 * (pred - target).pow(2).sum(-1).mean(-1)
    grads = torch.autograd.grad(loss.sum(), [W] if identity else [W, Wp])
    return grads[0], (None if identity else grads[1]), loss.detach()


def simulate_sampled(sim, progress: bool = False):
    """Run ``sim`` (engine "sampled") and return a Dataset with source = "sampled", time in flow units
    (t = lr * step) and a ``step`` coordinate. Diagnostics are computed by the matrix flow's own
    ``observe`` on the sampled (W, W_p, W_a), so theory and simulation are measured identically."""
    from tqdm.auto import tqdm

    spec = sim.sampled or SampledSpec()
    m = sim.model
    table = RunTable.from_simulation(sim)
    R = len(table["eta"])
    n1, n2 = m.n1, m.n2
    if sim.save_times is None:
        steps = max(1, round(sim.t_end / spec.lr))
        save_steps = np.unique(np.round(np.linspace(0, steps, sim.n_save)).astype(int))
    else:  # the SGD steps nearest the asked times
        save_steps = np.unique(np.round(sim.times() / spec.lr).astype(int))
        steps = max(1, int(save_steps[-1]))
    device = sim.solver.torch_device()
    f64 = dict(dtype=torch.float64, device=device)
    init = initial_state(sim, table)
    obs_model = dataclasses.replace(m, predictor="learned") if m.predictor == "rule" else m
    params = table.torch(device=device)
    flow = MatrixFlow(obs_model, params, init, reduce=False, device=device)
    rule = m.predictor_rule()
    W = torch.as_tensor(init["W"], **f64)
    Wp = torch.eye(n2, **f64).expand(R, n2, n2).clone() if m.predictor == "identity" else torch.as_tensor(init["Wp"], **f64)
    Wa = None if m.simsiam else torch.as_tensor(init["Wa"], **f64)
    LXj = []  # square root of the joint covariance of (x1, x2), per run
    for s2 in table["sigma2"]:
        X, Xp = m.data.moments(n1, sigma2=float(s2))
        LXj.append(_sqrt_psd(np.block([[X + Xp, X], [X, X + Xp]])))
    LXj = torch.as_tensor(np.stack(LXj), **f64)
    Sj = LXj @ LXj.mT
    population = (Sj[:, :n1, :n1], Sj[:, n1:, :n1], Sj[:, n1:, n1:])
    if spec.gradient == "wishart":
        smallest = int(table["batch"].min())
        check("sampled.batch", smallest, smallest >= 2 * n1, f"must be >= 2 n1 = {2 * n1} for gradient = 'wishart'")
    gen = torch.Generator(device=device).manual_seed(int(spec.data_seed))
    rng = np.random.default_rng(int(spec.data_seed))
    ema = CorrelationEMA(spec.rho, spec.freq) if rule is not None else None
    lr = spec.lr
    col = lambda k: params[k][:, None, None]  # noqa: E731
    flags = dict(stop_grad=m.stop_grad, simsiam=m.simsiam, identity=m.predictor == "identity")
    states, losses = [], []

    def record():
        y = flow.layout.pack({"W": W, "Wp": Wp, "Wa": W if Wa is None else Wa})
        states.append(y.clone())

    record()
    next_save = 1
    alive = torch.ones(R, dtype=torch.bool, device=device)
    fail_step = np.full(R, -1)
    limit = 1e8 * max(1.0, float(W.abs().max()))
    for step in tqdm(range(1, steps + 1), desc="sampled SGD", disable=not progress, leave=False, mininterval=0.5):
        if spec.gradient in ("wishart", "expected"):
            if spec.gradient == "wishart":
                S11, S21, S22 = wishart_moments(LXj, table["batch"], rng)
            else:
                S11, S21, S22 = population
            gW, gWp, loss = moment_gradients(W, Wp, Wa, S11, S21, S22, **flags)
        else:
            z = torch.randn(R, spec.batch, 2 * n1, generator=gen, **f64) @ LXj.mT
            x1, x2 = z[..., :n1], z[..., n1:]
            S11, S21, S22 = batch_moments(x1, x2)
            if spec.gradient == "autograd":
                gW, gWp, loss = autograd_gradients(W, Wp, Wa, x1, x2, **flags)
            else:
                gW, gWp, loss = moment_gradients(W, Wp, Wa, S11, S21, S22, **flags)
        with torch.no_grad():
            W_old = W
            W = W - lr * (gW + col("eta") * W)
            if m.predictor in ("learned", "symmetric", "rule"):
                if m.predictor == "symmetric":
                    gWp = 0.5 * (gWp + gWp.mT)
                Wp = Wp - lr * (col("alpha_p") * gWp + col("eta_p") * Wp)
            if rule is not None:  # F-hat from the online outputs of both views, E_B[f f^T]
                F_hat = ema.update_correlation(W_old @ (0.5 * (S11 + S22)) @ W_old.mT)
                if ema.due(step - 1):
                    Wp = rule(F_hat)
            if Wa is not None:
                Wa = Wa + lr * col("beta") * (W_old - Wa)
        # a run that stopped being finite or exploded is stopped (NaN from here on) and reported;
        # the others go on: the runs of a batch never interact
        bad = alive & ~(torch.isfinite(W).flatten(1).all(1) & (W.abs().flatten(1).amax(1) <= limit))
        if bool(bad.any()):
            fail_step[bad.cpu().numpy()] = step
            alive &= ~bad
            W = torch.where(alive[:, None, None], W, torch.nan)
            if not bool(alive.any()):
                break
        if next_save < len(save_steps) and step == save_steps[next_save]:
            record()
            losses.append(loss)
            next_save += 1
    t_flow = save_steps * lr
    Y = torch.stack(states, dim=1)  # (R, S_done, n)
    Rr, S_, n = Y.shape
    sub = {k: v.repeat_interleave(S_, dim=0) for k, v in flow.params.items()}
    t_rep = torch.as_tensor(t_flow[:S_], **f64).repeat(Rr)
    obs = flow.observe(t_rep, Y.reshape(-1, n), sub)
    values = {}
    for key, val in obs.items():
        full = torch.full((R, len(save_steps)) + tuple(val.shape[1:]), math.nan, dtype=val.dtype)
        full[:, :S_] = val.reshape(R, S_, *val.shape[1:]).cpu()
        values[key] = full
    status = np.where(fail_step < 0, 0, 1).astype(np.int8)
    t_fail = np.where(fail_step < 0, np.nan, fail_step * lr)
    res = IntegrationResult(t=t_flow, values=values, status=status, t_fail=t_fail,
                            nfev=np.full(R, steps), steps=np.full(R, steps), rejected=np.zeros(R, int))
    ds = to_dataset(sim, table, res, "torch", source="sampled", extra={"step": (("time",), save_steps)},
                     attrs={"lr": lr, "batch": spec.batch, "gradient": spec.gradient}, initial=init)
    return ds.set_coords("step")
