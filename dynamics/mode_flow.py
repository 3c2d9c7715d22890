"""The exact per-eigenmode system (reference/theory.md §3.1, scalar embedding with weight decay).

With W = U diag(w) V^T, W_a = U diag(w_a) V^T, W_p = U diag(p) U^T and data moments diagonal in V
(X = V diag(lambda_d) V^T, X + X' = V diag(lambda_s) V^T), Eqs. 2-4 keep this form exactly and each
mode j follows

    dp_j/dt   = alpha_p w_j (w_a,j lambda_d,j - p_j w_j lambda_s,j) - eta_p p_j
    dw_j/dt   = p_j (w_a,j lambda_d,j - p_j w_j lambda_s,j) - eta w_j
    dw_a,j/dt = beta (w_j - w_a,j)            (SimSiam: w_a = w)

With s_j = w_j^2 and tau_j = w_a,j / w_j this is Eqs. 11-13 with a per-mode tau. Without
stop-gradient (SimSiam) dw/dt = -(p^2 + 1) w lambda_n - (p - 1)^2 w lambda_d - eta w, lambda_n =
lambda_s - lambda_d. With a predictor rule, p_j = phi(lambda_s w_j^2), the eigenvalue of F-hat.

Modes keep their index (mode j is the fixed eigen-direction u_j), so trajectories can cross; the
Dataset's ``s`` is the eigenvalue lambda_d w_j^2 of F = W X W^T.
"""

from __future__ import annotations

import torch

from ._state import Layout
from .model import LinearModel

__all__ = ["ModeFlow"]


class ModeFlow:
    """Batched per-mode system for R runs of k modes.

    Args:
        model: predictor kind, stop-gradient and method (dims and data enter through lam_s, lam_d).
        params: per-run (R,) tensors alpha_p, eta, eta_p, beta.
        lam_s, lam_d: (R, k) eigenvalues of X + X' and of X along each mode.
        p0, s0, wa0: (R, k) initial predictor eigenvalue, F eigenvalue s = lambda_d w^2, and w_a.
    """

    def __init__(self, model: LinearModel, params: dict[str, torch.Tensor], lam_s: torch.Tensor, lam_d: torch.Tensor,
                 p0: torch.Tensor, s0: torch.Tensor, wa0: torch.Tensor):
        self.model = model
        self.rule = model.predictor_rule()
        k = lam_s.shape[-1]
        self.k = k
        blocks = {}
        if model.predictor in ("learned", "symmetric"):
            blocks["p"] = (k,)
        blocks["w"] = (k,)
        if not model.simsiam:
            blocks["wa"] = (k,)
        self.layout = Layout(blocks)
        w0 = torch.sqrt(s0 / lam_d)
        self.y0 = self.layout.pack({"p": p0, "w": w0, "wa": wa0})
        p = dict(params)
        p["lam_s"], p["lam_d"] = lam_s, lam_d
        p0_eff = self._p({"p": p0}, w0, p) if "p" not in blocks else p0
        c = w0**2 - p0_eff**2 / p["alpha_p"][:, None]
        p["c"] = c
        p["c_norm"] = c.norm(dim=-1)
        self.params = p

    def numba_system(self):
        """(name, cfg, work size) for the numba backends, or None (user rules, the GPU). The kernel rows
        come from the RunTable (its ``lam_s``/``lam_d`` columns and this flow's rule)."""
        m = self.model
        dp = self.rule.directset_params if self.rule is not None else None
        if (m.predictor == "rule" and dp is None) or self.y0.device.type != "cpu":
            return None
        normalize = dp[3] if dp is not None else True
        kind = {"learned": 0, "symmetric": 1, "identity": 2, "rule": 3}[m.predictor]
        cfg = [self.k, kind, int(m.stop_grad), int(m.simsiam), int(normalize)]
        return "modes", cfg, self.k

    def _p(self, v, w, prm):
        if "p" in v and "p" in self.layout:
            return v["p"]
        if self.model.predictor == "identity":
            return torch.ones_like(w)
        return self.rule.phi(prm["lam_s"] * w * w)

    def _unpack(self, y, prm):
        """(w, w_a, p, lambda_s, lambda_d), each (R, k), from the flat state."""
        v = self.layout.views(y)
        w = v["w"]
        wa = w if self.model.simsiam else v["wa"]
        return w, wa, self._p(v, w, prm), prm["lam_s"], prm["lam_d"]

    def rhs(self, t, y, prm):
        """The per-mode system (theory.md 3.1), each mode j independent:
        dp_j = alpha_p w_j g_j - eta_p p_j, dw_j = p_j g_j - eta w_j, dw_a,j = beta (w_j - w_a,j),
        g_j = w_a,j lambda_d,j - p_j w_j lambda_s,j (the no-stop-gradient and fixed-predictor variants
        as in the code).

        Args:
            t: flow time, () or (R,); unused (autonomous).
            y: flat states (R, n), the blocks of ``self.layout``, each (R, k): p (learned predictor),
                w, then w_a (BYOL).
            prm: per-run columns, each (R,) (alpha_p, eta, eta_p, beta) or (R, k) (lam_s, lam_d: the
                mode's eigenvalues of X + X' and X).

        Returns:
            dy/dt, (R, n), in units of 1 / flow time.
        """
        m = self.model
        w, wa, p, ls, ld = self._unpack(y, prm)
        g = wa * ld - p * w * ls
        out = {}
        if "p" in self.layout:
            out["p"] = prm["alpha_p"][:, None] * w * g - prm["eta_p"][:, None] * p
        if m.stop_grad:
            dw = p * g
        else:
            dw = -(p * p + 1.0) * w * (ls - ld) - (p - 1.0) ** 2 * w * ld
        out["w"] = dw - prm["eta"][:, None] * w
        if "wa" in self.layout:
            out["wa"] = prm["beta"][:, None] * (w - wa)
        return self.layout.pack(out)

    def observe(self, t, y, prm):
        """The contract's quantities at one save time.

        Args:
            t: flow time, (R,).
            y: flat states (R, n), as for :meth:`rhs`.
            prm: per-run columns as for :meth:`rhs`, plus c (R, k) and c_norm (R,) (the per-mode
                Theorem 1 constants).

        Returns:
            {name: tensor}: s = lambda_d w^2, p, alignment (sign of p), tau = w_a / w (NaN where w^2 is
            below 1e-12 of the run's largest), each (R, k); commutator and asymmetry (identically 0 in
            the mode basis), loss, weight_norm, and balance (with a learned predictor), each (R,).
        """
        w, wa, p, ls, ld = self._unpack(y, prm)
        floor = 1e-12 * (w * w).amax(dim=-1, keepdim=True)
        out = {
            "s": ld * w * w,
            "p": p.clone(),
            "alignment": torch.sign(p),
            "tau": torch.where(w * w > floor, wa / torch.where(w == 0, torch.ones_like(w), w), torch.nan),
            "commutator": torch.zeros_like(t),
            "asymmetry": torch.zeros_like(t),
            "loss": 0.5 * (p * p * w * w * ls - 2.0 * p * w * wa * ld + wa * wa * ls).sum(-1),
            "weight_norm": w.norm(dim=-1),
        }
        if "p" in self.layout:
            ww, pp = w * w, p * p / prm["alpha_p"][:, None]
            resid = ww - pp - torch.exp(-2.0 * prm["eta"] * t)[:, None] * prm["c"]
            # relative to ||c|| (the contract); on the parabola (c = 0) relative to the terms' size
            den = torch.where(prm["c_norm"] > 0, prm["c_norm"], ww.norm(dim=-1) + pp.norm(dim=-1))
            out["balance"] = resid.norm(dim=-1) / den
        return out
