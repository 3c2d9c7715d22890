"""The theory's data moments X and X' estimated from augmented views (reference/theory.md §1.1).

With ``K`` independent augmented views ``x_{i,1..K}`` of each of ``M`` images,

    x̄_i      = (1/K) Σ_k x_{i,k}                                  (sample view mean)
    X'_hat   = (1/M) Σ_i  1/(K-1) Σ_k (x_{i,k} - x̄_i)(x_{i,k} - x̄_i)^T   (augmentation covariance)
    X_hat    = (1/M) Σ_i x̄_i x̄_i^T  -  X'_hat / K                   (data correlation of the view means)

Both are unbiased for the image pool: E[x̄_i x̄_i^T] = x̄(x_i) x̄(x_i)^T + Var(x'|x_i)/K, hence the
``X'_hat / K`` correction. ``X_hat + X'_hat`` is then the second moment of one view, E[x1 x1^T], and
``X_hat`` the cross moment of two views, E[x1 x2^T].
"""

from __future__ import annotations

import numpy as np

__all__ = ["augmentation_moments", "moments_standard_error", "psd_part"]


def augmentation_moments(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased (X, X') from ``views`` of shape (M, K, n) (M images, K >= 2 views each, n features).

    Returns:
        X, X_prime: float64 (n, n) symmetric matrices (X may have tiny negative eigenvalues from the
        finite-sample correction; they are kept, not clipped, so that the estimator stays unbiased).
    """
    v = np.asarray(views, dtype=np.float64)
    if v.ndim != 3 or v.shape[1] < 2:
        raise ValueError(f"views must have shape (M, K >= 2, n); got {v.shape}")
    m, k, _ = v.shape
    mean = v.mean(axis=1)  # (M, n)
    dev = v - mean[:, None, :]
    x_prime = np.einsum("mki,mkj->ij", dev, dev) / (m * (k - 1))
    x = mean.T @ mean / m - x_prime / k
    return 0.5 * (x + x.T), 0.5 * (x_prime + x_prime.T)


def moments_standard_error(views: np.ndarray, n_split: int = 8) -> tuple[float, float]:
    """Relative standard errors (Frobenius) of the (X, X') estimates, from ``n_split`` disjoint image splits.

    Returns:
        (se_X, se_X_prime): ||std of the split estimates||_F / sqrt(n_split) / ||full estimate||_F.
    """
    v = np.asarray(views, dtype=np.float64)
    parts = [augmentation_moments(p) for p in np.array_split(v, n_split, axis=0)]
    full = augmentation_moments(v)
    out = []
    for j in range(2):
        stack = np.stack([p[j] for p in parts])
        se = np.linalg.norm(stack.std(axis=0, ddof=1)) / np.sqrt(n_split)
        out.append(float(se / np.linalg.norm(full[j])))
    return out[0], out[1]


def psd_part(A: np.ndarray) -> tuple[np.ndarray, float]:
    """The nearest PSD matrix (negative eigenvalues set to 0) and the relative Frobenius mass removed.

    The unbiased estimate of X (a difference of two moment estimates) has small negative eigenvalues from
    sampling error; the theory needs X PSD, and the measurement F = W X W^T uses the same matrix."""
    lam, V = np.linalg.eigh(0.5 * (A + A.T))
    neg = np.minimum(lam, 0.0)
    P = (V * np.maximum(lam, 0.0)) @ V.T
    return 0.5 * (P + P.T), float(np.linalg.norm(neg) / max(np.linalg.norm(lam), 1e-300))
