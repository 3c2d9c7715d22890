"""Benchmark: a 10^7-point per-mode grid through ``stopgrad sweep --scheduler local`` against the in-process sweep.

The grid: BYOL mode (p, w, w_a), n1 = n2 = 1, sigma2 = 0.5, s(0) = 0.1, w_a(0) = 0, p(0) x eta on
1000 x 10,000 points, T = 100, 3 saves, dopri5 rtol 1e-6 (bench_dynamics.py's grid, ten times larger).

Measured, each in its own process, as a user runs it:

A. ``stopgrad sweep --scheduler local`` on the 10^7 grid (default chunking): wall time, runs per second,
   the combine's time, and the peak resident memory (VmHWM) of the client process (which also hosts the
   local scheduler and the nannies) and of each worker process, sampled every 0.2 s from /proc.
B. The in-process ``stopgrad sweep`` on a 10^6 subset (p(0) x eta on 1000 x 1000): the same numbers.
   The 10^7 grid in-process peaks at 7.6 GB (measured), so it runs only when asked: ``--inprocess-full``,
   or ``--add-inprocess-full`` to add it alone to an existing JSON; it is stopped past
   ``--memory-limit-mib`` (14 GiB) of resident memory, since the machine is shared.
C. The costs that set the time on N machines, on a LocalCluster configured as ``--scheduler local``:
   start-up (cluster, then the workers' first import of stopgrad), the scheduler's throughput on
   trivial tasks, the cost of a chunk with ~0 work (one run: building, checking and writing a chunk),
   the combine's cost per chunk file, and (``--compare-workers``) 2 workers x 1 numba thread against
   1 worker x 2 numba threads on the 10^6 grid.

Then a projection of the 10^7 grid on N machines of c cores (see ``projection`` in the JSON).

    python benchmarks/bench_distributed.py [--eta 10000] [--workdir /tmp/...] [--compare-workers]
    python benchmarks/bench_distributed.py --add-inprocess-full

Prints a table and writes benchmarks/results/distributed-cpu.json. The result files (~5 GB for 10^7 runs)
go to --workdir and are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]

CONFIG = """# bench_distributed.py: BYOL per-mode grid (bench_dynamics.py's grid B), {n_p0} x {n_eta} points
[model]
n1 = 1
n2 = 1
method = "byol"
beta = 0.5
eta = 0.05
[model.data]
sigma2 = 0.5
[model.init]
wa = "zero"
[simulate]
engine = "modes"
t_end = 100.0
n_save = 3
[modes]
s0 = 0.1
[solver]
method = "dopri5"
rtol = 1e-6
atol = 1e-8
[grid]
p0 = {p0}
eta = {eta}
"""


def write_config(path: Path, n_p0: int, n_eta: int) -> Path:
    import numpy as np

    p0 = np.linspace(-0.5, 1.0, n_p0).tolist()
    eta = np.linspace(0.0, 0.2, n_eta).tolist()
    path.write_text(CONFIG.format(n_p0=n_p0, n_eta=n_eta, p0=json.dumps(p0), eta=json.dumps(eta)))
    return path


def _hwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM, KiB) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_measured(cmd: list[str], env: dict | None = None, limit_mib: float | None = None) -> dict:
    """Run ``cmd``; sample the peak RSS of it and of every descendant every 0.2 s. Returns wall time,
    output and per-process peaks (client = the command's own process; workers = spawned processes).
    ``limit_mib``: kill the command when its resident memory passes this (the machine is shared)."""
    import psutil

    peaks: dict[int, int] = {}
    roles: dict[int, str] = {}
    killed: list[int] = []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stop = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                procs = []
            for p in procs:
                kib = _hwm_kib(p.pid)
                if kib is None:
                    continue
                peaks[p.pid] = max(peaks.get(p.pid, 0), kib)
                if limit_mib is not None and kib > limit_mib * 1024:
                    killed.append(kib)
                    proc.kill()
                if p.pid not in roles:
                    line = _cmdline(p.pid)
                    roles[p.pid] = ("client" if p.pid == proc.pid else "resource_tracker" if "resource_tracker" in line
                                    else "worker" if "spawn_main" in line else "other")
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if killed:
        raise MemoryError(f"{' '.join(cmd[:4])}... passed {limit_mib} MiB of resident memory and was stopped")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
    return {"wall_seconds": wall, "stdout": out.strip(), "stderr_tail": err.strip()[-600:],
            "peak_rss_client_mib": mib(peaks.get(proc.pid, 0)),
            "peak_rss_workers_mib": [mib(v) for k, v in sorted(peaks.items()) if roles.get(k) == "worker"],
            "peak_rss_other_mib": {f"{roles.get(k)}-{k}": mib(v) for k, v in sorted(peaks.items())
                                   if roles.get(k) not in ("client", "worker")}}


def result_numbers(path: Path) -> dict:
    """From the result file: its runs, the integration seconds (attribute wall_seconds, summed over
    chunks), the chunking and the file's size."""
    import xarray as xr

    with xr.open_dataset(path) as ds:
        attr = lambda k: ds.attrs[k].item() if hasattr(ds.attrs[k], "item") else ds.attrs[k]  # noqa: E731
        out = {"runs": int(ds.sizes["run"]), "integration_seconds": float(attr("wall_seconds")),
               "backend": attr("backend"), "nfev_mean": float(ds["nfev"].mean())}
        out.update({k: attr(k) for k in ("n_chunks", "chunk_runs") if k in ds.attrs})
    out["file_bytes"] = path.stat().st_size
    return out


def stopgrad_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stopgrad.cli", "sweep", *args, "--no-progress"]


def bench_inprocess(cfg: Path, out: Path, limit_mib: float | None = None) -> dict:
    m = run_measured(stopgrad_cmd(str(cfg), "--out", str(out)), limit_mib=limit_mib)
    m.update(result_numbers(out))
    m["runs_per_second_end_to_end"] = m["runs"] / m["wall_seconds"]
    m["runs_per_second_integration"] = m["runs"] / m["integration_seconds"]
    out.unlink()
    return m


def bench_distributed(cfg: Path, out: Path, chunk_runs: int | None) -> dict:
    extra = ["--chunk-runs", str(chunk_runs)] if chunk_runs else []
    m = run_measured(stopgrad_cmd(str(cfg), "--out", str(out), "--scheduler", "local", *extra))
    m.update(result_numbers(out))
    line = m["stdout"]
    m["combine_seconds"] = float(re.search(r"combine ([\d.]+) s", line).group(1))
    m["chunk_phase_runs_per_second"] = float(re.search(r"run at ([\d,]+) runs/s", line).group(1).replace(",", ""))
    m["runs_per_second_end_to_end"] = m["runs"] / m["wall_seconds"]
    out.unlink()
    return m


def bench_costs(workdir: Path, n_tiny: int, n_trivial: int) -> dict:
    """Start-up, scheduler throughput, the cost of a near-empty chunk and of combining a chunk file, on a
    LocalCluster configured as ``--scheduler local``."""
    import operator

    import dask
    import numpy as np
    from distributed import Client, LocalCluster, wait

    from stopgrad.dynamics import DataSpec, InitSpec, LinearModel, ModeInit, Simulation, Solver
    from stopgrad.dynamics.distributed import MANIFEST, _combine, _gather, _run_chunk, plan_chunks

    out: dict = {}
    n_workers = len(os.sched_getaffinity(0))
    model = LinearModel(n1=1, n2=1, method="byol", beta=0.5, eta=0.05, data=DataSpec(sigma2=0.5),
                        init=InitSpec(wa="zero"))
    # one run per chunk: the warm-up chunks (one per worker) and the timed ones
    sim = Simulation(model=model, engine="modes", t_end=100.0, n_save=3, modes=ModeInit(s0=0.1),
                     grid={"p0": np.linspace(-0.5, 1.0, n_workers + n_tiny).tolist(), "eta": [0.05]},
                     solver=Solver(method="dopri5", rtol=1e-6, atol=1e-8))
    plan = plan_chunks(sim, workdir / "tiny.nc", chunk_runs=1)
    plan.folder.mkdir(parents=True, exist_ok=True)
    (plan.folder / MANIFEST).write_text(json.dumps(plan.manifest()))
    env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    t = time.perf_counter()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      env=env) as cluster, Client(cluster) as client:
        out["cluster_start_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        client.run(__import__, "stopgrad.dynamics")
        out["worker_import_seconds"] = time.perf_counter() - t
        # scheduler throughput: trivial tasks, submitted at once, waited for. With dask's default queuing
        # (worker-saturation 1.1) a worker gets its next task when it reports the last one: a round trip per
        # task and worker; the serial cost of the scheduler itself is measured without queuing, on a
        # cluster of its own below
        client.gather(client.map(operator.neg, range(100)))  # warm
        t = time.perf_counter()
        futs = client.map(operator.neg, range(n_trivial))
        wait(futs)
        out["tasks_per_second_queued"] = n_trivial / (time.perf_counter() - t)
        out["trivial_tasks"] = n_trivial
        del futs
        # chunks of one run: a chunk's fixed costs (table, flow, Dataset, checks, netCDF write)
        sim_f = client.scatter(sim, broadcast=True)
        submit = lambda i: client.submit(_run_chunk, sim_f, i, *plan.bounds(i), str(plan.path(i)), plan.digest,  # noqa: E731
                                         pure=False)
        client.gather([submit(i) for i in range(n_workers)])  # first-call costs (kernels loaded) paid here
        t = time.perf_counter()
        res = client.gather([submit(i) for i in range(n_workers, n_workers + n_tiny)])
        out["tiny_chunk_worker_seconds"] = (time.perf_counter() - t) * n_workers / n_tiny
        out["tiny_chunk_task_seconds_median_before_write"] = float(np.median([r["seconds"] for r in res]))
        out["tiny_chunks"] = n_tiny
        out["workers"] = n_workers
    with dask.config.set({"distributed.scheduler.worker-saturation": float("inf")}), LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.gather(client.map(operator.neg, range(100)))
        t = time.perf_counter()
        futs = client.map(operator.neg, range(n_trivial))
        wait(futs)
        out["scheduler_tasks_per_second"] = n_trivial / (time.perf_counter() - t)
        del futs
    attrs, _ = _gather(plan, {}, "bench")
    t = time.perf_counter()
    _combine(plan, workdir / "tiny-combined.nc", attrs)
    out["combine_seconds_per_file"] = (time.perf_counter() - t) / plan.n_chunks
    out["combine_files"] = plan.n_chunks
    shutil.rmtree(plan.folder)
    (workdir / "tiny-combined.nc").unlink()
    return out


def bench_worker_layout(cfg: Path, warm_cfg: Path, workdir: Path) -> dict:
    """The 10^6 grid on 2 workers x 1 numba thread against 1 worker x 2 numba threads."""
    from distributed import Client, LocalCluster

    from stopgrad.cmd_dynamics import simulation_from_dict
    from stopgrad.config import load_toml
    from stopgrad.dynamics import sweep_distributed

    sim = simulation_from_dict(load_toml(str(cfg)))
    warm = simulation_from_dict(load_toml(str(warm_cfg)))
    out = {}
    for name, n_workers, threads in (("2 workers x 1 numba thread", 2, "1"), ("1 worker x 2 numba threads", 1, "2")):
        env = {"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": "1"}
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          env=env) as cluster, Client(cluster) as client:
            client.run(__import__, "stopgrad.dynamics")
            path = workdir / "layout.nc"
            sweep_distributed(warm, path, scheduler=client, chunk_runs=1)  # warm: kernels loaded in every worker
            path.unlink()
            rep = sweep_distributed(sim, path, scheduler=client)
            path.unlink()
        out[name] = {"runs_per_second": rep.runs_per_second, "combine_seconds": rep.combine_seconds,
                     "elapsed_seconds": rep.elapsed_seconds, "n_chunks": rep.n_chunks}
    return out


def project(dist: dict, costs: dict, inproc: dict) -> dict:
    """T(N) for the 10^7 grid on N machines of c cores, from the measured pieces (see the notes)."""
    R = dist["runs"]
    workers = costs["workers"]  # this machine's worker processes (one per core)
    kernel_per_run = dist["integration_seconds"] / R  # integration core-seconds per run (summed over chunks)
    chunk_phase = R / dist["chunk_phase_runs_per_second"]  # wall seconds of the chunk phase on this machine
    per_run = chunk_phase * workers / R  # worker-seconds per run: kernel + building + writing
    fixed = costs["tiny_chunk_worker_seconds"]  # worker-seconds of a chunk's fixed costs
    sched = 1.0 / costs["scheduler_tasks_per_second"]  # scheduler seconds per task (serial)
    t_file = costs["combine_seconds_per_file"]
    combine_per_run = max(0.0, dist["combine_seconds"] - dist["n_chunks"] * t_file) / R
    startup = dist["wall_seconds"] - chunk_phase - dist["combine_seconds"]
    rows = []
    for n_machines in (1, 2, 4, 8, 16, 32, 64):
        for cores in (2, 32):
            threads = n_machines * cores
            n_chunks = max(64, threads)  # the default 64, or one chunk per worker thread (--chunk-runs)
            rounds = -(-n_chunks // threads)  # chunks run in rounds of one per thread
            compute = rounds * (fixed + (R / n_chunks) * per_run)
            t = startup + compute + n_chunks * sched + R * combine_per_run + n_chunks * t_file
            rows.append({"machines": n_machines, "cores_each": cores, "chunks": n_chunks, "chunk_runs": -(-R // n_chunks),
                         "compute_seconds": compute, "total_seconds": t, "runs_per_second": R / t})
    return {
        "model": "T(N) = T_start + ceil(n_chunks / (N c)) * (t_chunk + (R / n_chunks) * t_run) "
                 "+ n_chunks * t_sched + R * t_combine_run + n_chunks * t_combine_file",
        "T_start_seconds": startup, "t_run_worker_seconds": per_run, "t_run_kernel_core_seconds": kernel_per_run,
        "t_chunk_seconds": fixed, "scheduler_seconds_per_task": sched, "t_combine_run_seconds": combine_per_run,
        "t_combine_file_seconds": t_file,
        "notes": ["T_start: the 10^7 run's wall time less its chunk phase and combine (the CLI's imports, the "
                  "cluster's start, the workers' first import of stopgrad); a batch system's queue comes on top",
                  "scheduler_seconds_per_task: 1 / the throughput of trivial tasks without queuing (the "
                  "scheduler's serial cost); the round trip per task with queuing is inside t_chunk",
                  "t_run: the chunk phase measured here (wall x workers / runs): integration plus building, "
                  "checking and writing the chunk's Dataset; assumes the shared file system keeps up",
                  "the combine runs on the client alone: it does not shrink with N and bounds the speed-up",
                  "n_chunks = max(64, one per worker thread) (--chunk-runs); runs cost alike on average over a "
                  "chunk, so the rounds are even",
                  "the file system is assumed to keep up: the chunks (the result's size) are written once by the "
                  "workers, read once and written once by the client",
                  f"in-process reference: {inproc['runs_per_second_end_to_end']:.0f} runs/s end to end on the 10^6 "
                  "subset"],
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p0", type=int, default=1000)
    ap.add_argument("--eta", type=int, default=10000, help="eta points of the full grid (10^7 with --p0 1000)")
    ap.add_argument("--subset-eta", type=int, default=1000, help="eta points of the in-process subset")
    ap.add_argument("--chunk-runs", type=int, default=None)
    ap.add_argument("--tiny-chunks", type=int, default=40)
    ap.add_argument("--trivial-tasks", type=int, default=5000)
    ap.add_argument("--compare-workers", action="store_true", help="also time the 10^6 grid on 1 worker x 2 threads")
    ap.add_argument("--inprocess-full", action="store_true", help="also run the full grid in-process (memory!)")
    ap.add_argument("--add-inprocess-full", action="store_true",
                    help="only run the full grid in-process and add it to an existing --out JSON")
    ap.add_argument("--memory-limit-mib", type=float, default=14 * 1024,
                    help="stop the full in-process run past this resident memory (default 14 GiB)")
    ap.add_argument("--workdir", default="/tmp/stopgrad-bench-distributed")
    ap.add_argument("--out", default=str(RESULTS / "distributed-cpu.json"))
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    import distributed
    import numba

    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                          "python": platform.python_version(), "numba": numba.__version__,
                          "distributed": distributed.__version__},
              "loadavg_before": os.getloadavg()}
    full = write_config(workdir / "full.toml", args.p0, args.eta)
    if args.add_inprocess_full:
        path = Path(args.out)
        result = json.loads(path.read_text())
        before = os.getloadavg()
        print(f"in-process sweep, {args.p0} x {args.eta} ...", flush=True)
        try:
            full_run = bench_inprocess(full, workdir / "full-inprocess.nc", args.memory_limit_mib)
        except MemoryError as exc:
            full_run = {"stopped": str(exc)}
        full_run.update(loadavg_before=before, loadavg_after=os.getloadavg())
        result["inprocess_full"] = full_run
        path.write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in full_run.items() if k != "stdout"}, indent=1))
        return
    subset = write_config(workdir / "subset.toml", args.p0, args.subset_eta)
    tiny = write_config(workdir / "tiny.toml", 8, 8)
    base = run_measured([sys.executable, "-c", "import stopgrad.cli, stopgrad.cmd_dynamics, stopgrad.dynamics"])
    result["baseline_rss_mib"] = base["peak_rss_client_mib"]  # a process that has imported stopgrad, nothing else
    run_measured(stopgrad_cmd(str(tiny), "--out", str(workdir / "warm.nc")))  # numba's cache: compiled once here
    (workdir / "warm.nc").unlink()
    print("costs (start-up, scheduler, chunk overhead, combine per file) ...", flush=True)
    result["costs"] = bench_costs(workdir, args.tiny_chunks, args.trivial_tasks)
    print(f"in-process sweep, {args.p0} x {args.subset_eta} ...", flush=True)
    result["inprocess_subset"] = bench_inprocess(subset, workdir / "subset.nc")
    if args.compare_workers:
        print("worker layout on the subset ...", flush=True)
        result["worker_layout_subset"] = bench_worker_layout(subset, tiny, workdir)
    print(f"distributed sweep --scheduler local, {args.p0} x {args.eta} ...", flush=True)
    result["distributed_full"] = bench_distributed(full, workdir / "full.nc", args.chunk_runs)
    if args.inprocess_full:
        print("in-process sweep of the full grid ...", flush=True)
        result["inprocess_full"] = bench_inprocess(full, workdir / "full-inprocess.nc", args.memory_limit_mib)
    result["loadavg_after"] = os.getloadavg()
    result["projection"] = project(result["distributed_full"], result["costs"], result["inprocess_subset"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    d, s, c = result["distributed_full"], result["inprocess_subset"], result["costs"]
    print(f"\n{'run':52s} {'wall':>9s} {'runs/s':>10s} {'client':>9s} {'workers (peak RSS)':>22s}")
    print(f"{'in-process sweep, ' + format(s['runs'], ',') + ' runs':52s} {s['wall_seconds']:8.1f}s "
          f"{s['runs_per_second_end_to_end']:10,.0f} {s['peak_rss_client_mib']:7.0f}MB {'-':>22s}")
    print(f"{'  its integration alone':52s} {s['integration_seconds']:8.1f}s {s['runs_per_second_integration']:10,.0f}")
    workers = ", ".join(f"{w:.0f}" for w in d["peak_rss_workers_mib"])
    print(f"{'--scheduler local, ' + format(d['runs'], ',') + ' runs, ' + str(d['n_chunks']) + ' chunks':52s} "
          f"{d['wall_seconds']:8.1f}s {d['runs_per_second_end_to_end']:10,.0f} {d['peak_rss_client_mib']:7.0f}MB "
          f"{workers + ' MB':>22s}")
    print(f"{'  chunk phase (integrate + write chunks)':52s} {d['runs'] / d['chunk_phase_runs_per_second']:8.1f}s "
          f"{d['chunk_phase_runs_per_second']:10,.0f}")
    print(f"{'  combine (client, serial)':52s} {d['combine_seconds']:8.1f}s")
    print(f"start-up {c['cluster_start_seconds']:.1f} s + worker imports {c['worker_import_seconds']:.1f} s; scheduler "
          f"{c['scheduler_tasks_per_second']:,.0f} trivial tasks/s ({c['tasks_per_second_queued']:,.0f} with queuing); a one-run chunk {c['tiny_chunk_worker_seconds']:.3f} "
          f"worker-s; combine {c['combine_seconds_per_file']:.3f} s per chunk file")
    print(f"peak RSS of a process that only imported stopgrad: {result['baseline_rss_mib']:.0f} MB")
    for name, v in result.get("worker_layout_subset", {}).items():
        print(f"  10^6 subset, {name}: {v['runs_per_second']:,.0f} runs/s in the chunk phase")
    print(f"\nprojected time of the {d['runs']:,}-run grid ({result['projection']['model']}):")
    for row in result["projection"]["rows"]:
        print(f"  {row['machines']:3d} machine(s) x {row['cores_each']:2d} cores, {row['chunks']:5d} chunks: "
              f"{row['total_seconds']:8.1f} s ({row['runs_per_second']:10,.0f} runs/s)")
    print(f"loadavg before {result['loadavg_before']}, after {result['loadavg_after']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
