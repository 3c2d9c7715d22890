"""Properties of the predictor rules W_p = phi(F-hat): DirectPred, DirectCopy, DirectSet(alpha), and the
running correlation F-hat they read.

Tolerances. ``eigh`` of a symmetric F is backward stable: the computed decomposition is exact for some
F + E with ||E|| <= c n u ||F|| (Higham, Ch. 10). A spectral rule p = f(s / s_max) then moves by at most
L ||E|| / s_max, L the Lipschitz constant of f on the spectrum: 1 for DirectCopy, and
1 / (2 sqrt(s_min / s_max)) for DirectPred's square root (s_min the smallest non-zero eigenvalue; the
strategies bound s_max / s_min by MAX_CONDITION, and exact zeros stay below the rule's 1e-12 round-off
cut). The reconstruction U diag(p) U^T adds n u max|p|.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from stopgrad.dynamics import CorrelationEMA, directcopy, directpred, directset
from stopgrad.testing import strategies as sgst

EPS = float(np.finfo(np.float64).eps)
SAFETY = 16.0
f64 = torch.float64
EPS_RULE = st.floats(1e-4, 0.5)  # eps >= the rules' floor (1e-4), so the floor is never what binds
POWER = st.floats(0.25, 2.0)


def T(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=f64)


def rule_tol(n: int, power: float) -> float:
    """Bound on |phi(F) - exact| for a normalised rule with p = (s/s_max)^power + eps (see module doc)."""
    kappa = 1.0 / sgst.MAX_CONDITION
    lipschitz = max(1.0, power * max(1.0, kappa ** (power - 1.0)))  # slope of x^power on [kappa, 1]
    return SAFETY * n * EPS * (lipschitz + 2.0)


RULES = st.sampled_from(["directpred", "directcopy", "directset"])


def build(name: str, eps: float, power: float, normalize: bool = True):
    if name == "directpred":
        return directpred(eps, normalize=normalize), 0.5
    if name == "directcopy":
        return directcopy(eps, normalize=normalize), 1.0
    return directset(power, eps, normalize=normalize), power


@given(sgst.psd_matrices(max_n=7), RULES, EPS_RULE, POWER)
def test_rules_give_a_symmetric_psd_predictor_with_eigenvalues_in_eps_one_plus_eps(F, name, eps, power):
    """On a PSD F every normalised rule gives p_j = (s_j/s_max)^alpha + eps with s_j/s_max in [0, 1]:
    W_p is symmetric with eigenvalues in [eps, 1 + eps] (DirectPred Eq. 18, DirectCopy), hence PSD."""
    rule, pw = build(name, eps, power)
    Wp = rule(T(F))
    n = F.shape[0]
    tol = rule_tol(n, pw)
    assert torch.allclose(Wp, Wp.T, rtol=0, atol=tol)
    ev = torch.linalg.eigvalsh(0.5 * (Wp + Wp.T))
    assert float(ev.min()) >= eps - tol and float(ev.max()) <= 1 + eps + tol


@given(sgst.psd_matrices(max_n=7), st.data(), RULES, EPS_RULE, POWER)
def test_rules_are_orthogonally_equivariant(F, data, name, eps, power):
    """phi(Q F Q^T) = Q phi(F) Q^T for orthogonal Q: a spectral rule acts on eigenvalues only, and Q maps
    the eigenvectors of F onto those of Q F Q^T (DirectCopy, F/lambda_max + eps I, is equivariant by
    construction)."""
    n = F.shape[0]
    Q = T(data.draw(sgst.orthogonal_matrices(n=n)))
    rule, pw = build(name, eps, power)
    left = rule(Q @ T(F) @ Q.T)
    right = Q @ rule(T(F)) @ Q.T
    assert torch.allclose(left, right, rtol=0, atol=4 * rule_tol(n, pw) * (1 + eps))


@given(sgst.psd_matrices(max_n=7, min_rank=1), sgst.scales(), RULES, EPS_RULE, POWER)
def test_normalised_rules_are_scale_free_and_raw_rules_scale_as_a_power(F, c, name, eps, power):
    """Normalised rules read s / s_max, so phi(c F) = phi(F) for c > 0. The raw forms (normalize=False)
    p = s^alpha + eps scale as phi(c F) - eps I = c^alpha (phi(F) - eps I)."""
    n = F.shape[0]
    rule, pw = build(name, eps, power)
    tol = rule_tol(n, pw)
    assert torch.allclose(rule(T(c * F)), rule(T(F)), rtol=0, atol=2 * tol)
    raw, pw = build(name, eps, power, normalize=False)
    I = torch.eye(n, dtype=f64)
    a = raw(T(c * F)) - eps * I
    b = c**pw * (raw(T(F)) - eps * I)
    s_max = float(np.linalg.eigvalsh(F).max())
    # b subtracts eps from s^alpha + eps (an error of u (s^alpha + eps)) and then multiplies by c^alpha
    scale = max(1.0, (c * s_max) ** pw) + c**pw * eps
    assert torch.allclose(a, b, rtol=0, atol=4 * tol * scale)


@given(sgst.psd_matrices(max_n=7), RULES, EPS_RULE, POWER)
def test_rules_commute_with_f_and_apply_phi_to_its_eigenvalues(F, name, eps, power):
    """phi(F) = U diag(phi(s)) U^T shares F's eigenvectors: [phi(F), F] = 0, and the eigenvalues of phi(F)
    are phi applied to those of F (rule.phi, the per-mode engine's entry point)."""
    n = F.shape[0]
    rule, pw = build(name, eps, power)
    Ft = T(F)
    Wp = rule(Ft)
    s_max = max(float(np.abs(F).max()), 1e-300)
    tol = rule_tol(n, pw)
    comm = Wp @ Ft - Ft @ Wp
    assert float(comm.abs().max()) <= 4 * tol * s_max * (1 + eps)
    s = torch.linalg.eigvalsh(Ft)
    expected = torch.sort(rule.phi(s.unsqueeze(0))[0]).values
    got = torch.linalg.eigvalsh(0.5 * (Wp + Wp.T))
    assert torch.allclose(got, expected, rtol=0, atol=4 * tol * (1 + eps))


@given(sgst.psd_matrices(max_n=7), EPS_RULE)
def test_directcopy_is_directset_with_power_one(F, eps):
    """DirectCopy's W_p = F / lambda_max + eps I is DirectSet(1) with no floor on a PSD F (its docstring),
    although one uses no eigendecomposition and the other does."""
    a = directcopy(eps)(T(F))
    b = directset(1.0, eps, floor=0.0)(T(F))
    assert torch.allclose(a, b, rtol=0, atol=4 * rule_tol(F.shape[0], 1.0) * (1 + eps))


@given(sgst.spiked_covariances(return_spikes=True), EPS_RULE)
def test_directpred_on_a_spiked_covariance(spiked, eps):
    """For C = sigma^2 I + sum_k theta_k v_k v_k^T the eigenvalues are sigma^2 + theta_k (along v_k) and
    sigma^2 (elsewhere); DirectPred gives sqrt((sigma^2 + theta_k) / (sigma^2 + theta_1)) + eps along v_k
    and sqrt(sigma^2 / (sigma^2 + theta_1)) + eps on the complement, in closed form."""
    C, theta, V, noise = spiked
    n = C.shape[0]
    top = noise + (theta[0] if theta.size else 0.0)
    P = np.eye(n) - V @ V.T
    expected = (V * (np.sqrt((noise + theta) / top) + eps)) @ V.T + (math.sqrt(noise / top) + eps) * P
    got = directpred(eps)(T(C)).numpy()
    cond = top / noise  # the spread of C's spectrum: up to 1e2 / 1e-3 here
    tol = SAFETY * n * EPS * (2.0 + 0.5 * math.sqrt(cond))
    assert np.abs(got - expected).max() <= 4 * tol * (1 + eps)


@given(st.lists(sgst.psd_matrices(n=4), min_size=1, max_size=6), st.one_of(st.none(), st.floats(0.0, 0.99)))
def test_correlation_ema_is_a_convex_combination_and_stays_psd(batches, rho):
    """F-hat starts at the first batch and then F <- rho F + (1 - rho) B_t (or the running mean when rho
    is None): a convex combination of the batches with weights rho^(k-1), (1-rho) rho^(k-1-t) (or 1/k),
    so it is PSD when they are."""
    ema = CorrelationEMA(rho)
    for B in batches:
        F = ema.update_correlation(T(B))
    k = len(batches)
    if rho is None:
        weights = [1.0 / k] * k
    else:
        weights = [rho ** (k - 1)] + [(1 - rho) * rho ** (k - 1 - t) for t in range(1, k)]
    expected = sum(w * B for w, B in zip(weights, batches))
    scale = max(float(np.abs(B).max()) for B in batches)
    assert np.abs(F.numpy() - expected).max() <= 8 * k * EPS * scale
    assert abs(sum(weights) - 1.0) <= 4 * k * EPS
    assert float(torch.linalg.eigvalsh(F).min()) >= -8 * k * 4 * EPS * scale
