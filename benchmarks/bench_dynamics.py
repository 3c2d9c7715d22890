"""Benchmark: batched sweeps of the linear BYOL flow against a loop of scipy.solve_ivp calls.

A. 4,096 configurations (eta x beta x alpha_p x seed) of the 64 x 32 matrix flow to T = 200,
   sigma2 = 0.5, W_a(0) = 0, saved at 11 times. Ours: ``stopgrad.dynamics.simulate`` (CPU: numba
   kernel on the exact isotropic reduction, DOP853 with per-run steps). Reference: one
   ``solve_ivp(RK45, rtol=1e-8, atol=1e-10)`` per configuration on the full W (64 x 32) with a
   numpy right-hand side, timed on a random subset and scaled. Accuracy: the eigenvalues of
   W W^T at the 11 save times, max |s - s_ref| / max_j s_ref (per time), over the subset.
   The ratio is also given at equal accuracy (scipy at the tolerance matching our error).
B. A 10^6-point per-mode grid: (p(0), eta) on 1000 x 1000, BYOL mode (p, w, w_a) to T = 100, dopri5
   (the one-mode lane kernel), at rtol 1e-6 and, for the time/accuracy trade-off, 1e-5 and 1e-4.
   Accuracy: s(T) against scipy DOP853 (rtol 1e-11) on 100 random points.
C. With a CUDA device: the same 4,096-configuration sweep on the GPU (torch backend).

    python benchmarks/bench_dynamics.py [--configs 4096] [--loop-sample 24] [--skip-grid]

Prints a table and writes benchmarks/results/dynamics-<device>.json.
"""

from __future__ import annotations

import argparse
import json
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
    model = base_model()
    out, nfev = [], []
    start = time.perf_counter()
    for r in runs:
        init = draw_initial_matrices(model, [table["seed"][r]], [1.0], [1.0])
        y0 = np.concatenate([init["W"][0].ravel(), init["Wp"][0].ravel(), init["Wa"][0].ravel()])
        sol = solve_ivp(numpy_rhs(table["alpha_p"][r], table["eta"][r], table["beta"][r]), (0, T_END), y0,
                        method=method, t_eval=t_save, rtol=rtol, atol=atol)
        W = sol.y[: N2 * N1].T.reshape(len(t_save), N2, N1)
        out.append(np.linalg.eigvalsh(W @ W.transpose(0, 2, 1))[:, ::-1])
        nfev.append(sol.nfev)
    return (time.perf_counter() - start) / len(runs), np.stack(out), float(np.mean(nfev))


def spectrum_error(s, ref):
    """max over runs and times of max_j |s - s_ref| / max_j s_ref."""
    return float(np.max(np.abs(s - ref).max(-1) / ref.max(-1)))


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
    ap.add_argument("--rtol", type=float, default=1e-7, help="our tolerance for the sweep")
    ap.add_argument("--method", default="dop853", choices=["dop853", "dopri5"])
    ap.add_argument("--no-equal-accuracy", action="store_true", help="skip the scipy runs at looser tolerances")
    ap.add_argument("--grid-side", type=int, default=1000)
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--dump", default=None, help="also save the raw results (s, p, tau, nfev) to this .npz, "
                    "for a bitwise before/after comparison")
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
