"""The peers of bench_dynamics.py's sweep: what a user would pick instead, side by side at equal accuracy.

Benchmark-only extras (``pip install -e ".[bench]"``): torchode (batched torch, per-sample step sizes)
and diffrax (JAX, float64, ``jax.vmap`` over configs, jit-compiled; compile time reported apart), beside
the scipy loop (RK45 and DOP853) and ours (``stopgrad.dynamics.simulate``, numba backend). All integrate
the same configs of the 64 x 32 BYOL matrix flow; the peers on the full W with bench_dynamics.numpy_rhs's
right-hand side (float64), ours on its exact reduction.

Each measurement runs in a subprocess whose environment is set before numba, torch or jax is imported:

* 1 core: ``taskset -c 0``, NUMBA_NUM_THREADS=1, OMP/OPENBLAS/MKL_NUM_THREADS=1, torch.set_num_threads(1),
  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1;
* 2 cores: ``taskset -c 0,1``, NUMBA_NUM_THREADS=2, torch.set_num_threads(2), XLA's defaults; the scipy
  loop also as 2 processes of one thread each (the loop itself cannot use a second core);
* busy neighbour (ours only): the 2-core run while ``python -c "while True: pass"`` spins on core 1;
* 2 cores with OPENBLAS_NUM_THREADS=1 (ours only): numpy's OpenBLAS pool held at one thread from the start.

Equal accuracy: ours runs at the benchmark's rtol; its max error in s on a peer's configs against the
tight reference (scipy DOP853 rtol 1e-12) is that peer's target. Each peer climbs a ladder of
tolerances (atol = rtol * 1e-2, as ours) from loose to tight and stops at the first whose max error on
the same configs is at or below the target; that rung's time is its 2-core time, and it is re-run on 1
core.

    python benchmarks/dynamics_peers.py worker NAME ...   (internal: one measurement, see main())
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LADDER_ALL = (3e-6, 1e-6, 3e-7, 1e-7, 3e-8, 1e-8, 3e-9, 1e-9, 3e-10, 1e-10, 3e-11, 1e-11)
LADDER = LADDER_ALL[2:]
#: peer name -> (module that must import, method)
PEERS = {
    "scipy-rk45": ("scipy", "RK45"),
    "scipy-dop853": ("scipy", "DOP853"),
    "torchode-tsit5": ("torchode", "tsit5"),
    "diffrax-tsit5": ("diffrax", "tsit5"),
    "diffrax-dopri8": ("diffrax", "dopri8"),
}


def available(name: str) -> str | None:
    """None when the peer's package imports, else the reason it is skipped."""
    mod = PEERS[name][0] if name in PEERS else "stopgrad"
    try:
        __import__(mod)
        if mod == "diffrax":
            __import__("jax")
    except ImportError as err:
        return f"{mod} is not installed ({err}); pip install -e '.[bench]'"
    return None


def thread_env(threads: int) -> dict:
    if threads == 1:
        return {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    return {"NUMBA_NUM_THREADS": str(threads)}


# --- the workers: one measurement in a fresh process ----------------------------------------------

def _spectra(Y, S):
    """Eigenvalues (B, S, N2), descending, of W W^T from full states Y (B, S, n)."""
    from bench_dynamics import N1, N2

    W = np.asarray(Y)[:, :, : N2 * N1].reshape(len(Y), S, N2, N1)
    return np.linalg.eigvalsh(W @ W.swapaxes(-1, -2))[..., ::-1]


def _configs(n):
    from bench_dynamics import grid_table, sample_indices

    table, idx = grid_table(), sample_indices(n)
    return idx, {k: table[k][idx] for k in ("eta", "beta", "alpha_p", "seed")}


def work_ours(n, rtol, method, threads):
    from bench_dynamics import run_ours

    idx, _ = _configs(n)
    run_ours(idx[:2], rtol)  # load the cached kernels outside the timing
    cpu = time.process_time()
    secs, s, nfev = run_ours(idx, rtol)
    return {"seconds": secs, "cpu_seconds": time.process_time() - cpu, "nfev_mean": nfev}, s


def work_scipy(n, rtol, method, procs):
    from bench_dynamics import _pool

    idx, c = _configs(n)
    jobs = [(float(c["eta"][i]), float(c["beta"][i]), float(c["alpha_p"][i]), int(c["seed"][i]), method, rtol)
            for i in range(n)]
    if procs > 1:
        with _pool(procs) as pool:
            pool.map(_timed_reference_one, jobs[:procs])  # workers up and imported outside the timing
            start = time.perf_counter()
            out = pool.map(_timed_reference_one, jobs, chunksize=1)
            secs = time.perf_counter() - start
    else:
        start = time.perf_counter()
        out = [_timed_reference_one(j) for j in jobs]
        secs = time.perf_counter() - start
    return ({"seconds": secs, "cpu_seconds": float(sum(o[2] for o in out)), "nfev_mean": float(np.mean([o[1] for o in out]))},
            np.stack([o[0] for o in out]))


def _timed_reference_one(job):
    """_reference_one and the CPU seconds it took (its process runs one thread)."""
    from bench_dynamics import _reference_one

    cpu = time.process_time()
    s, nfev = _reference_one(job)
    return s, nfev, time.process_time() - cpu


def _full_y0(c):
    from bench_dynamics import _initial_vector

    return np.stack([_initial_vector(s) for s in c["seed"]])


def work_torchode(n, rtol, method, threads):
    import torch
    import torchode as to

    from bench_dynamics import N1, N2, N_SAVE, SIGMA2, T_END

    torch.set_num_threads(threads)
    _, c = _configs(n)
    nW, nP, lam = N2 * N1, N2 * N2, 1.0 + SIGMA2

    def solve(y0, ap, eta, beta, t_eval):
        B = y0.shape[0]

        def f(t, y):
            W = y[:, :nW].view(B, N2, N1)
            Wp = y[:, nW : nW + nP].view(B, N2, N2)
            Wa = y[:, nW + nP :].view(B, N2, N1)
            G = Wa - lam * (Wp @ W)
            return torch.cat([(Wp.mT @ G - eta * W).reshape(B, -1), (ap * (G @ W.mT) - eta * Wp).reshape(B, -1),
                              (beta * (W - Wa)).reshape(B, -1)], dim=1)

        term = to.ODETerm(f)
        step = {"tsit5": to.Tsit5, "dopri5": to.Dopri5}[method](term=term)
        ctrl = to.IntegralController(atol=rtol * 1e-2, rtol=rtol, term=term)
        solver = to.AutoDiffAdjoint(step, ctrl, max_steps=200_000)
        with torch.no_grad():
            return solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval.expand(B, -1)))

    col = lambda k: torch.as_tensor(c[k], dtype=torch.float64).view(-1, 1, 1)  # noqa: E731
    y0 = torch.as_tensor(_full_y0(c))
    t_eval = torch.linspace(0.0, T_END, N_SAVE, dtype=torch.float64)
    solve(y0[:2], col("alpha_p")[:2], col("eta")[:2], col("beta")[:2], t_eval[:2] / 100)  # warm up torch
    start, cpu = time.perf_counter(), time.process_time()
    sol = solve(y0, col("alpha_p"), col("eta"), col("beta"), t_eval)
    secs, cpu = time.perf_counter() - start, time.process_time() - cpu
    status = sol.status.numpy()
    return ({"seconds": secs, "cpu_seconds": cpu, "nfev_mean": float(sol.stats["n_f_evals"].double().mean()),
             "steps_max": int(sol.stats["n_steps"].max()), "failed": int((status != 0).sum())},
            _spectra(sol.ys.numpy(), N_SAVE))


def work_diffrax(n, rtol, method, threads):
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax as dfx
    import jax.numpy as jnp

    from bench_dynamics import N1, N2, N_SAVE, SIGMA2, T_END

    _, c = _configs(n)
    nW, nP, lam = N2 * N1, N2 * N2, 1.0 + SIGMA2

    def f(t, y, args):
        ap, eta, beta = args
        W = y[:nW].reshape(N2, N1)
        Wp = y[nW : nW + nP].reshape(N2, N2)
        Wa = y[nW + nP :].reshape(N2, N1)
        G = Wa - lam * (Wp @ W)
        return jnp.concatenate([(Wp.T @ G - eta * W).ravel(), (ap * (G @ W.T) - eta * Wp).ravel(),
                                (beta * (W - Wa)).ravel()])

    solver = {"tsit5": dfx.Tsit5, "dopri5": dfx.Dopri5, "dopri8": dfx.Dopri8}[method]()
    ts = jnp.linspace(0.0, T_END, N_SAVE)

    def one(y0, ap, eta, beta):
        sol = dfx.diffeqsolve(dfx.ODETerm(f), solver, 0.0, T_END, None, y0, args=(ap, eta, beta),
                              saveat=dfx.SaveAt(ts=ts), stepsize_controller=dfx.PIDController(rtol=rtol, atol=rtol * 1e-2),
                              max_steps=200_000)
        return sol.ys, sol.stats["num_steps"], sol.result._value

    y0 = jnp.asarray(_full_y0(c))
    prm = [jnp.asarray(c[k], dtype=jnp.float64) for k in ("alpha_p", "eta", "beta")]
    start = time.perf_counter()
    compiled = jax.jit(jax.vmap(one)).lower(y0, *prm).compile()
    compile_s = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    ys, steps, result = jax.block_until_ready(compiled(y0, *prm))
    secs, cpu = time.perf_counter() - start, time.process_time() - cpu
    stages = {"tsit5": 6, "dopri5": 6, "dopri8": 12}[method]  # FSAL: new RHS evaluations per step
    return ({"seconds": secs, "cpu_seconds": cpu, "compile_seconds": compile_s, "steps_max": int(np.max(steps)),
             "nfev_mean_estimate": float(stages * np.mean(steps)), "failed": int((np.asarray(result) != 0).sum())},
            _spectra(np.asarray(ys), N_SAVE))


def worker_main(argv):
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--configs", type=int, required=True)
    ap.add_argument("--rtols", required=True, help="comma-separated; run in order until the error reaches --target")
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--ref", required=True, help=".npz with s: the reference spectra of the first configs")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from bench_dynamics import run_errors

    kind, method = PEERS.get(a.name, ("ours", "dop853"))
    fn = {"ours": work_ours, "scipy": work_scipy, "torchode": work_torchode, "diffrax": work_diffrax}[kind]
    with np.load(a.ref) as z:
        ref = z["s"]
    rungs, errors = [], None
    for rtol in map(float, a.rtols.split(",")):
        stats, s = fn(a.configs, rtol, method, a.procs if kind == "scipy" else a.threads)
        m = min(len(s), len(ref))
        errors = run_errors(s[:m], ref[:m]) if np.all(np.isfinite(s[:m])) else np.full(m, np.inf)
        rungs.append({"rtol": rtol, "max_error": float(errors.max()), "error_configs": int(m), **stats,
                      "load_average_1min": os.getloadavg()[0]})
        print(json.dumps(rungs[-1]), flush=True)
        if a.target is None or errors.max() <= a.target:
            break
    np.savez(a.out, errors=errors, rungs=json.dumps(rungs))


# --- the orchestration: run in bench_dynamics.py's process ----------------------------------------

def measure(name, configs, rtols, threads, ref_path, target=None, procs=1, busy=False, timeout=1200, log=print,
            extra_env=None):
    """Measurements in one fresh subprocess: the rungs run (list of dicts) and the last one's per-config
    errors, or (None, reason)."""
    env = {**os.environ, **thread_env(threads), **(extra_env or {})}
    cpus = "0" if threads == 1 and procs == 1 else "0,1"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.npz"
        cmd = ["taskset", "-c", cpus, sys.executable, str(Path(__file__).resolve()), "worker", name,
               "--configs", str(configs), "--rtols", ",".join(map(repr, rtols)), "--threads", str(threads),
               "--procs", str(procs), "--ref", str(ref_path), "--out", str(out)]
        if target is not None:
            cmd += ["--target", repr(target)]
        burner = None
        if busy:
            burner = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", "while True: pass"])
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                for line in proc.stdout:  # one line per rung, as it finishes
                    r = json.loads(line)
                    log(f"    {name} rtol {r['rtol']:g} ({threads} thread{'s' * (threads > 1)}, {procs} proc, "
                        f"busy={busy}): max error {r['max_error']:.2e}, {1e3 * r['seconds'] / configs:.1f} ms/config wall, "
                        f"{1e3 * r['cpu_seconds'] / configs:.1f} ms/config CPU, load {r['load_average_1min']:.1f}")
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                return None, f"timed out after {timeout} s"
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
        if proc.returncode != 0:
            return None, f"failed (exit {proc.returncode}): {proc.stderr.read().strip().splitlines()[-1:]}"
        with np.load(out) as z:
            return json.loads(str(z["rungs"])), z["errors"]


def bench_peers(rtol, peer_configs=64, loop_configs=32, ours_configs=256, peers=tuple(PEERS), procs=2,
                ladder=LADDER, ladder_threads=2, timeout=1200, ours_settings=True, log=print):
    """The peer table: ours at ``rtol``; each peer at the loosest ladder tolerance matching ours' accuracy.

    The ladder runs on ``ladder_threads`` (2, or 1 where a peer's 2-thread runs crawl on a loaded
    machine); the chosen tolerance is then run once on the other setting, each within ``timeout`` s."""
    from bench_dynamics import REF_METHOD, REF_RTOL, reference_spectra, sample_indices

    n_ref = max(peer_configs, loop_configs)
    ref = reference_spectra(sample_indices(n_ref), procs=procs, log=log)
    rows, out = {}, {"ours_rtol": rtol, "peer_configs": peer_configs, "loop_configs": loop_configs,
                     "ours_configs": ours_configs, "reference": f"scipy {REF_METHOD} rtol={REF_RTOL:g} on the same configs",
                     "ladder": list(ladder), "load_average_at_start": os.getloadavg()}
    tmp = tempfile.TemporaryDirectory()
    ref_path = Path(tmp.name) / "ref.npz"
    np.savez(ref_path, s=ref)

    # ours: 2 cores, 1 core, 2 cores with a busy neighbour
    log(f"peers: ours at rtol {rtol:g} on {ours_configs} configs ...")
    ours = {"tolerance": rtol, "configs": ours_configs}
    rungs, errors = measure("ours", ours_configs, [rtol], 2, ref_path, log=log)
    if rungs is None:
        raise RuntimeError(f"ours: {errors}")
    ours.update({"max_error": float(errors.max()), "error_configs": int(len(errors)), "nfev_mean": rungs[0]["nfev_mean"],
                 "2 cores": _ms(rungs[0], ours_configs)})
    target = {n: float(errors[:n].max()) for n in (peer_configs, loop_configs)}
    # numpy's OpenBLAS pool at 2 threads slows our 2-thread kernels (issue 13 finding): also 2 cores with it at 1
    settings = (("1 core", 1, False, None), ("busy neighbour", 2, True, None),
                ("2 cores, OPENBLAS_NUM_THREADS=1", 2, False, {"OPENBLAS_NUM_THREADS": "1"}))
    for key, threads, busy, extra in settings[: 3 if ours_settings else 0]:
        rungs, why = measure("ours", ours_configs, [rtol], threads, ref_path, busy=busy, log=log, extra_env=extra)
        ours[key] = _ms(rungs[0], ours_configs) if rungs is not None else {"skipped": why}
    if "ms_per_config" in ours.get("busy neighbour", {}):
        ours["busy_over_quiet"] = ours["busy neighbour"]["ms_per_config"] / ours["2 cores"]["ms_per_config"]
    ours["target_error"] = target
    rows["ours (numba dop853)"] = ours

    for name in [q for q in peers if q in PEERS]:
        reason = available(name)
        if reason is not None:
            log(f"  {name}: skipped: {reason}")
            rows[name] = {"skipped": reason}
            continue
        n = loop_configs if name.startswith("scipy") else peer_configs
        log(f"  {name} on {n} configs, target error {target[n]:.2e} (ours on the same configs)")
        row = {"configs": n, "target_error": target[n]}
        rungs, errors = measure(name, n, ladder, ladder_threads, ref_path, target=target[n], timeout=timeout, log=log)
        if rungs is None:
            row["skipped"] = errors
            rows[name] = row
            continue
        row["ladder"] = rungs
        last = rungs[-1]
        if last["max_error"] > target[n]:
            row["skipped"] = "no ladder tolerance reached the target error"
            rows[name] = row
            continue
        tol = last["rtol"]
        here, there = ("2 cores", "1 core") if ladder_threads == 2 else ("1 core", "2 cores")
        row.update({"tolerance": tol, "max_error": last["max_error"], here: _ms(last, n), "ladder_threads": ladder_threads,
                    "at_ladder_start": len(rungs) == 1})  # then a looser tolerance might also do
        for k in ("compile_seconds", "nfev_mean", "nfev_mean_estimate", "steps_max", "failed"):
            if k in last:
                row[k] = last[k]
        r1, why = measure(name, n, [tol], 3 - ladder_threads, ref_path, timeout=timeout, log=log)
        row[there] = _ms(r1[0], n) if r1 is not None else {"skipped": why}
        if r1 is not None and "compile_seconds" in r1[0]:
            row[f"compile_seconds_{there.replace(' ', '_')}"] = r1[0]["compile_seconds"]
        if name.startswith("scipy"):  # the loop uses one core; two processes use both
            row["2 cores, 1 process"] = row["2 cores"]
            rp, why = measure(name, n, [tol], 1, ref_path, procs=2, timeout=timeout, log=log)
            row["2 cores"] = {**_ms(rp[0], n), "how": "2 processes"} if rp is not None else {"skipped": why}
        rows[name] = row
    tmp.cleanup()
    out["rows"] = rows
    out["load_average_at_end"] = os.getloadavg()
    return out


def batch_check(res, n, ours_rtol, procs=2, timeout=1800, log=print) -> dict:
    """The batched peers (torchode, diffrax) again on ``n`` configs in one batch, on 2 cores, each at the
    tolerance the peer table chose, beside ours on the same ``n`` configs: whether the table's small batch
    flatters ours (a batch shares a step's fixed cost, but marches in lock step with its slowest member).
    Returns {"configs": n, "rows": {name: {...}}}; the target is ours' max error on these n configs."""
    from bench_dynamics import reference_spectra, sample_indices

    ref = reference_spectra(sample_indices(n), procs=procs, log=log)
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = Path(tmp) / "ref.npz"
        np.savez(ref_path, s=ref)
        rows = {}
        rungs, errors = measure("ours", n, [ours_rtol], 2, ref_path, log=log)
        if rungs is None:
            raise RuntimeError(f"ours: {errors}")
        target = float(errors.max())
        rows["ours (numba dop853)"] = {"tolerance": ours_rtol, "max_error": target, **_ms(rungs[0], n)}
        for name, row in res["rows"].items():
            if name not in PEERS or not name.startswith(("torchode", "diffrax")) or "tolerance" not in row:
                continue
            rungs, errors = measure(name, n, [row["tolerance"]], 2, ref_path, timeout=timeout, log=log)
            if rungs is None:
                rows[name] = {"skipped": errors}
                continue
            rows[name] = {"tolerance": row["tolerance"], "max_error": float(errors.max()),
                          "reaches_target": bool(errors.max() <= target), **_ms(rungs[0], n),
                          "ms_per_config_at_table_batch": row["2 cores"]["ms_per_config"]}
    return {"configs": n, "target_error": target, "threads": 2, "rows": rows, "load_average_at_end": os.getloadavg()}


def _ms(rung, n):
    """A rung's wall time and process CPU time (the pool workers' for the scipy pool) per config, in ms."""
    return {"ms_per_config": 1e3 * rung["seconds"] / n, "cpu_ms_per_config": 1e3 * rung["cpu_seconds"] / n,
            "load_average_1min": rung["load_average_1min"]}


def print_table(res) -> None:
    def ms(d, key="ms_per_config"):
        return f"{d[key]:10.1f}" if isinstance(d, dict) and key in d else f"{'-':>10s}"

    print(f"\npeers at equal accuracy (ours at rtol {res['ours_rtol']:g}; max error in s vs scipy DOP853 rtol 1e-12 "
          f"on the same configs), ms per config: wall, and CPU time on 1 core")
    print(f"{'method':22s} {'rtol':>7s} {'max err':>9s} {'configs':>8s} {'1 core':>10s} {'1 core CPU':>10s} "
          f"{'2 cores':>10s} {'busy nbr':>10s} {'2c BLAS=1':>10s}")
    for name, r in res["rows"].items():
        if "tolerance" not in r:
            print(f"{name:22s} skipped: {r.get('skipped')}")
            continue
        print(f"{name:22s} {r['tolerance']:7.0e} {r['max_error']:9.1e} {r['configs']:8d} {ms(r.get('1 core'))} "
              f"{ms(r.get('1 core'), 'cpu_ms_per_config')} {ms(r.get('2 cores'))} {ms(r.get('busy neighbour'))} "
              f"{ms(r.get('2 cores, OPENBLAS_NUM_THREADS=1'))}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_main(sys.argv[2:])
    else:
        print(__doc__)
