"""The matrix gradient flows of linear BYOL/SimSiam (reference/theory.md §1.2, §2.2, §2.3).

:class:`MatrixFlow` integrates (W, W_p, W_a) under Eqs. 2-4 for any data moments, any predictor kind
(learned, symmetrised, identity, rule) and with or without stop-gradient.

**Exact reduction.** With isotropic data (X = I, X' = sigma2 I) every update multiplies W and W_a on the
left only, so their rows stay in the span of the rows of W(0) and W_a(0). Writing W = C Q, W_a = C_a Q
with Q (r x n1) orthonormal rows, the flow of (C, W_p, C_a) is the same flow with n1 replaced by r
(r = n2 when W_a(0) is 0 or W(0), r = min(n1, 2 n2) otherwise), and every quantity of the data contract
follows from C (F = C C^T). This is exact, not an approximation; ``reduce=False`` integrates the full W.

:class:`SymmetrizedFlow` integrates Eq. 7 in the (F, W_p) variables with W_a = tau W (Assumption 1,
time-independent tau), the form in which Theorem 3 is stated.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from stopgrad.analysis import spectral_quantities

from ._state import Layout
from .model import LinearModel
from .solvers.numba_rhs import matrix_work_size

__all__ = ["MatrixFlow", "SymmetrizedFlow", "draw_initial_matrices"]


def draw_initial_matrices(model: LinearModel, seeds=None, w_scale=None, wp_scale=None) -> dict[str, np.ndarray]:
    """The random initial (W, W_p, W_a) of each run, each run from its own seed.

    Run r draws from ``numpy.random.default_rng(seeds[r])``, in this order:

    1. W = (w_scale / sqrt(n1)) * N(0, 1) of shape (n2, n1) (row-major ``standard_normal``; the
       product in this order, for bitwise reproduction);
    2. M = (wp_scale / sqrt(n2)) * N(0, 1) of shape (n2, n2), drawn whatever ``init.wp`` is, then
       W_p = M ("random"), (M + M^T) / 2 ("symmetric"), wp_scale * I ("identity") or 0 ("zero");
       with ``model.predictor == "symmetric"`` W_p is symmetrised again, (W_p + W_p^T) / 2;
    3. W_a = 0 ("zero"), W ("copy") or, for "random", (w_scale / sqrt(n1)) * N(0, 1) of shape (n2, n1).

    So a run's draw does not depend on the rest of the sweep.

    Args:
        model: dims, ``init`` (kinds wp and wa; the defaults below) and ``predictor``.
        seeds: (R,) integer seeds; default ``[model.init.seed]``.
        w_scale: (R,) or a number; default ``model.init.w_scale``.
        wp_scale: (R,) or a number; default ``model.init.wp_scale``.

    Returns:
        float64 arrays ``W`` (R, n2, n1), ``Wp`` (R, n2, n2), ``Wa`` (R, n2, n1).
    """
    seeds = [model.init.seed] if seeds is None else np.atleast_1d(np.asarray(seeds))
    R = len(seeds)
    w_scale = np.broadcast_to(np.asarray(model.init.w_scale if w_scale is None else w_scale, float), (R,))
    wp_scale = np.broadcast_to(np.asarray(model.init.wp_scale if wp_scale is None else wp_scale, float), (R,))
    n1, n2, init = model.n1, model.n2, model.init
    W = np.empty((R, n2, n1))
    Wp = np.empty((R, n2, n2))
    Wa = np.zeros((R, n2, n1))
    for r, seed in enumerate(seeds):  # initial draws only; the integration itself is batched
        rng = np.random.default_rng(int(seed))
        W[r] = rng.standard_normal((n2, n1)) * (w_scale[r] / math.sqrt(n1))
        M = rng.standard_normal((n2, n2)) * (wp_scale[r] / math.sqrt(n2))
        if init.wp == "random":
            Wp[r] = M
        elif init.wp == "symmetric":
            Wp[r] = 0.5 * (M + M.T)
        elif init.wp == "identity":
            Wp[r] = wp_scale[r] * np.eye(n2)
        else:
            Wp[r] = 0.0
        if model.predictor == "symmetric":  # Assumption 3: a symmetric start for the symmetrised flow
            Wp[r] = 0.5 * (Wp[r] + Wp[r].T)
        if init.wa == "copy":
            Wa[r] = W[r]
        elif init.wa == "random":
            Wa[r] = rng.standard_normal((n2, n1)) * (w_scale[r] / math.sqrt(n1))
    return {"W": W, "Wp": Wp, "Wa": Wa}


def _bcast(v: torch.Tensor) -> torch.Tensor:
    return v[:, None, None]


class MatrixFlow:
    """Batched matrix flow of one LinearModel over R runs with per-run hyperparameters.

    Args:
        model: the model (dims, data, predictor kind, stop-gradient, method).
        params: per-run float64 tensors (R,): alpha_p, eta, eta_p, beta, sigma2 (sigma2 used only for
            isotropic data).
        init: per-run initial matrices from :func:`draw_initial_matrices`.
        reduce: use the exact isotropic reduction when it applies ("auto"), or never (False).
    """

    def __init__(self, model: LinearModel, params: dict[str, torch.Tensor], init: dict[str, np.ndarray],
                 reduce: bool | str = "auto", device: torch.device | str = "cpu"):
        self.model = model
        self.device = torch.device(device)
        self.rule = model.predictor_rule()
        n1, n2 = model.n1, model.n2
        self.reduced = bool(reduce) and model.isotropic and (reduce == "auto" or reduce is True)
        W0 = torch.as_tensor(init["W"], device=self.device)
        Wp0 = torch.as_tensor(init["Wp"], device=self.device)
        Wa0 = torch.as_tensor(init["Wa"], device=self.device)
        if self.reduced:
            # W = C Q with Q orthonormal rows spanning rows of W(0) (and W_a(0) if it is independent)
            # (W_a(0) = 0 or W(0), as drawn for init.wa "zero"/"copy", adds no direction; a random or
            # explicitly given W_a(0) does)
            own_rows = model.init.wa == "random" or not (bool((Wa0 == 0).all()) or torch.equal(Wa0, W0))
            M = torch.cat([W0, Wa0], dim=1) if own_rows else W0
            Q, _ = torch.linalg.qr(M.mT)  # (R, n1, r)
            W0, Wa0 = W0 @ Q, Wa0 @ Q
            r = Q.shape[-1]
        else:
            r = n1
        self.r = r
        blocks = {"W": (n2, r)}
        if model.predictor in ("learned", "symmetric"):
            blocks["Wp"] = (n2, n2)
        if not model.simsiam:
            blocks["Wa"] = (n2, r)
        self.layout = Layout(blocks)
        self.y0 = self.layout.pack({"W": W0, "Wp": Wp0, "Wa": Wa0})
        self.eye = torch.eye(n2, dtype=torch.float64, device=self.device)
        if not self.reduced:
            X, Xp = model.data.moments(n1)
            self.X = torch.as_tensor(X, device=self.device)
            self.Xp = torch.as_tensor(Xp, device=self.device)
            self.Sigma_s = self.X + self.Xp
        p = {k: v.to(self.device, torch.float64) for k, v in params.items()}
        WWt0 = W0 @ W0.mT
        p["C0"] = WWt0 - (Wp0.mT @ Wp0) / _bcast(p["alpha_p"]) if "Wp" in self.layout else WWt0
        p["C0_norm"] = torch.linalg.matrix_norm(p["C0"])
        self.params = p

    def numba_system(self):
        """(name, cfg, work size) for the numba backends, or None where they do not apply (general data
        moments, predictor rules and the GPU use the torch backend). The kernel rows come from the
        RunTable."""
        m = self.model
        if not self.reduced or m.predictor == "rule" or self.device.type != "cpu":
            return None
        kind = {"learned": 0, "symmetric": 1, "identity": 2}[m.predictor]
        cfg = [m.n2, self.r, kind, int(m.stop_grad), int(m.simsiam)]
        return "matrix", cfg, matrix_work_size(m.n2, self.r)

    # --- the pieces shared by the RHS and the diagnostics -------------------------------------------
    def _mats(self, y: torch.Tensor, p: dict):
        v = self.layout.views(y)
        W = v["W"]
        Wa = W if self.model.simsiam else v["Wa"]
        if "Wp" in v:
            Wp = v["Wp"]
        elif self.model.predictor == "identity":
            Wp = self.eye.expand(y.shape[0], -1, -1)
        else:
            Wp = self.rule(self._F_hat(W, p))
        return W, Wp, Wa

    def _right(self, M: torch.Tensor, which: str, p: dict) -> torch.Tensor:
        """M @ Sigma for Sigma in {Sigma_s = X + X', Sigma_d = X, X'}: scalars under the reduction."""
        if self.reduced:
            scale = {"s": 1.0 + p["sigma2"], "d": None, "n": p["sigma2"]}[which]
            return M if scale is None else M * _bcast(scale)
        return M @ {"s": self.Sigma_s, "d": self.X, "n": self.Xp}[which]

    def _F_hat(self, W, p):
        """F-hat = W (X + X') W^T, the correlation DirectPred estimates from augmented views."""
        return self._right(W, "s", p) @ W.mT

    # --- the flow ------------------------------------------------------------------------------------
    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: dict) -> torch.Tensor:
        """The gradient flow dy/dt (theory.md 1.2 with stop-gradient, 2.2 for DirectPred-style rules,
        2.3 without stop-gradient).

        Args:
            t: flow time, () or (R,) (units "flow": t = sum of lr / (1 - momentum) over steps); unused,
                the flow is autonomous.
            y: flat states (R, n), the blocks of ``self.layout``: W (n2, r), then W_p (n2, n2) if learned,
                then W_a (n2, r) for BYOL; r = n1, or the reduced rank under the isotropic reduction.
            p: per-run parameters, each (R,): eta, eta_p, alpha_p, beta, sigma2 (and C0 for observe).

        Returns:
            dy/dt, (R, n), in units of 1 / flow time.
        """
        m = self.model
        W, Wp, Wa = self._mats(y, p)
        G = self._right(Wa, "d", p) - self._right(Wp @ W, "s", p)  # -W_p W Sigma_s + W_a Sigma_d
        out = {}
        if m.stop_grad:
            dW = Wp.mT @ G if m.predictor != "identity" else G
        else:  # Theorem 2: dW = -(Wp^T Wp + I) W X' - (Wp - I)^T (Wp - I) W X - eta W
            Wt = Wp - self.eye
            dW = -(Wp.mT @ Wp + self.eye) @ self._right(W, "n", p) - Wt.mT @ (Wt @ self._right(W, "d", p))
        out["W"] = dW - _bcast(p["eta"]) * W
        if "Wp" in self.layout:
            gWp = G @ W.mT
            if m.predictor == "symmetric":
                gWp = 0.5 * (gWp + gWp.mT)
            out["Wp"] = _bcast(p["alpha_p"]) * gWp - _bcast(p["eta_p"]) * Wp
        if "Wa" in self.layout:
            out["Wa"] = _bcast(p["beta"]) * (W - Wa)
        return self.layout.pack(out)

    # --- diagnostics (design data contract) --------------------------------------------------------
    def observe(self, t: torch.Tensor, y: torch.Tensor, p: dict) -> dict[str, torch.Tensor]:
        """The data contract's quantities at one save time.

        Args:
            t: flow time, (R,).
            y: flat states (R, n), as for :meth:`rhs`.
            p: per-run parameters, each (R,), plus C0 (R, n2, n2) and C0_norm (R,) (Theorem 1's constant).

        Returns:
            {name: tensor}: s, p, alignment, tau (R, n2), per eigenmode of F = W X W^T in descending s;
            commutator, asymmetry, loss, weight_norm (R,); balance (R,), Theorem 1's residual relative
            to ||C|| (only with a learned W_p). s and p are dimensionless (X has unit scale).
        """
        W, Wp, Wa = self._mats(y, p)
        XWt = W.mT if self.reduced else self.X @ W.mT  # X = I in the reduced coordinates
        F, Fa = W @ XWt, (Wa @ XWt).mT  # F = W X W^T, F_a = W X W_a^T
        q = spectral_quantities(F, Wp, Fa)
        out = {k: q[k] for k in ("s", "p", "alignment", "commutator", "asymmetry", "tau")}
        if "Wp" in self.layout:
            WWt = W @ W.mT
            decay = torch.exp(-2.0 * p["eta"] * t)
            PtP = (Wp.mT @ Wp) / _bcast(p["alpha_p"])
            R = WWt - PtP - _bcast(decay) * p["C0"]
            # relative to ||C|| (the contract); for a balanced start (C = 0) relative to the terms' size
            mn = torch.linalg.matrix_norm
            den = torch.where(p["C0_norm"] > 0, p["C0_norm"], mn(WWt) + mn(PtP))
            out["balance"] = mn(R) / den
        WpW = Wp @ W
        loss = 0.5 * (self._right(WpW, "s", p) * WpW).sum((-2, -1))
        loss = loss - (self._right(WpW, "d", p) * Wa).sum((-2, -1))
        loss = loss + 0.5 * (self._right(Wa, "s", p) * Wa).sum((-2, -1))
        out["loss"] = loss
        out["weight_norm"] = torch.linalg.matrix_norm(W)
        return out


class SymmetrizedFlow:
    """Eq. 7 (= App. Eq. 67) in (F, W_p), symmetric W_p, W_a = tau W with constant tau, X = I, X' = sigma2 I.

        dW_p/dt = -(alpha_p/2)(1+sigma2){W_p, F} + alpha_p tau F - eta W_p
        dF/dt   = -(1+sigma2){W_p^2, F} + tau {W_p, F} - 2 eta F

    params per run: alpha_p, eta, sigma2, tau. Initial F (R, n, n) PSD and W_p (R, n, n) symmetric.
    """

    def __init__(self, F0: torch.Tensor, Wp0: torch.Tensor, params: dict[str, torch.Tensor]):
        n = F0.shape[-1]
        self.layout = Layout({"F": (n, n), "Wp": (n, n)})
        self.y0 = self.layout.pack({"F": 0.5 * (F0 + F0.mT), "Wp": 0.5 * (Wp0 + Wp0.mT)})
        self.params = params
        self.eye = torch.eye(n, dtype=F0.dtype, device=F0.device)

    @staticmethod
    def _anti(A, B):
        AB = A @ B
        return AB + AB.mT  # {A, B} for symmetric A, B

    def derivatives(self, F, Wp, p):
        """Eq. 7's (dF/dt, dW_p/dt), each (R, n, n), for F, W_p (R, n, n) and per-run parameters (R,)."""
        lam = _bcast(1.0 + p["sigma2"])
        dWp = -0.5 * _bcast(p["alpha_p"]) * lam * self._anti(Wp, F) + _bcast(p["alpha_p"] * p["tau"]) * F
        dWp = dWp - _bcast(p["eta"]) * Wp
        dF = -lam * self._anti(Wp @ Wp, F) + _bcast(p["tau"]) * self._anti(Wp, F) - 2.0 * _bcast(p["eta"]) * F
        return dF, dWp

    def K(self, F, Wp, p):
        """Eq. 9: K = (1+sigma2)[(alpha_p/2) F + W_p^2 - tau/(1+sigma2) W_p] + (3/2) eta I."""
        lam = _bcast(1.0 + p["sigma2"])
        return lam * (0.5 * _bcast(p["alpha_p"]) * F + Wp @ Wp) - _bcast(p["tau"]) * Wp + 1.5 * _bcast(p["eta"]) * self.eye

    def rhs(self, t, y, p):
        """Eq. 7: (dF/dt, dW_p/dt) flattened.

        Args:
            t: flow time, () or (R,); unused (autonomous).
            y: flat states (R, 2 n^2): F (n, n), then W_p (n, n), both symmetric.
            p: per-run parameters, each (R,): alpha_p, eta, sigma2, tau.

        Returns:
            dy/dt, (R, 2 n^2), in units of 1 / flow time.
        """
        v = self.layout.views(y)
        dF, dWp = self.derivatives(v["F"], v["Wp"], p)
        return self.layout.pack({"F": dF, "Wp": dWp})

    def observe(self, t, y, p):
        """The contract's quantities of (F, W_p) at one save time.

        Args:
            t: flow time, (R,).
            y: flat states (R, 2 n^2), as for :meth:`rhs`.
            p: per-run parameters, each (R,).

        Returns:
            {name: tensor}: s, p, alignment (R, n), per eigenmode of F in descending s; commutator,
            asymmetry, commutator_norm ||[F, W_p]||_F, and k_min, the smallest eigenvalue of Eq. 9's K
            (Theorem 3 needs it > 0), each (R,).
        """
        v = self.layout.views(y)
        F, Wp = v["F"], v["Wp"]
        q = spectral_quantities(F, Wp)
        out = {k: q[k] for k in ("s", "p", "alignment", "commutator", "asymmetry")}
        out["commutator_norm"] = torch.linalg.matrix_norm(F @ Wp - Wp @ F)
        out["k_min"] = torch.linalg.eigvalsh(self.K(F, Wp, p))[..., 0]
        return out
