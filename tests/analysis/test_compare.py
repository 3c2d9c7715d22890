"""analysis.compare: theory against measurement on one time axis (issue 11, Build 1).

Every check is against a closed form, an exact float64 construction or an independent implementation
(dynamics' own Theorem 1 residual and collapse verdicts, a brute-force sum over steps).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from stopgrad.analysis import (
    DatasetError,
    build_dataset,
    compare,
    flow_time,
    format_comparison,
    open_dataset,
    steps_to_flow_time,
    write_netcdf,
)
from stopgrad.cli import main
from stopgrad.dynamics import LinearModel, ModeInit, Simulation, Solver, simulate

U = 2.0**-53  # unit round-off of float64
ETA, BETA, ALPHA_P, SIGMA2 = 0.01, 0.5, 1.0, 0.5
# a surviving per-mode BYOL run: every p0 is far above the basin edge, so no mode nears the floor
P0 = (0.9, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3)
S0 = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15)


def _theory(t_end=20.0, n_save=41, n2=len(P0), p0=P0[: len(P0)], s0=S0, method="byol", on_parabola=False,
            solver=None, grid=None, **model):
    kw = dict(n1=16, n2=n2, method=method, beta=BETA if method == "byol" else None, alpha_p=ALPHA_P, eta=ETA,
              data={"kind": "isotropic", "sigma2": SIGMA2})
    kw.update(model)
    from stopgrad.dynamics import DataSpec

    kw["data"] = DataSpec(**kw["data"])
    sim = Simulation(model=LinearModel(**kw), engine="modes", t_end=t_end, n_save=n_save, backend="torch",
                     modes=ModeInit(p0=p0[:n2], s0=s0[:n2], on_parabola=on_parabola),
                     solver=solver or Solver(), grid=grid or {})
    return simulate(sim)


@pytest.fixture(scope="module")
def theory():
    return _theory(n_save=161)


def _measured_like(ds, lr, momentum=0.0, with_lr=True, **attrs):
    """A theory run relabelled as a measured one: time in steps t / lr_eff, lr and EMA momentum recorded
    along time, and the trainer's hyperparameter attributes mapped back from the flow ones."""
    d = ds.isel(run=0)
    lr_eff = lr / (1.0 - momentum)
    steps = d["time"].values / lr_eff
    assert np.array_equal(np.round(steps), steps), "choose lr so that the saved times are whole steps"
    ema = 1.0 - BETA * lr_eff
    extra = {"ema_momentum": (("time",), np.full(steps.size, ema))}
    if with_lr:
        extra["lr"] = (("time",), np.full(steps.size, lr))
    base = {"lr": lr, "weight_decay": ETA, "predictor_lr": ALPHA_P * lr, "predictor_weight_decay": ETA / ALPHA_P,
            "sgd_momentum": momentum, "ema_momentum": ema, "optimizer": "sgd"}
    base.update(attrs)
    data = {k: d[k].values for k in ("s", "p", "alignment", "commutator") if k in d}
    return build_dataset(data, time=steps, time_units="step", source="measured", method=d.attrs["method"],
                         config="[train]\n", extra_vars=extra, attrs=base)


def _with(ds, **arrays):
    out = ds.copy()
    for name, arr in arrays.items():
        out[name] = (ds[name].dims, arr)
    return out


# ------------------------------------------------------------------------------------------ (a) noise
def test_self_comparison_is_exact(theory):
    c = compare(theory, theory)
    for name in ("s_abs_error", "s_rel_error", "s_log_error", "p_abs_error", "p_rel_error"):
        assert np.all(c[name].values == 0.0), name
    assert np.all(c["spearman_s"].values == 1.0)
    assert c.attrs["source"] == "comparison" and c.attrs["differences_allowed"] == "none"
    np.testing.assert_array_equal(c["s_measured"].values, theory["s"].values[0])
    assert float(c["collapse_agreement"]) == 1.0
    np.testing.assert_array_equal(c["parabola_distance"].values, c["parabola_distance_predicted"].values)


def test_multiplicative_noise_is_reported_as_its_size(theory):
    eps = 0.05
    rng = np.random.default_rng(20261202)
    s, p = theory["s"].values, theory["p"].values
    zs, zp = rng.standard_normal(s.shape), rng.standard_normal(p.shape)
    noisy = _with(theory, s=s * (1.0 + eps * zs), p=p * (1.0 + eps * zp))
    c = compare(theory, noisy)
    s0, p0 = s[0], p[0]
    # precondition: no entry is under the floors, where the relative error is defined differently
    assert np.all(s0 > c.attrs["floor_s"]) and np.all(np.abs(p0) > c.attrs["floor_p"])
    # element by element the relative error is eps |z|, up to the rounding of s (1 + eps z) - s: at most
    # 3 roundings of size u (1 + eps |z|) and 3 of size u eps |z|, bounded by 8 u (1 + eps |z|)
    for name, z in (("s_rel_error", zs[0]), ("p_rel_error", zp[0])):
        got = c[name].values
        assert np.all(np.abs(got - eps * np.abs(z)) <= 8 * U * (1 + eps * np.abs(z))), name
    # two logs of O(|log s|) each within ~u |log s|, the rounding of s' (2 u), one subtraction
    logs = np.abs(np.log(s[0])) + np.abs(np.log(s[0] * (1 + eps * zs[0])))
    assert np.all(np.abs(c["s_log_error"].values - np.abs(np.log1p(eps * zs[0]))) <= 4 * U * (logs + 2))
    # in aggregate: E|z| = sqrt(2/pi), sd |z| = sqrt(1 - 2/pi); the mean of N draws is within 5 standard
    # errors of it (a 6e-7 chance to fail for a fresh draw; this seed is fixed, so the test is deterministic)
    rel = c["s_rel_error"].values
    n = rel.size
    mean_ratio = rel.mean() / eps
    se = math.sqrt((1 - 2 / math.pi) / n)
    assert abs(mean_ratio - math.sqrt(2 / math.pi)) <= 5 * se, (mean_ratio, se)
    # the median of |z| is Phi^-1(3/4) = 0.67449; its standard error 1 / (2 f(m) sqrt(N)), f = 2 phi(m)
    m = 0.6744897501960817
    f = 2 * math.exp(-m * m / 2) / math.sqrt(2 * math.pi)
    med_ratio = np.median(rel) / eps
    assert abs(med_ratio - m) <= 5 / (2 * f * math.sqrt(n)), med_ratio
    print(f"\nnoise eps={eps}, N={n}: mean(s_rel_error)/eps = {mean_ratio:.4f} (E|z| = {math.sqrt(2 / math.pi):.4f}, "
          f"SE {se:.4f}); median/eps = {med_ratio:.4f} (0.6745, SE {1 / (2 * f * math.sqrt(n)):.4f}); "
          f"p: mean/eps = {c['p_rel_error'].values.mean() / eps:.4f}")
    assert "s_j(t) relative error" in format_comparison(c)


def test_noisy_spectrum_lowers_spearman_only_where_ranks_swap():
    # per-mode runs keep each mode's identity; swapping two modes' values at one time is a known rank change
    ds = _theory(n2=4, t_end=2.0, n_save=5)
    s = ds["s"].values.copy()
    s[0, 2, [0, 1]] = s[0, 2, [1, 0]]  # swap modes 0 and 1 at time index 2
    c = compare(ds, _with(ds, s=s))
    rho = c["spearman_s"].values
    # no ties: rho = 1 - 6 sum d^2 / (k (k^2 - 1)), d the rank differences (the textbook form, not the
    # Pearson-of-ranks form the code uses)
    row = ds["s"].values[0, 2]
    assert len(set(row.tolist())) == row.size
    rank = np.argsort(np.argsort(row))
    d = rank - rank[[1, 0, 2, 3]]
    np.testing.assert_allclose(rho[2], 1 - 6 * (d**2).sum() / (4 * 15), rtol=0, atol=8 * U)
    assert rho[2] < 1
    assert np.all(rho[[0, 1, 3, 4]] == 1.0)


# -------------------------------------------------------------------------------------- (b) refusals
def _refusal(pred, meas, **kw) -> str:
    with pytest.raises(DatasetError) as exc:
        compare(pred, meas, **kw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_step_time_without_lr_is_refused(theory):
    meas = _measured_like(theory, lr=1 / 16, with_lr=False)
    msg = _refusal(theory, meas)
    assert "measured: time is in steps but no 'lr' is recorded" in msg


def test_mismatched_modes_are_refused_unless_allowed(theory):
    small = _theory(n2=5, n_save=161)
    msg = _refusal(theory, small)
    assert "mode counts differ: modes: predicted 8, measured 5" in msg
    c = compare(theory, small, allow_mismatch="modes")
    assert c.sizes["mode"] == 5 and "modes: predicted 8, measured 5" in c.attrs["differences_allowed"]
    # allowed, the common top modes are compared: a run against its own top 5 agrees exactly
    c = compare(theory, theory.isel(mode=slice(0, 5)), allow_mismatch="modes")
    assert c.sizes["mode"] == 5 and np.all(c["s_abs_error"].values == 0.0)


def test_mismatched_method_is_refused(theory):
    simsiam = _theory(method="simsiam", n_save=161)
    msg = _refusal(theory, simsiam)
    assert "methods differ: method: predicted 'byol', measured 'simsiam'" in msg


@pytest.mark.parametrize("key,value", [("eta", 0.02), ("beta", 0.25), ("alpha_p", 2.0), ("eta_p", 0.03)])
def test_mismatched_hyperparameter_is_refused_naming_both_values(theory, key, value):
    other = _theory(n_save=161, **{key: value})
    expected = {"eta": ETA, "beta": BETA, "alpha_p": ALPHA_P, "eta_p": ETA}[key]
    msg = _refusal(theory, other)
    assert f"{key}: predicted {expected:.10g}, measured {value:.10g}" in msg
    assert msg.count(":") >= 2 and "relative tolerance 1e-06" in msg
    allow = [key, "eta_p"] if key == "eta" else [key]  # the theory's eta_p follows its eta
    c = compare(theory, other, allow_mismatch=allow)
    assert key in c.attrs["allow_mismatch"].split(",")
    assert f"{key}: predicted" in c.attrs["differences_allowed"]
    assert compare(theory, other, allow_mismatch="hyperparameters").attrs["differences_allowed"] != "none"


def test_measured_hyperparameters_go_through_the_unit_mapping(theory):
    # a weight decay twice the theory's eta is an eta mismatch in flow units (PyTorch convention eta = wd)
    meas = _measured_like(theory, lr=1 / 16, momentum=0.5, weight_decay=2 * ETA, predictor_weight_decay=2 * ETA)
    msg = _refusal(theory, meas)
    assert "eta: predicted 0.01, measured 0.02" in msg and "eta_p: predicted 0.01, measured 0.02" in msg
    # an EMA momentum that is right for lr but ignores SGD momentum is a beta mismatch of factor 1 / (1 - mu)
    meas = _measured_like(theory, lr=1 / 16, momentum=0.5, ema_momentum=1 - BETA / 16)
    assert "beta: predicted 0.5, measured 0.25" in _refusal(theory, meas)


def test_bad_inputs_are_refused(theory):
    sweep = simulate(Simulation(model=LinearModel(n1=4, n2=2), engine="modes", t_end=1.0, n_save=3,
                                backend="torch", grid={"eta": [0.0, 0.1]}))
    assert "predicted: has 2 runs" in _refusal(sweep, theory)
    assert "allow_mismatch = 'gamma'" in _refusal(theory, theory, allow_mismatch="gamma")
    late = theory.assign_coords(time=theory["time"] + 1000.0)
    late["time"].attrs["units"] = "flow"
    assert "no common times" in _refusal(theory, late)
    c = compare(theory, theory)
    assert "source = 'comparison'" in _refusal(c, theory)


# --------------------------------------------------------------------------------- (c) the time axis
def test_step_axis_maps_onto_the_theory_times_exactly(theory):
    # lr = 2^-4 and momentum 1/2 make lr_eff = 1/8 and every time a whole number of steps: all exact in binary
    meas = _measured_like(theory, lr=1 / 16, momentum=0.5)
    np.testing.assert_array_equal(flow_time(meas), theory["time"].values)
    c = compare(theory, meas)
    assert c.attrs["measured_time_units"] == "step" and c.attrs["differences_allowed"] == "none"
    for key, val in (("eta", ETA), ("eta_p", ETA), ("alpha_p", ALPHA_P), ("beta", BETA)):
        assert c.attrs[f"measured_{key}"] == val
    assert np.all(c["s_abs_error"].values == 0.0) and np.all(c["p_abs_error"].values == 0.0)
    np.testing.assert_array_equal(c["step"].values, meas["time"].values)


def test_decimal_lr_and_momentum_map_within_round_off():
    lr, mu = 0.03, 0.9
    steps = np.arange(0, 5001, 50, dtype=float)
    t = steps_to_flow_time(steps, np.full(steps.size, lr), mu)
    exact = steps * lr / (1 - mu)
    # a cumulative sum of n equal terms plus 3 roundings in each term: relative error <= (n + 3) u
    assert np.all(np.abs(t - exact) <= (steps.size + 3) * U * exact)


def test_a_warm_up_schedule_is_summed_step_by_step():
    lr0, warm, every, total = 0.05, 200, 20, 1000
    per_step = lr0 * np.minimum(np.arange(total + 1) / warm, 1.0)  # linear warm-up from 0, then constant
    per_step[0] = lr0 / warm / 2  # any positive first rate: the sum below uses the same one
    brute = np.concatenate([[0.0], np.cumsum(per_step[:-1])])  # t(k) = sum of the rates of updates i < k
    steps = np.arange(0, total + 1, every)
    # records every 20 steps: the schedule is linear between records except in the first interval
    got = steps_to_flow_time(steps, per_step[steps], 0.0)
    first = every * per_step[0] + (per_step[every] - per_step[0]) * (every - 1) / 2
    brute_first_fixed = brute[steps] - brute[every] + first  # the first interval follows the interpolant
    brute_first_fixed[0] = 0.0
    # two sums of at most `total` positive terms: each within total * u relative of the exact sum
    np.testing.assert_allclose(got, brute_first_fixed, rtol=2 * total * U, atol=0)
    dense = steps_to_flow_time(np.arange(total + 1), per_step, 0.0)  # records at every step: exact sum
    np.testing.assert_allclose(dense, brute, rtol=2 * total * U, atol=0)


def test_a_dataset_recorded_by_the_training_probe(theory):
    """The real measured format: ``ssl_models.SpectralProbe`` records F-hat = Q diag(s) Q^T and
    W_p = Q diag(p) Q^T (a random rotation Q) of the theory run at step t / lr_eff, with the lr and EMA
    momentum a trainer passes, and the trainer's hyperparameter attributes; compare recovers the theory."""
    import torch

    from stopgrad.ssl_models import ProbeConfig, SpectralProbe

    s, p = theory["s"].values[0], theory["p"].values[0]
    assert np.any(np.diff(s, axis=-1) > 0), "this per-mode run's modes cross: the pairing must go by rank"
    lr, mu = 1 / 16, 0.5
    ema = 1 - BETA * lr / (1 - mu)
    n = s.shape[-1]
    Q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))[0]
    probe = SpectralProbe(ProbeConfig(every=1), steps_per_epoch=40, has_rule_fhat=True)
    z = torch.randn(8, n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for t, s_t, p_t in zip(theory["time"].values, s, p):
        F = Q @ torch.diag(torch.from_numpy(s_t)) @ Q.T
        Wp = Q @ torch.diag(torch.from_numpy(p_t)) @ Q.T
        probe.record(int(t * 8), {"z": z}, 4, fhat=F, Wp=Wp, lr=lr, ema_momentum=ema)
    attrs = {"lr": lr, "weight_decay": ETA, "predictor_lr": lr * ALPHA_P, "predictor_weight_decay": ETA,
             "sgd_momentum": mu, "optimizer": "sgd", "ema_momentum": ema, "ema_momentum_schedule": "constant"}
    meas = probe.to_dataset("byol", "[method]\nname = 'byol'\n", attrs)
    c = compare(theory, meas)
    assert c.attrs["measured_time_units"] == "step" and c.attrs["differences_allowed"] == "none"
    np.testing.assert_array_equal(c["time"].values, theory["time"].values)
    # the per-mode theory (fixed directions) meets a probe (ranked eigenvalues): paired by rank
    assert c.attrs["mode_order"] == "rank" and "[method]" in c.attrs["measured_config"]
    np.testing.assert_array_equal(c["epoch"].values, meas["epoch"].values)
    rank = np.argsort(-s, axis=-1, kind="stable")
    np.testing.assert_array_equal(c["s_predicted"].values, np.take_along_axis(s, rank, -1))
    np.testing.assert_array_equal(c["p_predicted"].values, np.take_along_axis(p, rank, -1))
    # Weyl: the eigenvalues move by at most the norm of the rounding of Q diag Q^T (<= n gamma_n max|d|,
    # gamma_n ~ n u) plus eigh's backward error (~ n u ||F||): 4 n^2 u max|d| bounds both
    assert c["s_abs_error"].max() <= 4 * n * n * U * np.abs(s).max()
    assert c["p_abs_error"].max() <= 4 * n * n * U * np.abs(p).max()
    assert float(c["collapse_agreement"]) == 1.0
    # paired by index instead, crossed modes are compared with the wrong partner
    assert compare(theory, meas, order="index")["s_rel_error"].max() > 0.1


def test_predicted_is_interpolated_onto_the_measured_times(theory):
    half = 0.5 * float(theory["time"].values[1] - theory["time"].values[0])
    shifted = theory.assign_coords(time=theory["time"] + half)
    shifted["time"].attrs["units"] = "flow"
    c = compare(theory, shifted)
    assert c.attrs["measured_times_dropped"] == 1  # the last shifted time lies past the predicted run
    s = theory["s"].values[0]
    # linear interpolation at the midpoints: (a + b) / 2, up to 2 roundings of max(|a|, |b|)
    mid = 0.5 * (s[:-1] + s[1:])
    assert np.all(np.abs(c["s_predicted"].values - mid) <= 2 * U * np.maximum(np.abs(s[:-1]), np.abs(s[1:])))
    np.testing.assert_array_equal(c["s_measured"].values, s[:-1])
    np.testing.assert_array_equal(c["time"].values, theory["time"].values[:-1] + half)


def test_sampled_sgd_against_its_theory():
    """Any two contract Datasets compare: finite-batch SGD (source "sampled", flow time t = lr * step)
    against the matrix flow of the same model; both rank their spectra, so modes pair by index."""
    from stopgrad.dynamics import SampledSpec

    model = LinearModel(n1=4, n2=2, eta=ETA)
    theory = simulate(Simulation(model=model, engine="matrix", t_end=0.2, n_save=21, backend="torch"))
    sampled = simulate(Simulation(model=model, engine="sampled", t_end=0.2, n_save=5,
                                  sampled=SampledSpec(lr=0.01, batch=16)))
    c = compare(theory, sampled)
    assert c.attrs["mode_order"] == "index" and c.attrs["measured_source"] == "sampled"
    assert c.attrs["differences_allowed"] == "none" and c.attrs["measured_times_dropped"] == 0
    # the sampled run's save times are nodes of the theory's grid: no interpolation there
    idx = np.searchsorted(theory["time"].values, sampled["time"].values)
    np.testing.assert_allclose(theory["time"].values[idx], sampled["time"].values, rtol=4 * U)
    np.testing.assert_allclose(c["s_predicted"].values, theory["s"].values[0, idx], rtol=8 * U, atol=0)
    np.testing.assert_array_equal(c["s_measured"].values, sampled["s"].values[0])
    assert np.all(np.isfinite(c["s_rel_error"].values)) and np.all(c["s_rel_error"].values[0] == 0.0)


# ---------------------------------------------------------------------------------- (d) Theorem 1
def test_parabola_distance_of_an_exact_construction_is_round_off():
    from stopgrad.analysis.comparison import parabola_distance

    t = np.linspace(0.0, 30.0, 61)
    p = 0.6 * (1 - np.exp(-t / 5.0))[:, None] + np.array([0.05, 0.2, 0.4])
    c = np.array([0.3, 0.05, 0.01])
    alpha_p, eta = 1.5, 0.07
    s = (p**2 + np.exp(-2 * eta * t)[:, None] * c) / alpha_p  # on Theorem 1's curve, in float64
    d = parabola_distance(t, s, p, alpha_p, eta)
    # numerator: a few roundings of the terms (each <= p^2 + c), denominator >= p^2 + c e^{-2 eta t} > 0
    # whose ratio to the numerator's scale is bounded by e^{2 eta T}: 16 u e^{2 eta T}
    assert np.all(d <= 16 * U * math.exp(2 * eta * t[-1]))
    assert np.all(parabola_distance(t, s * 1.01, p, alpha_p, eta)[1:] > 1e-4)  # off the curve: clearly not


def test_parabola_distance_of_a_theory_run_and_a_perturbed_one():
    run = _theory(n_save=81, t_end=40.0, solver=Solver(rtol=1e-10, atol=1e-12))
    c = compare(run, run)
    d = c["parabola_distance"].values
    # the same residual as dynamics' own Theorem 1 check (``balance``, relative to ||c||), rescaled: for
    # alpha_p = 1, sum_j over modes of (numerator_j)^2 = (balance ||c||)^2
    s, p = run["s"].values[0], run["p"].values[0]
    cj = ALPHA_P * s[0] - p[0] ** 2
    num = d * (ALPHA_P * s + p**2)
    np.testing.assert_allclose(np.sqrt((num**2).sum(-1)), run["balance"].values[0] * np.linalg.norm(cj),
                               rtol=1e-6, atol=64 * U * np.abs(ALPHA_P * s + p**2).max())
    # the flow conserves the invariant; DOP853's global error after n steps is at most about n * rtol
    nfev = int(run["nfev"].values[0])
    assert d.max() <= nfev * 1e-10, d.max()
    print(f"\nparabola distance of the exact run: max {d.max():.2e}, median {np.median(d):.2e} (nfev {nfev})")
    # perturbing s by (1 + delta) moves the distance to its closed form, up to the exact run's residual
    rng = np.random.default_rng(7)
    delta = 0.05 * rng.standard_normal(s.shape)
    pert = compare(run, _with(run, s=(s * (1 + delta))[None]))["parabola_distance"].values
    t = run["time"].values
    decay = np.exp(-2 * ETA * t)[:, None]
    closed = np.abs(ALPHA_P * (s * delta - decay * s[0] * delta[0])) / (ALPHA_P * s * (1 + delta) + p**2)
    assert np.all(np.abs(pert - closed) <= 2 * d.max() + 64 * U)
    assert np.median(pert[1:]) > 1e3 * d.max()


# ---------------------------------------------------------------------------------- Theorem 3
def test_alignment_and_commutator_crossings(theory):
    t = theory["time"].values
    tau = np.linspace(0.5, 4.0, 8)
    align = 1 - np.exp(-t[:, None] / tau)
    align[:, -1] = 0.5  # one mode never aligns
    comm = np.exp(-t / 2.0)
    meas = _with(theory, alignment=align[None], commutator=comm[None])
    c = compare(theory, meas)
    dt = t[1] - t[0]
    first = lambda level: t[int(np.ceil(level / dt))]  # noqa: E731  first grid time past a level
    expect = np.array([first(x * math.log(10)) for x in tau])  # 1 - e^{-t/tau} > 0.9 iff t > tau ln 10
    expect[-1] = np.nan
    np.testing.assert_array_equal(c["alignment_cross_time"].values, expect)
    assert float(c["commutator_cross_time"]) == first(2 * math.log(10))
    # the per-mode theory is aligned from the start and its commutator is 0: crossed at t = 0
    assert float(c["commutator_cross_time_predicted"]) == 0.0
    c2 = compare(theory, meas, align_threshold=0.99, commutator_fraction=0.01)
    assert c2.attrs["align_threshold"] == 0.99 and float(c2["commutator_cross_time"]) == first(2 * math.log(100))
    table = format_comparison(c)
    assert "alignment > 0.9 (measured), top 8" in table and "7/8" in table


# ---------------------------------------------------------------------------------- (e) collapse
def _edge(eta, tau=1.0, sigma2=SIGMA2):
    """The basin edge p*_- on the parabola (theory.md §3.4)."""
    return (tau - math.sqrt(tau * tau - 4 * eta * (1 + sigma2))) / (2 * (1 + sigma2))


def test_collapse_confusion_on_a_per_mode_run():
    eta = 0.05
    edge = _edge(eta)  # 0.05445
    p_pred = (0.6, 0.3, 0.1, 0.05, 0.02)
    p_meas = (0.6, 0.3, 0.1, 0.08, 0.02)  # the fourth mode starts above the edge in the "measured" run
    kw = dict(method="simsiam", eta=eta, n2=5, on_parabola=True, t_end=400.0, n_save=201, s0=(1.0,) * 5)
    pred, meas = _theory(p0=p_pred, **kw), _theory(p0=p_meas, **kw)
    c = compare(pred, meas)
    dies_p = np.array([p < edge for p in p_pred], dtype=np.int8)  # closed-form verdicts (SimSiam: tau = 1)
    dies_m = np.array([p < edge for p in p_meas], dtype=np.int8)
    np.testing.assert_array_equal(c["collapse_predicted"].values, dies_p)
    np.testing.assert_array_equal(c["collapse_measured"].values, dies_m)
    # the dynamics' own verdict counts the same survivors
    assert int(pred["n_alive"].values[0]) == int((dies_p == 0).sum())
    conf = c["confusion"]
    assert list(conf["predicted"].values) == ["survives", "dies"] and conf.dims == ("predicted", "measured")
    np.testing.assert_array_equal(conf.values, [[3, 0], [1, 1]])
    assert float(c["collapse_agreement"]) == 0.8
    # a mode dead in both runs (under the floor) agrees: no relative or log error from round-off
    assert c["s_measured"].values[-1, 4] < c.attrs["floor_s"] and c["s_predicted"].values[-1, 4] < c.attrs["floor_s"]
    assert c["s_rel_error"].values[-1, 4] == 0.0 and c["s_log_error"].values[-1, 4] == 0.0
    assert "80.0 %" in format_comparison(c)
    # the rule is s_j(T) < collapse_tol * max s(0): a tolerance just above a surviving mode's ratio kills it
    s = pred["s"].values[0]
    ratio = s[-1, 2] / np.abs(s[0]).max()
    assert compare(pred, meas, collapse_tol=ratio * 0.999)["collapse_predicted"].values[2] == 0
    assert compare(pred, meas, collapse_tol=ratio * 1.001)["collapse_predicted"].values[2] == 1
    # a per-mode verdict variable, where a Dataset carries one, is used instead of the s rule
    marked = meas.isel(run=0).assign(alive=("mode", np.array([1, 1, 1, 0, 0])))
    np.testing.assert_array_equal(compare(pred, marked)["confusion"].values, [[3, 0], [0, 2]])


# ---------------------------------------------------------------------------------- (f) the verb
def test_compare_verb_end_to_end(tmp_path, capsys, theory):
    pred, meas = tmp_path / "theory.nc", tmp_path / "measured.nc"
    write_netcdf(theory, pred)
    write_netcdf(_measured_like(theory, lr=1 / 16, momentum=0.5), meas)
    out = tmp_path / "cmp" / "c.nc"
    assert main(["compare", str(pred), str(meas), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for row in ("s_j(t) relative error", "p_j(t) relative error", "log error", "Spearman", "parabola distance",
                "alignment >", "commutator", "collapse agreement"):
        assert row in printed, row
    assert f"wrote {out}" in printed
    c = open_dataset(out, require=("s_rel_error", "s_predicted", "s_measured", "p_predicted", "p_measured"))
    assert c.attrs["source"] == "comparison" and c["time"].attrs["units"] == "flow"
    np.testing.assert_array_equal(c["time"].values, theory["time"].values)
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind

    other = tmp_path / "eta.nc"
    write_netcdf(_theory(n_save=161, eta=0.02), other)
    assert main(["compare", str(pred), str(other), "--out", str(tmp_path / "no.nc")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("stopgrad: error: hyperparameters differ")
    assert "eta: predicted 0.01, measured 0.02" in err and not (tmp_path / "no.nc").exists()
    assert main(["compare", str(pred), str(other), "--allow-mismatch", "eta,eta_p"]) == 0
    assert "allowed differences: eta: predicted 0.01, measured 0.02" in capsys.readouterr().out
    # a sweep file: one run at a time
    sweep = tmp_path / "sweep.nc"
    write_netcdf(_theory(n_save=161, grid={"eta": [0.02, ETA]}), sweep)
    assert main(["compare", str(pred), str(sweep)]) == 2
    assert "measured: has 2 runs" in capsys.readouterr().err
    assert main(["compare", str(pred), str(sweep), "--measured-run", "1", "--order", "index"]) == 0
    assert "collapse agreement" in capsys.readouterr().out
    assert main(["compare", str(pred), str(sweep), "--measured-run", "2"]) == 2
    assert "--measured-run = 2: the file has 2 runs" in capsys.readouterr().err
