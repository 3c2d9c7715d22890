"""The expected GSG flow of the linear model (derivation: docs/gsg_theory.md).

Model: z = W x, p = W_p z, loss of one image a with partner b (views x_s = a + e_s gets the predictor,
its sibling x_t = a + e_t is the stop-gradient target, e ~ N(0, sigma^2 I)):

    ell_a = 1/2 || W_p W x_s - SG(W x_t) ||^2 .

GSG picks, among the four negative pairs, the one with the smallest ||W(x_1i - x_2j)||. To first order in
sigma / ||W delta|| (delta = a - b) the choice factorises: image a's source view is the one whose noise
has the smallest projection on u = W delta / ||W delta||, and

    E[e_s | chosen] = m_ab = -kappa n_ab,   n_ab = W^T W delta / ||W^T W delta||,   kappa = sigma / sqrt(pi)

(E of the minimum of two i.i.d. N(0, s^2) is -s / sqrt(pi); gsg_symbolic derives it), while
E[e_s e_s^T | chosen] = sigma^2 I is unchanged. The target is the view *not* chosen, so its noise is
biased the other way, E[e_t | chosen] = -m_ab, and E[e_t e_s^T | chosen] = 0. Reverse GSG has m_ab = +kappa n_ab, SimSiam m_ab = 0.
Averaging over ordered pairs (a, b) of the dataset, with P(partner is another image of the batch)
= 1 - 1/B:

    M   := E[m_ab a^T] = -(c kappa / 2) (1 - 1/B) W^T W S(W),   S(W) := E_{a,b}[ delta delta^T / ||W^T W delta|| ]
    C_s := E[x_s x_s^T] = X + sigma^2 I + M + M^T,        C_ts := E[x_t x_s^T] = X + M^T - M
    dW/dt   = -( W_p^T W_p W C_s - W_p^T W C_ts ) - eta W
    dW_p/dt = -alpha_p ( W_p W C_s W^T - W C_ts W^T + eta W_p )

with c = +1 (GSG), -1 (reverse GSG), 0 (SimSiam). X = E[a a^T] over the dataset. The terms in M are the
**selection-bias (repulsion) term**; without a predictor (W_p = I) the flow is

    dW/dt = -(sigma^2 + eta) W - 2 W M = -(sigma^2 + eta) W + c kappa (1 - 1/B) W W^T W S(W),

whose second term never decreases Phi(W) = E_{a,b} ||W^T W delta|| (docs/gsg_theory.md, and the check
``gsg_repulsion_sign``). The state of run r is y = [vec W, vec W_p] (row-major).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .solvers import Solver, integrate

from .siamese import EvalSet, SiameseData, batched_metrics, make_dataset

__all__ = ["GSGFlow", "SELECTION_SIGN", "expected_gradients", "integrate_gsg_flow", "pair_differences", "repulsion_matrix"]

f64 = torch.float64
SQRT_PI = math.sqrt(math.pi)
#: c in m_ab = -c kappa n_ab: the sign of the selection bias for each four-view method
SELECTION_SIGN = {"gsg": 1.0, "gsg-reverse": -1.0, "simsiam": 0.0, "simsiam-random": 0.0}


def pair_differences(x: torch.Tensor) -> torch.Tensor:
    """All ordered differences delta = x_a - x_b with a != b, (K (K-1), n1); each has weight 1 / K^2
    in E_{a,b} (the K pairs a == b have delta = 0 and contribute nothing)."""
    K = x.shape[0]
    d = (x.unsqueeze(1) - x.unsqueeze(0)).reshape(K * K, -1)
    keep = ~torch.eye(K, dtype=torch.bool).reshape(-1)
    return d[keep]


def repulsion_matrix(W: torch.Tensor, deltas: torch.Tensor, n_points: int) -> torch.Tensor:
    """S(W) = E_{a,b}[delta delta^T / ||W^T W delta||] for W (R, n2, n1), deltas (P, n1): (R, n1, n1).

    A pair whose projection difference vanishes (W^T W delta = 0) contributes 0: at such a pair the
    choice is symmetric and the selection bias averages to zero (docs/gsg_theory.md)."""
    A = W.mT @ W
    Ad = deltas @ A  # (R, P, n1); A is symmetric
    nrm = Ad.norm(dim=-1)
    w = torch.where(nrm > 0, 1.0 / nrm.clamp(min=torch.finfo(W.dtype).tiny), torch.zeros_like(nrm)) / n_points**2
    return torch.einsum("pi,rp,pj->rij", deltas, w, deltas)


def expected_gradients(W, Wp, X, deltas, n_points, sigma, sign, batch_factor):
    """(G_W, G_Wp, M): the expected loss gradients of the module docstring.

    W (R, n2, n1), Wp (R, n2, n2), X (n1, n1), sigma/sign/batch_factor (R,) with batch_factor = 1 - 1/B.
    """
    n1 = W.shape[-1]
    kappa = sigma / SQRT_PI
    coef = (-0.5 * sign * kappa * batch_factor).view(-1, 1, 1)
    M = coef * (W.mT @ W) @ repulsion_matrix(W, deltas, n_points)
    eye = torch.eye(n1, dtype=W.dtype, device=W.device)
    Cs = X + (sigma**2).view(-1, 1, 1) * eye + M + M.mT
    Cts = X + M.mT - M
    WCs, WCts = W @ Cs, W @ Cts
    G_W = Wp.mT @ (Wp @ WCs - WCts)
    G_Wp = (Wp @ WCs - WCts) @ W.mT
    return G_W, G_Wp, M


@dataclass
class GSGFlow:
    """The batched expected flow: ``rhs``, ``y0``, ``params`` and ``observe`` for ``integrate``.

    predictor False: W_p = I stays fixed (the no-predictor variants). Measurements use the same EvalSet
    and ``batched_metrics`` as the sampled simulator.
    """

    x: torch.Tensor
    n2: int
    predictor: bool
    evalset: EvalSet | None = None

    def __post_init__(self):
        self.n1 = self.x.shape[1]
        self.K = self.x.shape[0]
        self.X = self.x.T @ self.x / self.K
        self.deltas = pair_differences(self.x)

    def split(self, y: torch.Tensor):
        """Views W (R, n2, n1) and W_p (R, n2, n2) of flat states y (R, n2 n1 + n2^2)."""
        n1, n2 = self.n1, self.n2
        W = y[:, : n2 * n1].reshape(-1, n2, n1)
        Wp = y[:, n2 * n1 :].reshape(-1, n2, n2)
        return W, Wp

    def rhs(self, t, y, p):
        """The expected GSG (or SimSiam, reverse GSG) update as a flow: dW = -E[grad_W] - eta W,
        dW_p = -alpha_p (E[grad_Wp] + eta W_p) (0 without a predictor).

        Args:
            t: flow time, () or (R,); unused (autonomous).
            y: flat states (R, n2 n1 + n2^2): W (n2, n1), then W_p (n2, n2).
            p: per-run parameters, each (R,): sigma (view noise), sign (+1 GSG, -1 reverse, 0 SimSiam),
                batch_factor (1 - 1/B), eta, alpha_p.

        Returns:
            dy/dt, (R, n2 n1 + n2^2), in units of 1 / flow time (one unit = one SGD step of lr 1).
        """
        W, Wp = self.split(y)
        G_W, G_Wp, _ = expected_gradients(W, Wp, self.X, self.deltas, self.K, p["sigma"], p["sign"], p["batch_factor"])
        dW = -G_W - p["eta"].view(-1, 1, 1) * W
        if self.predictor:
            dWp = -p["alpha_p"].view(-1, 1, 1) * (G_Wp + p["eta"].view(-1, 1, 1) * Wp)
        else:
            dWp = torch.zeros_like(Wp)
        return torch.cat([dW.reshape(len(y), -1), dWp.reshape(len(y), -1)], dim=1)

    def observe(self, t, y, p):
        """The weights, and the evaluation metrics when an evaluation set is given.

        Args:
            t: flow time, (R,).
            y: flat states, as for :meth:`rhs`.
            p: per-run parameters, as for :meth:`rhs`.

        Returns:
            {name: tensor}: W (R, n2, n1), Wp (R, n2, n2), and with ``evalset`` the metrics of
            :func:`~stopgrad.dynamics.siamese.batched_metrics`, each (R,).
        """
        W, Wp = self.split(y)
        out = {"W": W.clone(), "Wp": Wp.clone()}
        if self.evalset is not None:
            z = self.evalset.views.unsqueeze(0) @ W.mT.unsqueeze(1)  # (R, 4, E, n2)
            bank = self.evalset.bank.unsqueeze(0) @ W.mT
            out.update(batched_metrics(z, self.evalset, bank, W))
        return out


def integrate_gsg_flow(data: SiameseData, W0: torch.Tensor, Wp0: torch.Tensor, t_save, *, method: str,
                       predictor: bool, sigma=None, eta=0.0, alpha_p=1.0, batch=math.inf,
                       evalset: EvalSet | None = None, solver: Solver = Solver(method="dop853", rtol=1e-8, atol=1e-10)):
    """Integrate the expected flow from (W0 (R, n2, n1), Wp0 (R, n2, n2)) with ``stopgrad.dynamics.integrate``.

    method: a key of SELECTION_SIGN; sigma defaults to data.aug_std; eta, alpha_p, batch: scalars or (R,)
    arrays. Returns the IntegrationResult (values: W, Wp and, with an evalset, the measurements)."""
    x, _, _ = make_dataset(data)
    R, n2, _ = W0.shape
    flow = GSGFlow(x, n2, predictor, evalset)

    def per_run(v):
        return torch.as_tensor(np.broadcast_to(np.asarray(v, dtype=float), (R,)).copy(), dtype=f64)

    B = per_run(batch)
    params = {"sigma": per_run(data.aug_std if sigma is None else sigma), "sign": per_run(SELECTION_SIGN[method]),
              "batch_factor": torch.where(torch.isfinite(B), 1.0 - 1.0 / B, torch.ones_like(B)),
              "eta": per_run(eta), "alpha_p": per_run(alpha_p)}
    y0 = torch.cat([W0.reshape(R, -1), Wp0.reshape(R, -1)], dim=1).to(f64)
    return integrate(flow.rhs, y0, t_save, solver, params=params, observe=flow.observe)
