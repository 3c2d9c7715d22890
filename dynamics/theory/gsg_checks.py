"""``stopgrad check`` statements about GSG (docs/gsg_theory.md), registered into theorems.CHECKS
(theorems imports this module; it imports nothing of theorems).

Each returns a CheckResult (theory.check_result) with its residual and tolerance:

* gsg_selection_bias: E[min of two i.i.d. N(0, s^2)] = -s/sqrt(pi) (sympy), and the chosen view's mean
  noise in the sampled GSG rule equals -sigma/sqrt(pi) n_ab (Monte Carlo; tolerance 5 standard errors
  plus the O((sigma/||W delta||)^2) linearisation, bounded by the stated 2 (sigma/||W delta||)^2).
* gsg_symbolic: the scalar model's expected gradient from the noise moments equals the matrix formula
  (sympy simplifies the difference to 0).
* gsg_repulsion_sign: the no-predictor repulsion term never decreases Phi(W) = E||W^T W delta||:
  <grad Phi, W W^T W S> >= 0 at random W (an identity: a sum of two traces of PSD products), round-off.
* gsg_two_point_rate: two points, no predictor: the integrated flow's growth rate of ||W delta|| equals
  sigma ||delta|| (1 - 1/B) / (2 sqrt(pi)) - sigma^2 - eta (dop853 at rtol 1e-10: 1e-7 absolute).
* gsg_flow_vs_sampled: the sampled four-view SGD (l2 loss) approaches the mean path of the expected
  update as batch^(-1/2): fitted exponent (batch 16..1024) within 0.15 of -1/2 (16 seeds per batch
  size); the floor left by the linearised selection is fitted and reported.
* contrastive_pca: linear SimCLR on spiked-covariance data learns the top principal subspace: captured
  fraction >= 0.9 (the spikes' gap leaves the next direction at a variance ratio of 3/5).
* contrastive_pca_moco: the same for linear MoCo (InfoNCE, queue 256, momentum encoder 0.99), same data,
  same tolerance, 3200 steps (it converges about 4 times slower than SimCLR; PCA_STEPS).
"""

from __future__ import annotations

import json
import math

import numpy as np
import sympy as sp
import torch

from ..gsg_flow import GSGFlow, SELECTION_SIGN, integrate_gsg_flow, pair_differences, repulsion_matrix
from ..gsg_symbolic import min_of_two_gaussians, scalar_gradient
from ..siamese import (EvalSet, SiameseData, SiameseSimulation, SiameseSpec, init_params, make_dataset,
                      negative_distances, simulate_siamese)
from ..solvers import Solver
from .check_result import CheckResult

__all__ = ["FLOW_METRICS", "GSG_CHECKS", "expected_gd_path", "flow_dataset", "paired_worlds"]

f64 = torch.float64
SLOPE_TOL = 0.15  # as sampled_vs_ode: the fitted exponent's spread with 16 seeds is about 0.05
PCA_TOL = 0.9


def paired_worlds(methods, seeds, *, data: SiameseData, n2: int, predictor: bool, batch: int, lr: float,
                  steps: int, n_save: int, eta: float = 0.0, alpha_p: float = 1.0, eval_size: int = 256,
                  seed: int = 0, solver: Solver = Solver(method="dop853", rtol=1e-8, atol=1e-10)):
    """The sampled four-view simulator (l2 loss, linear encoder) and the expected flow from the same
    initial weights, measured on the same EvalSet. Returns (sampled Dataset, final sampled weights,
    {method: flow IntegrationResult}, flow times (S,))."""
    spec = SiameseSpec(method=methods[0], n2=n2, predictor=predictor, loss="l2", lr=lr, batch=batch,
                       weight_decay=eta, alpha_p=alpha_p)
    sim = SiameseSimulation(steps=steps, n_save=n_save, eval_size=eval_size, data=data, train=spec,
                            grid={"method": list(methods), "seed": list(seeds)}, seed=seed)
    ds, final = simulate_siamese(sim, return_params=True)
    ev = EvalSet.build(data, n2, eval_size, data.data_seed)
    t = lr * ds["time"].values
    flows = {}
    for method in methods:
        p0 = init_params({**spec.__dict__, "method": method}, data.n1, np.asarray(seeds), torch.ones(len(seeds), dtype=f64))
        Wp0 = p0.get("Wp", torch.eye(n2, dtype=f64).expand(len(seeds), n2, n2).clone())
        flows[method] = integrate_gsg_flow(data, p0["W"], Wp0, t, method=method, predictor=predictor, eta=eta,
                                           alpha_p=alpha_p, batch=batch, evalset=ev, solver=solver)
    return ds, final, flows, t


#: the measurements the expected flow records on the EvalSet (as the sampled simulator, minus knn_acc/subspace)
FLOW_METRICS = ("neg_dist", "neg_dist_min", "uniformity", "std_l2", "effective_rank", "align_loss")


def flow_dataset(flows: dict, seeds, t, config: dict):
    """The expected-flow side of :func:`paired_worlds` as a contract Dataset (source "theory", time in
    flow units, runs = methods x seeds with ``method`` and ``seed`` run coords, like the sampled side).

    flows: {method: IntegrationResult} from paired_worlds; t: flow times (S,); config: the settings (kept
    as JSON in ``attrs['config']``; include ``predictor`` so the figure gallery groups the worlds)."""
    from stopgrad.analysis import build_dataset

    methods = list(flows)
    seeds = np.asarray(seeds)
    vals = {m: np.stack([flows[meth].values[m].numpy() for meth in methods]).reshape(-1, len(t)) for m in FLOW_METRICS}
    return build_dataset({k: v for k, v in vals.items() if k != "neg_dist_min"}, time=np.asarray(t, dtype=float),
                         time_units="flow", source="theory", method="gsg-flow", config=json.dumps(config, default=str),
                         run_coords={"method": np.repeat(methods, len(seeds)), "seed": np.tile(seeds, len(methods))},
                         extra_vars={"neg_dist_min": (("run", "time"), vals["neg_dist_min"])},
                         attrs={"predictor": int(bool(config.get("predictor", True)))})


def expected_gd_path(data: SiameseData, W0, Wp0, *, method, predictor, lr, steps, batch, eta=0.0, alpha_p=1.0):
    """The mean path of SGD to first order: ``steps`` Euler steps of the expected flow at step ``lr``
    (the expected update of one SGD step). Returns the final (W, W_p)."""
    x, _, _ = make_dataset(data)
    R, n2, _ = W0.shape
    flow = GSGFlow(x, n2, predictor)
    one = torch.ones(R, dtype=f64)
    p = {"sigma": data.aug_std * one, "sign": SELECTION_SIGN[method] * one, "batch_factor": (1 - 1 / batch) * one,
         "eta": eta * one, "alpha_p": alpha_p * one}
    y = torch.cat([W0.reshape(R, -1), Wp0.reshape(R, -1)], dim=1)
    for _ in range(steps):
        y = y + lr * flow.rhs(0.0, y, p)
    return flow.split(y)


def check_selection_bias(seed: int):
    """The check gsg_selection_bias (module docstring): the chosen view's mean noise, sympy and Monte Carlo."""
    mom = min_of_two_gaussians()
    s = mom["s"]
    sym_res = float(sp.Abs(sp.simplify(mom["E_min"] + s / sp.sqrt(sp.pi))).subs(s, 1)) + \
        float(sp.Abs(sp.simplify(mom["E_min2"] - s**2)).subs(s, 1)) + float(sp.Abs(mom["E_minmax"]))
    # Monte Carlo of the sampled rule: one pair (a, b), W random, the chosen source view's mean noise
    g = torch.Generator().manual_seed(seed)
    n1, n2, N, sigma = 6, 3, 400_000, 0.05
    W = torch.randn(1, n2, n1, generator=g, dtype=f64)
    a, b = torch.randn(n1, generator=g, dtype=f64), torch.randn(n1, generator=g, dtype=f64)
    e = sigma * torch.randn(4, N, n1, generator=g, dtype=f64)
    views = torch.stack([a, a, b, b])[:, None] + e
    choice = negative_distances((views @ W[0].T)[None]).argmin(-1)[0]  # (N,)
    src = torch.tensor([0, 0, 1, 1])[choice]
    e_src = e[src, torch.arange(N)]
    n = (W[0].T @ W[0] @ (a - b))
    n = n / n.norm()
    pred = -sigma / math.sqrt(math.pi) * n
    meas = e_src.mean(0)
    se = float(e_src.std(0).norm() / math.sqrt(N))
    ratio = float(sigma * torch.linalg.matrix_norm(W[0], 2) / (W[0] @ (a - b)).norm())
    err = float((meas - pred).norm())
    tol = 5 * se + 2 * ratio**2 * float(pred.norm())
    ok = sym_res < 1e-12 and err <= tol
    return CheckResult("gsg_selection_bias", "GSG's chosen view: E[noise] = -sigma/sqrt(pi) W^TW delta/|W^TW delta| (sympy + MC)",
                       err / tol, 1.0, ok, f"sympy residual {sym_res:.1e}; MC |mean - formula| {err:.2e}, SE {se:.1e}, "
                       f"|formula| {float(pred.norm()):.3e}, sigma||W||/||W delta|| = {ratio:.3f}, N = {N}",
                       extra={"mc_error": err, "se": se, "formula_norm": float(pred.norm())})


def check_symbolic_gsg(seed: int):
    """The check gsg_symbolic (module docstring): the scalar model's expected gradient equals the matrix formula."""
    out = scalar_gradient()
    res = float(sp.Abs(out["residual_w"]) + sp.Abs(out["residual_wp"])) if (out["residual_w"], out["residual_wp"]) != (0, 0) else 0.0
    return CheckResult("gsg_symbolic", "Scalar GSG: E[gradient] from the noise moments == the flow's matrix formula (sympy)",
                       res, 1e-12, res <= 1e-12, f"dW: {out['grad_w']}")


def check_repulsion_sign(seed: int):
    """The check gsg_repulsion_sign (module docstring): the repulsion term never decreases Phi."""
    rng = np.random.default_rng(seed)
    worst = math.inf
    for _ in range(50):
        n1, n2, K = rng.integers(2, 7), rng.integers(1, 5), rng.integers(2, 9)
        x = torch.as_tensor(rng.standard_normal((K, n1)), dtype=f64)
        W = torch.as_tensor(rng.standard_normal((1, n2, n1)), dtype=f64)
        D = pair_differences(x)
        S = repulsion_matrix(W, D, K)[0]
        A = W[0].T @ W[0]
        term = W[0] @ A @ S  # the no-predictor repulsion direction (coefficient c kappa (1 - 1/B) > 0 for GSG)
        grad_phi = W[0] @ (A @ S + S @ A)  # d/dW E||W^T W delta|| = W (A S + S A)
        inner = float((grad_phi * term).sum())
        worst = min(worst, inner / float(grad_phi.norm() * term.norm()))
    return CheckResult("gsg_repulsion_sign", "No predictor: the GSG term never decreases Phi = E||W^T W delta|| (50 random W)",
                       max(0.0, -worst), 1e-12, worst >= -1e-12, f"min normalised <grad Phi, term> = {worst:.3f}")


def check_two_point_rate(seed: int):
    """The check gsg_two_point_rate (module docstring): the growth rate of ||W delta|| for two points."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(3):
        sigma, eta, B = rng.uniform(0.2, 0.6), rng.uniform(0, 0.05), int(rng.integers(4, 512))
        data = SiameseData(n1=4, n_points=2, n_clusters=2, cluster_sep=rng.uniform(1, 4), cluster_std=0.0, aug_std=sigma,
                           data_seed=int(rng.integers(0, 2**31)))
        x, _, _ = make_dataset(data)
        delta = x[0] - x[1]
        dn = float(delta.norm())
        v = torch.as_tensor(rng.standard_normal(3), dtype=f64)
        W0 = (v[:, None] * delta[None] / dn)[None]
        for method, c in SELECTION_SIGN.items():
            rate = c * sigma * dn * (1 - 1 / B) / (2 * math.sqrt(math.pi)) - sigma**2 - eta
            res = integrate_gsg_flow(data, W0, torch.eye(3, dtype=f64)[None], [0.0, 1.0], method=method, predictor=False,
                                     eta=eta, batch=B, solver=Solver(method="dop853", rtol=1e-10, atol=1e-12))
            W = res.values["W"][0]
            measured = math.log(float((W[-1] @ delta).norm()) / float((W[0] @ delta).norm()))
            worst = max(worst, abs(measured - rate))
    return CheckResult("gsg_two_point_rate", "Two points, no predictor: ||W delta|| grows at c sigma|delta|(1-1/B)/(2 sqrt pi) - sigma^2 - eta",
                       worst, 1e-7, worst <= 1e-7, "GSG c = 1, reverse c = -1, SimSiam c = 0; 3 random settings")


def check_flow_vs_sampled(seed: int):
    """Sampling error dominates up to batch 1024 at sigma/|delta| ~ 0.02; at larger batches the
    linearised selection's bias (O(sigma/|W delta|)) shows as a floor, reported as ``bias``."""
    n_seeds, batches, fit_upto, lr, steps = 16, [16, 64, 256, 1024, 4096], 4, 0.02, 50
    data = SiameseData(n1=8, n_points=16, n_clusters=16, cluster_sep=3.0, cluster_std=0.0, aug_std=0.1, data_seed=seed)
    seeds = list(range(seed, seed + n_seeds))
    spec = SiameseSpec(method="gsg", n2=4, predictor=True, loss="l2", lr=lr, batch=64)
    sim = SiameseSimulation(steps=steps, n_save=2, eval_size=16, data=data, train=spec,
                            grid={"batch": batches, "seed": seeds}, seed=seed)
    _, final = simulate_siamese(sim, return_params=True)
    p0 = init_params({**spec.__dict__}, data.n1, np.asarray(seeds), torch.ones(n_seeds, dtype=f64))
    rms = []
    for i, B in enumerate(batches):
        W, _ = expected_gd_path(data, p0["W"], p0["Wp"], method="gsg", predictor=True, lr=lr, steps=steps, batch=B)
        Ws = torch.as_tensor(final["W"][i * n_seeds:(i + 1) * n_seeds])
        err = ((Ws - W).flatten(1).norm(dim=1) / W.flatten(1).norm(dim=1))
        rms.append(float(err.pow(2).mean().sqrt()))
    slope = float(np.polyfit(np.log(batches[:fit_upto]), np.log(rms[:fit_upto]), 1)[0])
    # rms^2 = a / B + bias^2: least squares over all batch sizes
    coef, *_ = np.linalg.lstsq(np.stack([1 / np.asarray(batches), np.ones(len(batches))], 1), np.square(rms), rcond=None)
    bias = float(np.sqrt(max(coef[1], 0.0)))
    ok = abs(slope + 0.5) <= SLOPE_TOL
    return CheckResult("gsg_flow_vs_sampled", "Sampled GSG SGD -> expected GSG update: error in W falls as batch^(-1/2)",
                       abs(slope + 0.5), SLOPE_TOL, ok,
                       f"slope {slope:.3f} over batch {batches[:fit_upto]}; rms rel. error {', '.join(f'{e:.1e}' for e in rms)} "
                       f"at batch {batches}; fitted floor (linearised-selection bias) {bias:.1e}; lr {lr}, {steps} steps, "
                       f"{n_seeds} seeds, sigma 0.1",
                       extra={"batches": batches, "rms": rms, "slope": slope, "bias": bias})


#: SGD steps of the PCA checks: linear SimCLR passes at 800 (0.77-0.85 at 300); linear MoCo (one-sided
#: InfoNCE against a 256-key queue from a momentum encoder) is slower: 0.57-0.72 at 800, 0.83-0.94 at 2400,
#: 0.91-0.98 at 3200 (seed 0), so its row runs 3200 steps
PCA_STEPS = {"simclr": 800, "moco": 3200}


def _contrastive_pca(method: str, seed: int):
    """Linear ``method`` (simclr/moco, tau 0.5, batch 256) on spiked data: the captured fraction of the top-4
    principal subspace of the population covariance I + sum_j spike_j v_j v_j^T (isotropic augmentation
    adds sigma^2 I, which keeps its eigenvectors) per seed at the end and at init, and the same fraction for
    the empirical covariance of the 2,048 points the runs draw from."""
    data = SiameseData(kind="spiked", n1=12, n_points=2048, spikes=(10.0, 8.0, 6.0, 4.0), aug_std=0.5, data_seed=seed)
    spec = SiameseSpec(method=method, n2=4, loss="cosine", lr=0.05, batch=256, temperature=0.5)
    sim = SiameseSimulation(steps=PCA_STEPS[method], n_save=2, eval_size=64, data=data, train=spec,
                            grid={"seed": list(range(seed, seed + 4))}, seed=seed)
    ds, final = simulate_siamese(sim, return_params=True)
    x, _, _ = make_dataset(data)
    xc = x - x.mean(0)
    U = torch.linalg.eigh(xc.T @ xc / x.shape[0]).eigenvectors[:, -4:]
    Q = torch.linalg.qr(torch.as_tensor(final["W"]).mT).Q
    empirical = ((Q.mT @ U).pow(2).sum(dim=(-1, -2)) / 4).numpy()
    return ds["subspace"].isel(time=-1).values, ds["subspace"].isel(time=0).values, empirical


def _pca_result(name: str, label: str, method: str, seed: int, detail: str):
    frac, start, emp = _contrastive_pca(method, seed)
    worst = float(frac.min())
    return CheckResult(name, f"Linear {label} learns the top-n2 principal subspace of the data covariance",
                       1 - worst, 1 - PCA_TOL, worst >= PCA_TOL,
                       f"captured fraction {', '.join(f'{f:.3f}' for f in frac)} (4 seeds; at init {start.mean():.3f}; "
                       f"of the empirical covariance {', '.join(f'{f:.3f}' for f in emp)}); spikes 10, 8, 6, 4 over I, "
                       f"sigma_aug 0.5, tau 0.5, {PCA_STEPS[method]} steps of batch 256{detail}",
                       extra={"fraction": frac.tolist(), "fraction_init": start.tolist(), "fraction_empirical": emp.tolist()})


def check_contrastive_pca(seed: int):
    """The check contrastive_pca (module docstring): linear SimCLR learns the top principal subspace."""
    return _pca_result("contrastive_pca", "SimCLR", "simclr", seed, "")


def check_contrastive_pca_moco(seed: int):
    """The check contrastive_pca_moco (module docstring): the same for linear MoCo (slow)."""
    return _pca_result("contrastive_pca_moco", "MoCo", "moco", seed, ", queue 256, key momentum 0.99")


GSG_CHECKS = {
    "gsg_selection_bias": check_selection_bias,
    "gsg_symbolic": check_symbolic_gsg,
    "gsg_repulsion_sign": check_repulsion_sign,
    "gsg_two_point_rate": check_two_point_rate,
    "gsg_flow_vs_sampled": check_flow_vs_sampled,
    "contrastive_pca": check_contrastive_pca,
    "contrastive_pca_moco": check_contrastive_pca_moco,
}
#: 3200 steps of linear MoCo take minutes (with SimCLR's row: 8 min wall, 5 min 18 s of CPU, on 2 cores
#: under a load of ~6): too slow for the default ``stopgrad check`` and the demo; ``--only`` runs it
GSG_SLOW_CHECKS = ("contrastive_pca_moco",)
