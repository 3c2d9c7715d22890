"""Benchmark: batched sweeps of the linear BYOL flow against a loop of scipy.solve_ivp calls.

A. 4,096 configurations (eta x beta x alpha_p x seed) of the 64 x 32 matrix flow to T = 200,
   sigma2 = 0.5, W_a(0) = 0, saved at 11 times. Ours: ``stopgrad.dynamics.simulate`` (CPU: numba
   kernel on the exact isotropic reduction, DOP853 with per-run steps) at rtol 1e-8 (atol 1e-10) by
   default: the loosest tolerance at which the max error in s stayed <= 1e-6 on every one of 1,024
   sampled configs (at rtol 1e-7 three were above, max 1.8e-6; see --accuracy-sample). Reference: one
   ``solve_ivp(RK45, rtol=1e-8, atol=1e-10)`` per configuration on the full W (64 x 32) with a
   numpy right-hand side, timed on a random subset and scaled. Accuracy: the eigenvalues of
   W W^T at the 11 save times, max |s - s_ref| / max_j s_ref (per time), over the subset.
   The ratio is also given at equal accuracy (scipy at the tolerance matching our error).
B. A 10^6-point per-mode grid: (p(0), eta) on 1000 x 1000, BYOL mode (p, w, w_a) to T = 100, dopri5
   (the one-mode lane kernel), at rtol 1e-6 and, for the time/accuracy trade-off, 1e-5 and 1e-4.
   Accuracy: s(T) against scipy DOP853 (rtol 1e-11) on 100 random points.
C. With a CUDA device: the same 4,096-configuration sweep on the GPU (torch backend).
D. ``--accuracy-sample N``: our error in s on N of the 4,096 configs (a fixed random sample) at each
   of --accuracy-rtols, against a tight independent reference: scipy DOP853 rtol 1e-12, atol 1e-14,
   on the full W with the numpy RHS (its own error, against rtol 1e-13 on 6 configs, is reported).
   The reference costs ~1-2 s a config; it runs on a pool of --procs processes (the benchmark's only)
   and is cached in benchmarks/results/ref-*.npz (gitignored). Writes dynamics-accuracy-cpu.json.
E. ``--peers``: the peer table (dynamics_peers.py): ours, the scipy loop (RK45, DOP853), torchode and
   diffrax (``vmap``, float64) at equal accuracy, on 1 core, on 2 cores and (ours) beside one busy
   neighbour process. Benchmark-only extras: ``pip install -e ".[bench]"``; a missing one is skipped
   with its reason. Writes dynamics-peers-cpu.json.

    python benchmarks/bench_dynamics.py [--configs 4096] [--loop-sample 24] [--skip-grid]
    python benchmarks/bench_dynamics.py --accuracy-only --accuracy-sample 1024
    python benchmarks/bench_dynamics.py --peers-only --peer-configs 32 --peer-loop-configs 16

Prints a table and writes benchmarks/results/dynamics-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

from stopgrad.dynamics import DataSpec, InitSpec, LinearModel, ModeInit, Simulation, Solver, draw_initial_matrices, simulate

N1, N2, T_END, N_SAVE, SIGMA2 = 64, 32, 200.0, 11, 0.5
RESULTS = Path(__file__).resolve().parent / "results"


def sweep_grid(n_configs: int) -> dict:
    """eta x beta x alpha_p x seed with 8 x 8 x 4 x (n/256) values (4096 -> 16 seeds)."""
    seeds = max(1, n_configs // 256)
    return {
        "eta": np.round(np.linspace(0.0, 0.04, 8), 6).tolist(),
        "beta": np.round(np.linspace(0.1, 1.0, 8), 6).tolist(),
        "alpha_p": [0.5, 1.0, 2.0, 4.0],
        "seed": list(range(seeds)),
    }


def base_model() -> LinearModel:
    return LinearModel(n1=N1, n2=N2, method="byol", beta=0.5, data=DataSpec(sigma2=SIGMA2), init=InitSpec(wa="zero"))


def numpy_rhs(alpha_p, eta, beta):
    """The full matrix flow, Eqs. 2-4 with X = I, X' = sigma2 I, as a user would write it for scipy."""
    nW, nP = N2 * N1, N2 * N2
    lam = 1.0 + SIGMA2

    def rhs(t, y):
        W = y[:nW].reshape(N2, N1)
        Wp = y[nW : nW + nP].reshape(N2, N2)
        Wa = y[nW + nP :].reshape(N2, N1)
        G = Wa - lam * (Wp @ W)
        out = np.empty_like(y)
        out[:nW] = (Wp.T @ G - eta * W).ravel()
        out[nW : nW + nP] = (alpha_p * (G @ W.T) - eta * Wp).ravel()
        out[nW + nP :] = (beta * (W - Wa)).ravel()
        return out

    return rhs


def scipy_loop(table, runs, method, rtol, atol, t_save):
    """One solve_ivp per run; returns seconds per run, eigenvalues (n, S, N2) and mean nfev."""
    out, nfev = [], []
    start = time.perf_counter()
    for r in runs:
        sol = solve_ivp(numpy_rhs(table["alpha_p"][r], table["eta"][r], table["beta"][r]), (0, T_END),
                        _initial_vector(table["seed"][r]), method=method, t_eval=t_save, rtol=rtol, atol=atol)
        out.append(_solution_spectra(sol))
        nfev.append(sol.nfev)
    return (time.perf_counter() - start) / len(runs), np.stack(out), float(np.mean(nfev))


def spectrum_error(s, ref):
    """max over runs and times of max_j |s - s_ref| / max_j s_ref."""
    return float(np.max(run_errors(s, ref)))


def run_errors(s, ref):
    """spectrum_error per run: (n,) max over times of max_j |s - s_ref| / max_j s_ref."""
    return (np.abs(s - ref).max(-1) / ref.max(-1)).max(-1)


# --- the tight reference: scipy DOP853 on the full matrix flow, cached per config -----------------

REF_METHOD, REF_RTOL = "DOP853", 1e-12
FULL_GRID = 4096  # the accuracy sample and the peers draw their configs from the 4,096-config grid


def grid_table(n_configs: int = FULL_GRID) -> dict:
    """The runs of sweep_grid(n_configs) as (R,) arrays, in Simulation's order (last key fastest)."""
    grid = sweep_grid(n_configs)
    mesh = np.meshgrid(*[np.asarray(v) for v in grid.values()], indexing="ij")
    return {k: m.ravel() for k, m in zip(grid, mesh)}


def sample_indices(n: int) -> np.ndarray:
    """The first n of one fixed permutation of the 4,096 grid configs (samples are nested)."""
    return np.random.default_rng(2024).permutation(FULL_GRID)[: min(n, FULL_GRID)]


def _initial_vector(seed: int) -> np.ndarray:
    """The full flat state (W, W_p, W_a) at t = 0 of the config with ``seed``, as simulate draws it."""
    init = draw_initial_matrices(base_model(), [int(seed)], [1.0], [1.0])
    return np.concatenate([init["W"][0].ravel(), init["Wp"][0].ravel(), init["Wa"][0].ravel()])


def _solution_spectra(sol) -> np.ndarray:
    """Eigenvalues (S, N2), descending, of W W^T at the save times of a solve_ivp solution on the full flow."""
    W = sol.y[: N2 * N1].T.reshape(-1, N2, N1)
    return np.linalg.eigvalsh(W @ W.transpose(0, 2, 1))[:, ::-1]


def _reference_one(job):
    """One config's eigenvalues (S, N2) by scipy at (method, rtol, atol = rtol * 1e-2), and its nfev."""
    eta, beta, alpha_p, seed, method, rtol = job
    t_save = np.linspace(0.0, T_END, N_SAVE)
    sol = solve_ivp(numpy_rhs(alpha_p, eta, beta), (0, T_END), _initial_vector(seed), method=method,
                    t_eval=t_save, rtol=rtol, atol=rtol * 1e-2)
    return _solution_spectra(sol), sol.nfev


def _pool(procs: int):
    """A spawn pool whose workers use one BLAS thread each (the benchmark's reference only)."""
    import multiprocessing as mp
    import os

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})
    try:
        return mp.get_context("spawn").Pool(procs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def reference_spectra(idx, rtol=REF_RTOL, method=REF_METHOD, procs=2, cache=True, log=print) -> np.ndarray:
    """Eigenvalues (len(idx), S, N2) of the 4,096-grid configs idx by scipy ``method`` at ``rtol`` on the
    full flow; computed configs are kept in benchmarks/results/ref-*.npz (gitignored) and reused."""
    path = RESULTS / f"ref-{method.lower()}-{rtol:g}.npz"
    have: dict[int, np.ndarray] = {}
    if cache and path.exists():
        with np.load(path) as z:
            have = dict(zip(z["index"].tolist(), z["s"]))
    todo = [int(i) for i in dict.fromkeys(np.asarray(idx).tolist()) if int(i) not in have]
    if todo:
        table = grid_table()
        jobs = [(float(table["eta"][i]), float(table["beta"][i]), float(table["alpha_p"][i]), int(table["seed"][i]),
                 method, rtol) for i in todo]
        log(f"reference: {len(todo)} configs by scipy {method} rtol {rtol:g} on {procs} processes ...")
        start = time.perf_counter()

        def save():
            if cache:
                keys = sorted(have)
                RESULTS.mkdir(parents=True, exist_ok=True)
                np.savez(path.with_suffix(".tmp.npz"), index=np.array(keys), s=np.stack([have[k] for k in keys]))
                path.with_suffix(".tmp.npz").replace(path)

        with _pool(procs) as pool:
            for n, (i, (s, _)) in enumerate(zip(todo, pool.imap(_reference_one, jobs, chunksize=1)), 1):
                have[i] = s
                if n % 64 == 0 or n == len(todo):
                    save()
                    log(f"  {n}/{len(todo)} in {time.perf_counter() - start:.0f} s")
    return np.stack([have[int(i)] for i in idx])


def run_ours(idx, rtol, method="dop853"):
    """Ours on the 4,096-grid configs idx (zipped runs); returns (seconds, s (n, S, N2), mean nfev)."""
    table = grid_table()
    runs = {k: table[k][idx].tolist() for k in ("eta", "beta", "alpha_p", "seed")}
    sim = Simulation(model=base_model(), t_end=T_END, n_save=N_SAVE, runs=runs,
                     solver=Solver(method=method, rtol=rtol, atol=rtol * 1e-2, device="cpu"))
    start = time.perf_counter()
    ds = simulate(sim)
    return time.perf_counter() - start, ds.s.values, float(ds.nfev.mean())


def bench_accuracy(n, rtols, method="dop853", procs=2, claim=1e-6):
    """Our sweep's error in s on a sample of n of the 4,096 grid configs, against the tight reference."""
    idx = sample_indices(n)
    start = time.perf_counter()
    ref = reference_spectra(idx, procs=procs)
    ref_seconds = time.perf_counter() - start
    # the reference's own convergence: rtol 1e-12 against 1e-13 on a few configs
    few = idx[:6]
    conv = run_errors(reference_spectra(few, rtol=REF_RTOL / 10, procs=procs), ref[:6])
    table = grid_table()
    rows = []
    run_ours(idx[:2], rtols[0], method)  # compile / load the kernels outside the timing
    for rtol in rtols:
        secs, s, nfev = run_ours(np.sort(idx), rtol, method)
        order = np.argsort(np.argsort(idx))  # back from sorted to sample order
        err = run_errors(s[order], ref)
        worst = int(np.argmax(err))
        rows.append({
            "rtol": rtol, "atol": rtol * 1e-2, "configs": int(len(idx)), "max": float(err.max()),
            "p99.9": float(np.percentile(err, 99.9)), "p99": float(np.percentile(err, 99)),
            "median": float(np.median(err)), f"configs_above_{claim:g}": int((err > claim).sum()),
            "worst_config": {k: float(table[k][idx[worst]]) for k in ("eta", "beta", "alpha_p", "seed")},
            "ms_per_config": 1e3 * secs / len(idx), "nfev_mean": nfev,
        })
        print(f"  ours {method} rtol {rtol:g}: max {err.max():.2e}, p99.9 {rows[-1]['p99.9']:.2e}, "
              f"median {rows[-1]['median']:.2e}, above {claim:g}: {rows[-1][f'configs_above_{claim:g}']}", flush=True)
    holds = [r["rtol"] for r in rows if r["max"] <= claim]
    return {
        "configs": int(len(idx)), "sample": "first n of np.random.default_rng(2024).permutation(4096) of the 4,096 grid",
        "reference": f"scipy {REF_METHOD} rtol={REF_RTOL:g} atol={REF_RTOL * 1e-2:g} (full 64x32 W, numpy RHS)",
        "reference_seconds": ref_seconds,
        "reference_self_error_vs_rtol_1e-13": {"configs": int(len(few)), "max": float(conv.max())},
        "error_definition": "per config: max over the 11 save times of max_j |s - s_ref| / max_j s_ref",
        "ours_method": method, "claim": claim, "rows": rows,
        "loosest_rtol_where_claim_holds": max(holds) if holds else None,
    }


def bench_sweep(n_configs, loop_sample, rtol, device, rng, method="dop853", equal_accuracy=True, dump=None):
    grid = sweep_grid(n_configs)
    sim = Simulation(model=base_model(), t_end=T_END, n_save=N_SAVE, grid=grid,
                     solver=Solver(method=method, rtol=rtol, atol=rtol * 1e-2, device=device))
    start = time.perf_counter()
    ds = simulate(sim)
    ours = time.perf_counter() - start
    if dump is not None:  # the raw results, for a bitwise before/after comparison of a refactor
        dump[f"sweep_{device}"] = {k: ds[k].values for k in ("s", "p", "tau", "balance", "nfev")}
    R = ds.sizes["run"]
    table = {k: ds[k].values for k in grid}
    t_save = ds.time.values
    runs = np.sort(rng.choice(R, size=min(loop_sample, R), replace=False))
    ref_t, ref_s, ref_nfev = scipy_loop(table, runs, "RK45", 1e-8, 1e-10, t_save)
    ours_s = ds.s.values[runs]
    err = spectrum_error(ours_s, ref_s)
    row = {
        "configs": R, "n1": N1, "n2": N2, "t_end": T_END, "saves": N_SAVE, "device": device,
        "ours_seconds": ours, "ours_ms_per_config": 1e3 * ours / R, "ours_backend": ds.attrs["backend"],
        "ours_solver": f"{method} rtol={rtol:g} atol={rtol * 1e-2:g}", "ours_nfev_mean": float(ds.nfev.mean()),
        "ours_kernel_seconds": float(ds.attrs["wall_seconds"]),
        "ref_solver": "scipy RK45 rtol=1e-8 atol=1e-10 (full 64x32 W, numpy RHS)", "ref_sample": int(len(runs)),
        "ref_ms_per_config": 1e3 * ref_t, "ref_nfev_mean": ref_nfev, "ref_seconds_scaled": ref_t * R,
        "speedup_vs_rk45_1e-8": ref_t * R / ours, "max_rel_error_s_vs_ref": err,
        "verdicts": {v: int((ds.verdict.values == v).sum()) for v in np.unique(ds.verdict.values)},
    }
    # equal accuracy: scipy at the tolerance whose own error matches ours
    for method, tol in (("RK45", 1e-6), ("DOP853", 1e-6)) if equal_accuracy else ():
        t_eq, s_eq, nf = scipy_loop(table, runs[: max(8, len(runs) // 2)], method, tol, tol * 1e-2, t_save)
        row[f"scipy_{method}_{tol:g}"] = {"ms_per_config": 1e3 * t_eq, "nfev_mean": nf,
                                          "max_rel_error_s_vs_ref": spectrum_error(s_eq, ref_s[: len(s_eq)]),
                                          "speedup": t_eq * R / ours}
    return row


def bench_grid(n_side, rtol, rng, dump=None):
    model = LinearModel(n1=1, n2=1, method="byol", beta=0.5, eta=0.05, data=DataSpec(sigma2=SIGMA2),
                        init=InitSpec(wa="zero"))
    grid = {"p0": np.linspace(-0.5, 1.0, n_side).tolist(), "eta": np.linspace(0.0, 0.2, n_side).tolist()}
    sim = Simulation(model=model, engine="modes", t_end=100.0, n_save=3, grid=grid, modes=ModeInit(s0=0.1),
                     solver=Solver(method="dopri5", rtol=rtol, atol=rtol * 1e-2))
    simulate(Simulation(model=model, engine="modes", t_end=1.0, n_save=2, grid={"p0": [0.1] * 64},
                        modes=ModeInit(s0=0.1)))  # compile / load the kernels outside the timing
    start = time.perf_counter()
    ds = simulate(sim)
    wall = time.perf_counter() - start
    if dump is not None:
        dump[f"grid_{rtol:g}"] = {k: ds[k].values for k in ("s", "p", "tau", "nfev")}
    # accuracy against scipy DOP853 at rtol 1e-11 on random points
    idx = rng.choice(ds.sizes["run"], 100, replace=False)
    errs = []
    for r in idx:
        p0, eta = float(ds.p0.values[r]), float(ds.eta.values[r])

        def f(t, y):
            p, w, wa = y
            g = wa - p * w * (1 + SIGMA2)
            return [w * g - eta * p, p * g - eta * w, 0.5 * (w - wa)]

        sol = solve_ivp(f, (0, 100.0), [p0, np.sqrt(0.1), 0.0], method="DOP853", rtol=1e-11, atol=1e-14, t_eval=[100.0])
        ref = sol.y[1, -1] ** 2
        errs.append(abs(ds.s.values[r, -1, 0] - ref) / max(ref, 0.1))
    return {"points": int(ds.sizes["run"]), "t_end": 100.0, "solver": f"dopri5 rtol={rtol:g}", "seconds": wall,
            "integration_seconds": float(ds.attrs["wall_seconds"]), "nfev_mean": float(ds.nfev.mean()),
            "max_error_vs_scipy": float(np.max(errs)), "error_definition": "|s - s_ref| / max(s_ref, s(0))",
            "verdicts": {v: int((ds.verdict.values == v).sum()) for v in np.unique(ds.verdict.values)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=4096)
    ap.add_argument("--loop-sample", type=int, default=24, help="scipy runs timed and compared (scaled to --configs)")
    ap.add_argument("--rtol", type=float, default=1e-8,
                    help="our tolerance for the sweep (1e-8: max error in s <= 1e-6 on every one of 1,024 sampled "
                         "configs; at 1e-7, 3 of them were above, max 1.8e-6: dynamics-accuracy-cpu.json)")
    ap.add_argument("--method", default="dop853", choices=["dop853", "dopri5"])
    ap.add_argument("--no-equal-accuracy", action="store_true", help="skip the scipy runs at looser tolerances")
    ap.add_argument("--grid-side", type=int, default=1000)
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--dump", default=None, help="also save the raw results (s, p, tau, nfev) to this .npz, "
                    "for a bitwise before/after comparison")
    ap.add_argument("--accuracy-sample", type=int, default=0, metavar="N",
                    help="also measure our error on N of the 4,096 grid configs against scipy DOP853 rtol 1e-12 "
                         "(cached in benchmarks/results/ref-*.npz), at each of --accuracy-rtols; writes "
                         "dynamics-accuracy-cpu.json")
    ap.add_argument("--accuracy-rtols", default="1e-6,1e-7,1e-8,1e-9")
    ap.add_argument("--accuracy-only", action="store_true", help="only the accuracy sample")
    ap.add_argument("--peers", action="store_true", help="also the peer table (torchode, diffrax, the scipy loop; "
                    "benchmark-only extras: pip install -e '.[bench]'); writes dynamics-peers-cpu.json")
    ap.add_argument("--peers-only", action="store_true", help="only the peer table")
    ap.add_argument("--peer-configs", type=int, default=64, help="configs for torchode and diffrax (one batch)")
    ap.add_argument("--peer-loop-configs", type=int, default=32, help="configs for the scipy loop")
    ap.add_argument("--peer-ours-configs", type=int, default=256, help="configs for ours' timing")
    ap.add_argument("--peer-list", default=None, help="comma-separated subset of the peers (and 'ours' for its "
                    "1-core and busy-neighbour runs); updates those rows of the last dynamics-peers-cpu.json")
    ap.add_argument("--peer-ladder", default=None, help="comma-separated tolerances tried per peer, loose to tight")
    ap.add_argument("--peer-ladder-threads", type=int, default=2, choices=[1, 2],
                    help="threads for the tolerance ladder (the chosen rung is then run on the other setting)")
    ap.add_argument("--peer-timeout", type=int, default=1200, help="seconds for one peer measurement process")
    ap.add_argument("--peer-batch", type=int, default=0, metavar="N",
                    help="re-time the batched peers (torchode, diffrax) and ours on N configs in one batch on 2 cores, "
                         "at the tolerances of the last peer table; adds 'batch_N' to dynamics-peers-cpu.json")
    ap.add_argument("--procs", type=int, default=2, help="processes for the reference (the benchmark's only)")
    args = ap.parse_args()
    if args.accuracy_only or args.peers_only or args.peer_batch:
        return extras(args)
    rng = np.random.default_rng(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}}
    eq = not args.no_equal_accuracy
    dump = {} if args.dump else None
    result["sweep_cpu"] = bench_sweep(args.configs, args.loop_sample, args.rtol, "cpu", rng, args.method, eq, dump)
    if device == "cuda":
        result["sweep_cuda"] = bench_sweep(args.configs, args.loop_sample, args.rtol, "cuda", rng, args.method, eq)
    if not args.skip_grid:
        result["mode_grid"] = bench_grid(args.grid_side, 1e-6, rng, dump)
        result["mode_grid_tradeoff"] = [bench_grid(args.grid_side, tol, rng, dump) for tol in (1e-5, 1e-4)]
    if dump is not None:
        np.savez_compressed(args.dump, **{f"{part}/{k}": v for part, d in dump.items() for k, v in d.items()})
    out = Path(args.out or RESULTS / f"dynamics-{device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    sw = result["sweep_cpu"]
    print(f"{'benchmark':44s} {'time':>10s} {'per config':>12s} {'speedup':>9s} {'error':>9s}")
    print(f"{'64x32 sweep, ' + str(sw['configs']) + ' configs, ours (' + sw['ours_backend'] + ')':44s} "
          f"{sw['ours_seconds']:9.1f}s {sw['ours_ms_per_config']:10.2f}ms {'':>9s} {sw['max_rel_error_s_vs_ref']:9.1e}")
    print(f"{'  scipy RK45 rtol 1e-8 loop (scaled)':44s} {sw['ref_seconds_scaled']:9.1f}s {sw['ref_ms_per_config']:10.2f}ms "
          f"{sw['speedup_vs_rk45_1e-8']:8.1f}x {'ref':>9s}")
    for key in [k for k in ("scipy_RK45_1e-06", "scipy_DOP853_1e-06") if k in sw]:
        e = sw[key]
        print(f"{'  ' + key.replace('_', ' ') + ' loop (equal accuracy)':44s} {'':>10s} {e['ms_per_config']:10.2f}ms "
              f"{e['speedup']:8.1f}x {e['max_rel_error_s_vs_ref']:9.1e}")
    if "sweep_cuda" in result:
        g = result["sweep_cuda"]
        print(f"{'  GPU (torch backend)':44s} {g['ours_seconds']:9.1f}s {g['ours_ms_per_config']:10.3f}ms "
              f"{g['speedup_vs_rk45_1e-8']:8.0f}x {g['max_rel_error_s_vs_ref']:9.1e}")
    if "mode_grid" in result:
        for m in [result["mode_grid"]] + result["mode_grid_tradeoff"]:
            print(f"{'per-mode grid, ' + str(m['points']) + ' points, ' + m['solver']:44s} {m['seconds']:9.2f}s "
                  f"{1e9 * m['seconds'] / m['points']:10.0f}ns {'':>9s} {m['max_error_vs_scipy']:9.1e}")
    print(f"wrote {out}")
    extras(args)


def extras(args) -> None:
    """The accuracy sample and the peer table, when asked for."""
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}
    if args.accuracy_sample and not args.peers_only:
        rtols = [float(x) for x in args.accuracy_rtols.split(",")]
        print(f"accuracy on {args.accuracy_sample} configs, ours {args.method} at rtol {rtols} ...", flush=True)
        acc = {"machine": machine, **bench_accuracy(args.accuracy_sample, rtols, args.method, args.procs)}
        out = RESULTS / "dynamics-accuracy-cpu.json"
        out.write_text(json.dumps(acc, indent=2))
        print(f"\nour error in s on {acc['configs']} configs vs {acc['reference']} "
              f"(reference's own error vs rtol 1e-13: {acc['reference_self_error_vs_rtol_1e-13']['max']:.1e})")
        print(f"{'rtol':>7s} {'max':>9s} {'p99.9':>9s} {'p99':>9s} {'median':>9s} {'> 1e-6':>7s} {'ms/config':>10s}")
        for r in acc["rows"]:
            print(f"{r['rtol']:7.0e} {r['max']:9.2e} {r['p99.9']:9.2e} {r['p99']:9.2e} {r['median']:9.2e} "
                  f"{r['configs_above_1e-06']:7d} {r['ms_per_config']:10.2f}")
        print(f"max error <= 1e-6 on every sampled config from rtol {acc['loosest_rtol_where_claim_holds']} on; wrote {out}")
    if args.peer_batch:
        import dynamics_peers

        out = RESULTS / "dynamics-peers-cpu.json"
        res = json.loads(out.read_text())
        check = dynamics_peers.batch_check(res, args.peer_batch, res["ours_rtol"], procs=args.procs,
                                           timeout=args.peer_timeout, log=lambda m: print(m, flush=True))
        res[f"batch_{args.peer_batch}"] = check
        out.write_text(json.dumps(res, indent=2))
        print(f"\non {args.peer_batch} configs in one batch, 2 cores (target error {check['target_error']:.2e}):")
        for name, r in check["rows"].items():
            print(f"  {name:22s} " + (f"rtol {r['tolerance']:.0e}  max err {r['max_error']:.1e}  "
                                      f"{r['ms_per_config']:8.1f} ms/config" if "ms_per_config" in r else r["skipped"]))
        print(f"wrote {out}")
        return
    if args.peers or args.peers_only:
        import dynamics_peers

        kw = {}
        if args.peer_list:
            kw["peers"] = tuple(args.peer_list.split(","))
        # from 3x our rtol, loose to tight (a peer's first rung reaching the target is flagged at_ladder_start)
        kw["ladder"] = (tuple(float(x) for x in args.peer_ladder.split(",")) if args.peer_ladder
                        else tuple(t for t in dynamics_peers.LADDER_ALL if t <= 3.01 * args.rtol))
        res = dynamics_peers.bench_peers(args.rtol, args.peer_configs, args.peer_loop_configs, args.peer_ours_configs,
                                         procs=args.procs, ladder_threads=args.peer_ladder_threads,
                                         timeout=args.peer_timeout,
                                         ours_settings=not args.peer_list or "ours" in args.peer_list.split(","),
                                         log=lambda m: print(m, flush=True), **kw)
        res = {"machine": machine, **res}
        out = RESULTS / "dynamics-peers-cpu.json"
        if args.peer_list and out.exists():  # a partial run: update those rows of the last table, say so
            last = json.loads(out.read_text())
            fresh = {k: v for k, v in res["rows"].items() if not k.startswith("ours")}  # ours: kept apart below
            last["rows"].update(fresh)
            last.setdefault("rows_from_a_later_run", []).append(
                {"rows": sorted(fresh), "ladder_threads": args.peer_ladder_threads,
                 "load_average_at_start": res["load_average_at_start"], "load_average_at_end": res["load_average_at_end"],
                 "ours_in_that_run": res["rows"].get("ours (numba dop853)")})
            res = last
        out.write_text(json.dumps(res, indent=2))
        dynamics_peers.print_table(res)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
