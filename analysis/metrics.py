"""Collapse and representation-quality metrics (reference/methods.md §7).

Every function takes an embedding matrix ``z`` of shape (N, d) as a torch tensor or a numpy array.
Torch in, torch out (a 0-dim tensor on the input's device, so a training loop does not synchronise);
numpy in, Python float out. Spectral work is done in float64 whatever the input dtype, because the
small eigenvalues are what these metrics are about.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "alpha_req",
    "align_loss",
    "effective_rank",
    "embedding_spectrum",
    "entropy_rank",
    "rankme",
    "std_of_l2_normalized",
    "uniformity",
]


def _as_tensor(z) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_numpy)``; checks the (N, d) shape."""
    was_numpy = not isinstance(z, torch.Tensor)
    t = torch.as_tensor(np.asarray(z)) if was_numpy else z
    if t.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, d); got shape {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings; got N = {t.shape[0]}")
    return t, was_numpy


def _out(value: torch.Tensor, was_numpy: bool):
    return float(value) if was_numpy else value


def std_of_l2_normalized(z):
    """Mean over channels of the per-channel std of ``z / ||z||`` (SimSiam §4.1).

    0 for complete collapse; ~1/sqrt(d) for isotropic Gaussian z. Uses the unbiased std, as
    lightly's ``std_of_l2_normalized`` does.
    """
    t, np_in = _as_tensor(z)
    zn = torch.nn.functional.normalize(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t, dim=1)
    return _out(zn.std(dim=0, unbiased=True).mean(), np_in)


def entropy_rank(values: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """exp(Shannon entropy) of the distribution ``values / sum(values)`` (+ eps), 0 log 0 = 0.

    ``values`` are non-negative spectra of shape (..., k); returns shape (...).
    """
    v = values.clamp(min=0)
    total = v.sum(dim=-1, keepdim=True)
    p = v / torch.where(total > 0, total, torch.ones_like(total)) + eps
    h = -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(dim=-1)
    return torch.exp(h)


def effective_rank(z, kind: str = "singular"):
    """Roy & Vetterli effective rank, exp(H(p)).

    kind="singular": p_k = sigma_k / sum(sigma) over the singular values of the raw z (Roy-Vetterli).
    kind="covariance": p_k = lambda_k / sum(lambda) over the eigenvalues of the covariance of the
    centred z, i.e. squared singular values of the centred matrix (reptrix's variant). The two give
    different numbers; both lie in [1, rank].
    """
    t, np_in = _as_tensor(z)
    t = t.double()
    if kind == "singular":
        vals = torch.linalg.svdvals(t)
    elif kind == "covariance":
        vals = torch.linalg.svdvals(t - t.mean(dim=0, keepdim=True)) ** 2
    else:
        raise ValueError(f"kind = {kind!r}: must be 'singular' or 'covariance'")
    if not bool(vals.sum() > 0):
        return _out(torch.zeros((), dtype=t.dtype, device=t.device), np_in)
    return _out(entropy_rank(vals), np_in)


def rankme(z, eps: float = 1e-7):
    """RankMe (Garrido et al. 2023): exp(-sum p log p), p_k = sigma_k/||sigma||_1 + eps, raw z, no centring."""
    t, np_in = _as_tensor(z)
    vals = torch.linalg.svdvals(t.double())
    return _out(entropy_rank(vals, eps=eps), np_in)


def embedding_spectrum(z, normalize: bool = True):
    """Eigenvalues (descending) of the covariance of the (optionally L2-normalised) embeddings.

    Jing et al. 2022 (DirectCLR ``spectrum.py``): C = cov(z^T) with the 1/(N-1) convention.
    Returns shape (d,).
    """
    t, np_in = _as_tensor(z)
    t = t.double()
    if normalize:
        t = torch.nn.functional.normalize(t, dim=1)
    d = t.shape[1]
    c = torch.cov(t.T).reshape(d, d)  # torch.cov returns a 0-d tensor for one channel (d = 1)
    ev = torch.linalg.eigvalsh(c).flip(-1).clamp(min=0)
    return ev.cpu().numpy() if np_in else ev


def alpha_req(z, fit_range: tuple[int, int] | None = None):
    """alpha-ReQ: power-law decay coefficient of the covariance eigenspectrum, lambda_i ~ i^-alpha.

    Weighted least squares of log(lambda_i) on log(i) with weights 1/i (as arnab39/reptrix), over the
    1-based ranks ``fit_range = (first, last)`` inclusive (default: all ranks with lambda > 0).
    Returns alpha (>0 for a decaying spectrum).
    """
    t, np_in = _as_tensor(z)
    ev = embedding_spectrum(t, normalize=False)
    d = ev.shape[0]
    lo, hi = fit_range if fit_range is not None else (1, d)
    if not 1 <= lo < hi <= d:
        raise ValueError(f"fit_range = {fit_range}: need 1 <= first < last <= d = {d}")
    ranks = torch.arange(lo, hi + 1, dtype=torch.float64, device=ev.device)
    lam = ev[lo - 1 : hi]
    keep = lam > 0
    if int(keep.sum()) < 2:
        raise ValueError("alpha_req needs at least two positive eigenvalues in fit_range")
    x, y, w = torch.log(ranks[keep]), torch.log(lam[keep]), 1.0 / ranks[keep]
    xm, ym = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    slope = (w * (x - xm) * (y - ym)).sum() / (w * (x - xm) ** 2).sum()
    return _out(-slope, np_in)


def align_loss(z1, z2, alpha: float = 2.0):
    """Wang & Isola alignment E ||f(x) - f(y)||^alpha over positive pairs, on L2-normalised rows."""
    a, np_in = _as_tensor(z1)
    b, _ = _as_tensor(z2)
    if a.shape != b.shape:
        raise ValueError(f"positive pairs need equal shapes; got {tuple(a.shape)} and {tuple(b.shape)}")
    a = torch.nn.functional.normalize(a.double(), dim=1)
    b = torch.nn.functional.normalize(b.double(), dim=1)
    return _out((a - b).norm(dim=1).pow(alpha).mean(), np_in)


def uniformity(z, t: float = 2.0):
    """Wang & Isola uniformity log E exp(-t ||f(x) - f(y)||^2) over pairs i < j of L2-normalised rows.

    Lies in [-4t, 0]; computed with a log-sum-exp so it does not underflow for large t.
    """
    x, np_in = _as_tensor(z)
    x = torch.nn.functional.normalize(x.double(), dim=1)
    d2 = torch.pdist(x, p=2).pow(2)
    val = torch.logsumexp(-t * d2, dim=0) - math.log(d2.numel())
    return _out(val, np_in)
