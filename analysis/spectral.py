"""Spectral quantities of a feature correlation F and a linear predictor W_p (design data contract).

One function serves the theory (F = W X W^T from an integrated flow) and measured runs (F-hat of a
network's projector outputs), so both worlds are measured with the same instrument.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["eigh_descending", "spectral_quantities", "symmetric_part_norms"]

# Modes with s_j <= TAU_FLOOR * max(s) have no well-defined eigenvector (collapsed or degenerate);
# p, alignment and tau are reported as NaN there rather than as round-off noise.
TAU_FLOOR = 1e-12


def eigh_descending(F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of symmetric F (..., n, n), eigenvalues sorted descending.

    Returns ``(s, U)`` with s (..., n) and U (..., n, n), column j the eigenvector of s_j. On the CPU
    this calls numpy's batched LAPACK driver, which is about 2x faster than torch's for small matrices.
    """
    F = 0.5 * (F + F.mT)
    # a matrix with a NaN or inf (a failed run) gets NaN results instead of stopping LAPACK
    bad = ~torch.isfinite(F).all(dim=-1).all(dim=-1)
    if bool(bad.any()):
        F = torch.where(bad[..., None, None], torch.zeros_like(F), F)
    if F.device.type == "cpu" and F.dtype == torch.float64:
        s, U = np.linalg.eigh(F.numpy())
        s, U = torch.from_numpy(s), torch.from_numpy(U)
    else:
        s, U = torch.linalg.eigh(F)
    if bool(bad.any()):
        s = torch.where(bad[..., None], torch.nan, s)
        U = torch.where(bad[..., None, None], torch.nan, U)
    return s.flip(-1), U.flip(-1)


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def spectral_quantities(
    F: torch.Tensor, Wp: torch.Tensor | None = None, Fa: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Contract quantities from F (..., n, n), optional predictor Wp (..., n, n) and cross-correlation Fa.

    Returns a dict with
      s          (..., n)  eigenvalues of F, descending
      p          (..., n)  u_j^T W_p u_j
      alignment  (..., n)  cos(W_p u_j, u_j)  (0 where W_p u_j = 0)
      (p and alignment are NaN for collapsed modes, s_j <= 1e-12 max(s): their eigenvectors are an
      arbitrary basis of the null space, so the numbers would be noise)
      commutator (...)     ||[F, W_p]||_F / (||F||_F ||W_p||_F)  (0 where a norm is 0)
      asymmetry  (...)     ||W_p - W_p^T||_F / ||W_p||_F
      tau        (..., n)  u_j^T F_a u_j / s_j with F_a = W X W_a^T (NaN for collapsed modes)
    The predictor entries are present only when Wp is given, tau only when Fa is given.
    """
    s, U = eigh_descending(F)
    out = {"s": s}
    alive = s > TAU_FLOOR * s.abs().amax(dim=-1, keepdim=True)
    if Wp is not None:
        WpU = Wp @ U
        p = (U * WpU).sum(dim=-2)
        out["p"] = torch.where(alive, p, torch.nan)
        out["alignment"] = torch.where(alive, _safe_ratio(p, WpU.norm(dim=-2)), torch.nan)
        comm = F @ Wp - Wp @ F
        out["commutator"] = _safe_ratio(
            torch.linalg.matrix_norm(comm), torch.linalg.matrix_norm(F) * torch.linalg.matrix_norm(Wp)
        )
        out["asymmetry"] = _safe_ratio(torch.linalg.matrix_norm(Wp - Wp.mT), torch.linalg.matrix_norm(Wp))
    if Fa is not None:
        fa = (U * (Fa @ U)).sum(dim=-2)
        out["tau"] = torch.where(alive, fa / torch.where(alive, s, torch.ones_like(s)), torch.nan)
    return out


def symmetric_part_norms(Wp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frobenius norms of the symmetric part A = (W_p + W_p^T)/2 and antisymmetric part B (Fig. 8)."""
    return (
        torch.linalg.matrix_norm(0.5 * (Wp + Wp.mT)),
        torch.linalg.matrix_norm(0.5 * (Wp - Wp.mT)),
    )
