"""Verbs ``simulate``, ``sweep`` and ``check``: the linear theory from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections import Counter
from pathlib import Path

from stopgrad.config import ConfigError, build, load_toml

SIM_TABLES = ("model", "solver", "grid", "modes", "sampled", "initial")


def simulation_from_dict(doc: dict):
    """Build a validated :class:`Simulation` from a parsed TOML document.

    Layout: ``[model]`` (with ``[model.data]``, ``[model.init]``, ``[model.rule]``), ``[simulate]``
    (engine, t_end, n_save, save_times, backend, collapse_tol, tau), ``[solver]``, ``[grid]`` (swept
    values), ``[modes]`` (per-mode initial state), ``[sampled]`` (SGD settings) and the explicit
    initial state: ``initial = "state.npz"`` or ``"result.nc"`` under ``[simulate]``, or a table
    ``[initial]`` of fields with ``.npy`` paths (``W = "W0.npy"``; see stopgrad.dynamics.InitialState).
    """
    from stopgrad.dynamics import Simulation

    if isinstance(doc.get("simulate"), dict) and doc["simulate"].get("engine") == "siamese":
        return _siamese_from_dict(doc)
    allowed = ("simulate",) + SIM_TABLES
    for key in doc:
        if key not in allowed:
            raise ConfigError(key, doc[key] if not isinstance(doc[key], dict) else "[table]",
                              f"unknown table; allowed: {', '.join(allowed)}")
    top = doc.get("simulate", {})
    if not isinstance(top, dict):
        raise ConfigError("simulate", top, "must be a table [simulate]")
    for key in top:
        if key in SIM_TABLES and not (key == "initial" and isinstance(top[key], str)):
            raise ConfigError(f"simulate.{key}", "...", f"belongs in its own table [{key}]")
    table = dict(top)
    table.update({k: doc[k] for k in SIM_TABLES if k in doc})
    try:
        return build(Simulation, table)
    except ConfigError as err:
        head = err.key.split(".")[0].split("[")[0]
        if head in top:
            raise ConfigError(f"simulate.{err.key}", err.value, err.rule) from None
        raise


SIAMESE_TABLES = ("data", "train", "grid")


def _siamese_from_dict(doc: dict):
    """``engine = "siamese"``: [simulate] (engine, steps, n_save, eval_size, seed), [data], [train], [grid]."""
    from stopgrad.dynamics import SiameseSimulation

    allowed = ("simulate",) + SIAMESE_TABLES
    for key in doc:
        if key not in allowed:
            raise ConfigError(key, "[table]", f"unknown table for engine 'siamese'; allowed: {', '.join(allowed)}")
    table = dict(doc["simulate"])
    table.update({k: doc[k] for k in SIAMESE_TABLES if k in doc})
    return build(SiameseSimulation, table)


def _load_simulation(path: str):
    return simulation_from_dict(load_toml(path))


def _summary(ds) -> str:
    counts = Counter(ds["verdict"].values.tolist())
    verdicts = ", ".join(f"{v}: {n}" for v, n in sorted(counts.items()))
    below = int(ds.attrs.get("below_atol_runs", 0))
    note = (f"; {below} run(s) with a mode below the solver's atol (not resolved there: see below_atol)"
            if below else "")
    return (f"{ds.sizes['run']} run(s), engine {ds.attrs['engine']} ({ds.attrs['backend']}), "
            f"{ds.attrs['wall_seconds']:.2f} s; collapse at t_end: {verdicts}{note}")


def _plan(sim, out) -> str:
    grid = " x ".join(f"{k}[{len(v)}]" for k, v in sim.grid.items())
    if sim.engine == "siamese":
        t = sim.train
        return (f"stopgrad: {len(sim.runs())} run(s){' over ' + grid if grid else ''}: {t.method} {t.encoder} "
                f"{sim.data.n1}x{t.n2}, engine siamese, {sim.steps} steps, {sim.n_save} saves -> {out}")
    m = sim.model
    return (f"stopgrad: {sim.n_runs} run(s){' over ' + grid if grid else ''}: {m.method} {m.n1}x{m.n2}, "
            f"engine {sim.engine}, t_end {sim.t_end:g}, {sim.n_save} saves -> {out}")


def _run(args, require_grid: bool) -> int:
    import warnings

    from stopgrad.analysis import write_netcdf
    from stopgrad.dynamics import SiameseSimulation, simulate, simulate_siamese

    from .guards import check_fits, check_output, check_steps, siamese_memory, simulation_memory

    sim = _load_simulation(args.config)
    siamese = isinstance(sim, SiameseSimulation)
    if siamese:
        simulate = simulate_siamese  # noqa: F811  the four-view Siamese / contrastive simulator
    if require_grid and not sim.grid:
        raise ConfigError("grid", "{}", "a sweep needs a [grid] table with at least one swept parameter")
    if getattr(args, "scheduler", None) is not None:
        return _run_distributed(args, sim)
    check_output(args.out, inputs=[args.config])
    need, detail = siamese_memory(sim) if siamese else simulation_memory(sim)
    check_fits(need, detail, "grid" if sim.grid else "model", f"{len(sim.runs()) if siamese else sim.n_runs} run(s)")
    if not siamese:  # the step estimate is the flow's; the siamese engine takes a given number of SGD steps
        check_steps(sim)
    print(_plan(sim, args.out), file=sys.stderr, flush=True)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        ds = simulate(sim, progress=progress)
    out = write_netcdf(ds, args.out)
    print(f"wrote {out}: {_summary(ds)}")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return 0


#: the Python API's argument names -> the CLI's options, for the one-line errors
_OPTIONS = {"scheduler": "--scheduler", "chunk_runs": "--chunk-runs"}


def _run_distributed(args, sim) -> int:
    """``sweep --scheduler``: the grid in chunks on a dask.distributed cluster (stopgrad.dynamics.distributed)."""
    import os
    import warnings

    from stopgrad.dynamics import SiameseSimulation, chunk_folder, plan_chunks, require_distributed, sweep_distributed

    from .guards import check_fits, check_output, check_steps, format_bytes, simulation_memory

    try:
        if isinstance(sim, SiameseSimulation):
            raise ConfigError("simulate.engine", "siamese", "is not chunked: run it without --scheduler")
        require_distributed()
        check_output(args.out, inputs=[args.config])
        check_output(chunk_folder(args.out), kind="dir", key="--out (its chunk folder)")
        plan = plan_chunks(sim, args.out, args.chunk_runs)
        # memory is bounded by a chunk per worker, not by the grid: a grid the in-process sweep refuses may run
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = cores if args.scheduler == "local" else 1
        need, detail = simulation_memory(sim, n_runs=plan.chunk_runs)
        check_fits(need * workers, f"{workers} worker(s) at once, each one chunk of {detail}", "--chunk-runs",
                   plan.chunk_runs)
        check_steps(sim)
        done = f"; {len(plan.done)} already written in {plan.folder}, skipped" if plan.done else ""
        print(f"{_plan(sim, args.out)}\nstopgrad: {plan.n_chunks} chunk(s) of {plan.chunk_runs} run(s) (at least "
              f"{format_bytes(need)} each) on {args.scheduler}{done}", file=sys.stderr, flush=True)
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            rep = sweep_distributed(sim, args.out, scheduler=args.scheduler, chunk_runs=plan.chunk_runs,
                                    progress=progress, keep_chunks=args.keep_chunks)
    except ConfigError as err:
        if err.key in _OPTIONS:
            raise ConfigError(_OPTIONS[err.key], err.value, err.rule) from None
        raise
    verdicts = ", ".join(f"{v}: {n}" for v, n in sorted(rep.verdicts.items()))
    resumed = f" ({rep.chunks_skipped} already written: skipped)" if rep.chunks_skipped else ""
    print(f"wrote {rep.path}: {rep.n_runs} run(s) in {rep.n_chunks} chunk(s) of {rep.chunk_runs}{resumed}, "
          f"engine {sim.engine} ({rep.backend}), {rep.workers} worker thread(s) at {rep.scheduler}; "
          f"{rep.chunks_run} chunk(s) run at {rep.runs_per_second:,.0f} runs/s, combine {rep.combine_seconds:.2f} s, "
          f"{rep.elapsed_seconds:.2f} s in all; collapse at t_end: {verdicts}")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return 0


def cmd_simulate(args) -> int:
    return _run(args, require_grid=False)


def cmd_sweep(args) -> int:
    return _run(args, require_grid=True)


def format_check_table(results) -> str:
    """A plain-text table of check results, one block per check."""
    lines = [f"{'check':20s} {'verdict':7s} {'residual':>10s} {'tolerance':>10s} {'time':>7s}  statement"]
    lines.append("-" * 100)
    for r in results:
        verdict = "PASS" if r.passed else "FAIL"
        lines.append(f"{r.name:20s} {verdict:7s} {r.residual:10.2e} {r.tolerance:10.2g} {r.seconds:6.1f}s  {r.statement}")
        if r.detail:
            lines.extend(textwrap.wrap(r.detail, 120, initial_indent=" " * 22, subsequent_indent=" " * 22))
    n_fail = sum(not r.passed for r in results)
    lines.append("-" * 100)
    lines.append(f"{len(results) - n_fail}/{len(results)} checks passed" + (f"; {n_fail} FAILED" if n_fail else ""))
    return "\n".join(lines)


def cmd_check(args) -> int:
    from stopgrad.dynamics import theorems

    from .guards import check_output, check_seed

    check_seed("--seed", args.seed)
    if args.json is not None:
        check_output(args.json, key="--json")
    results = theorems.run_checks(seed=args.seed, only=args.only, progress=sys.stderr.isatty())
    print(format_check_table(results))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"name": r.name, "statement": r.statement, "residual": r.residual, "tolerance": r.tolerance,
                 "passed": r.passed, "detail": r.detail, "seconds": r.seconds, **r.extra} for r in results]
        path.write_text(json.dumps({"seed": args.seed, "checks": rows}, indent=2))
    return 0 if all(r.passed for r in results) else 1


def _progress_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None, help="show a progress bar")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def register(sub) -> None:
    p = sub.add_parser("simulate", help="integrate a linear model (matrix flow, per-mode ODE, Eq. 7 or sampled SGD)",
                       description="Integrate the linear model described by CONFIG and write the Dataset to --out.")
    p.add_argument("config", help="TOML config (see configs/linear-*.toml)")
    p.add_argument("--out", required=True, help="output netCDF file")
    _progress_flags(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("sweep", help="a batched grid over hyperparameters, one Dataset with a run dim",
                       description="Run the [grid] of CONFIG as one batched integration; verdict per run.")
    p.add_argument("config", help="TOML config with a [grid] table")
    p.add_argument("--out", required=True, help="output netCDF file")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the grid in chunks on a dask.distributed cluster: 'local' (a cluster of processes "
                        "using every core here) or a scheduler address (tcp://host:8786); chunks go to OUT.chunks/ "
                        "and a killed sweep resumes from them (needs pip install 'stopgrad[distributed]'; "
                        "without it the sweep runs in this process)")
    p.add_argument("--chunk-runs", type=int, metavar="N",
                   help="runs per chunk with --scheduler (default: at most 64 MiB of saved trajectories a "
                        "chunk and at least 64 chunks; a resumed sweep keeps its chunking)")
    p.add_argument("--keep-chunks", action="store_true", help="with --scheduler: keep OUT.chunks/ after writing OUT")
    _progress_flags(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("check", help="every theorem and closed form, numerically; non-zero exit on failure",
                       description="Run the numerical checks of Theorems 1-3, the per-mode reduction, fixed points, "
                                   "thresholds, sympy derivations and sampled-vs-ODE agreement.")
    p.add_argument("--seed", type=int, default=0, help="seed of the random configurations (default 0)")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="run only these checks (also the slow ones the default run leaves out: contrastive_pca_moco)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=cmd_check)
