"""The public strategies keep their documented contracts (users rely on them in their own tests)."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from stopgrad.analysis import validate_dataset
from stopgrad.testing import strategies as sgst

EPS = float(np.finfo(np.float64).eps)


@given(sgst.embeddings())
def test_embeddings_are_finite_float64_batches_with_non_degenerate_rows(z):
    """(n, d) float64, finite, every row of norm >= MIN_ROW_NORM (so cosines are defined)."""
    assert z.dtype == np.float64 and z.ndim == 2 and z.shape[0] >= 2
    assert np.isfinite(z).all()
    assert (np.linalg.norm(z, axis=1) >= sgst.MIN_ROW_NORM).all()


@given(sgst.psd_matrices(return_eig=True))
def test_psd_matrices_are_exactly_symmetric_with_the_stated_spectrum(fe):
    """F = F^T bit for bit, and its eigenvalues are the returned ones (non-negative) to round-off."""
    F, lam, U = fe
    n = F.shape[0]
    assert np.array_equal(F, F.T) and (lam >= 0).all()
    ev = np.sort(np.linalg.eigvalsh(F))
    assert np.abs(ev - np.sort(lam)).max() <= 16 * n * EPS * max(float(lam.max()), 1e-300)


@given(sgst.orthogonal_matrices())
def test_orthogonal_matrices_are_orthogonal(Q):
    """Q^T Q = I to n u."""
    n = Q.shape[0]
    assert np.abs(Q.T @ Q - np.eye(n)).max() <= 16 * n * EPS


@given(sgst.spiked_covariances(return_spikes=True))
def test_spiked_covariances_have_eigenvalues_noise_plus_spikes(c):
    """The eigenvalues of sigma^2 I + sum theta_k v_k v_k^T are sigma^2 + theta_k and sigma^2 (n - k times)."""
    C, theta, V, noise = c
    n = C.shape[0]
    expected = np.sort(np.concatenate([noise + theta, np.full(n - theta.size, noise)]))
    assert np.abs(np.sort(np.linalg.eigvalsh(C)) - expected).max() <= 16 * n * EPS * float(expected.max())


@given(sgst.contract_datasets())
def test_contract_datasets_pass_validation(ds):
    """build_dataset's output satisfies the data contract (validate_dataset raises nothing)."""
    validate_dataset(ds)
    assert ds.attrs["source"] in ("theory", "sampled", "measured")


def test_without_hypothesis_the_import_fails_with_the_install_hint():
    """Hypothesis is an optional dependency of stopgrad.testing only: importing stopgrad and its
    packages never needs it, and importing stopgrad.testing without it says how to install it."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import stopgrad, stopgrad.dynamics, stopgrad.analysis, stopgrad.cli\n"
            "try:\n    import stopgrad.testing\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'stopgrad[testing]'" in out.stdout
