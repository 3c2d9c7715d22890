"""Sweeps past one machine: a grid in chunks of runs on a ``dask.distributed`` cluster, streamed to disk.

:func:`sweep_distributed` cuts the sweep's run axis into chunks of ``chunk_runs`` runs. Each chunk is
one dask task: a worker builds that chunk's rows of the run table
(``RunTable.from_simulation(sim, rows=(lo, hi))``), integrates them with the same kernels as
:func:`~stopgrad.dynamics.sweep` (:func:`~stopgrad.dynamics.simulate.simulate_table`: the same seeds,
initial draws and kernel choice, so on the numba backends every run is bitwise what the in-process
sweep gives) and writes the chunk's Dataset atomically to ``RESULT.chunks/chunk-NNNN.nc``. When every
chunk is on disk the client concatenates them along ``run`` into RESULT, streaming one chunk at a time,
and removes the folder.

Memory: a worker holds one chunk at a time, the client at most one chunk of one variable; neither grows
with the grid. Disk: the chunks and RESULT, about twice the result's size, at the end.

Resume: the folder's ``manifest.json`` names the config (a SHA-256 of the full config) and the chunking.
Run the same sweep again and the chunks already written are skipped; a chunk file exists only once
complete (written to a temporary name, then renamed) and is checked (its config digest, index and run
range) before it counts. Another config, or another ``chunk_runs``, is refused in that folder.

Where things run: RESULT's folder must be readable and writable by the client and every worker (a
shared file system on a cluster; trivially so on one machine).

Bitwise: the numba backends (the CPU default for the per-mode engine and the isotropic matrix flow)
integrate each run on its own, so a chunked sweep equals the in-process one bit for bit. The torch
backend (symmetrized and non-isotropic flows, user rules, the GPU) batches runs through matrix
products whose rounding depends on the batch, so chunks agree with it to rounding (measured: 2e-13 of
max s, same nfev and verdicts), not bitwise. The sampled engine draws one sample stream for the whole
batch of runs and is not chunked.

dask and distributed are an optional extra (``pip install 'stopgrad[distributed]'``), imported here
only when a distributed sweep runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import sys
import time as _time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from stopgrad.analysis import atomic_path, write_netcdf

from ._checks import ConfigError, check, check_range
from .results import config_json, saved_bytes_per_run
from .runs import RunTable
from .simulate import simulate_table
from .specs import Simulation

__all__ = ["CHUNK_BYTES", "INSTALL_HINT", "ChunkPlan", "SweepReport", "chunk_folder", "plan_chunks",
           "require_distributed", "sweep_distributed"]

INSTALL_HINT = "pip install 'stopgrad[distributed]'"
#: default budget of one chunk's saved trajectories (bytes); the chunk's other arrays are a few times it
CHUNK_BYTES = 64 * 2**20
#: the default chunking cuts a sweep into at least this many chunks (when it has that many runs)
MIN_CHUNKS = 64
MANIFEST = "manifest.json"
#: HDF5 chunk cache of each variable of the combined file while chunks are appended: none. netCDF-C's
#: default (64 MiB a variable) keeps what was written until the file closes (1.4 GB for 10^7 runs);
#: the appends write whole HDF5 chunks, which need no cache (measured: as fast, flat memory)
CACHE_BYTES = 0
#: a variable-length string dtype as xarray marks it (object dtype, element type str)
VLEN_STR = np.dtype("O", metadata={"element_type": str})
FORMAT = 1
#: attributes a chunk file carries on top of the sweep's (removed from the combined result)
CHUNK_ATTRS = ("chunk_index", "run_start", "run_stop", "sweep_runs", "config_sha256", "chunk_summary")


def require_distributed():
    """The ``distributed`` module, or a one-line ConfigError naming the extra to install."""
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as exc:
        raise ConfigError("scheduler", getattr(exc, "name", "dask"),
                          f"a distributed sweep needs dask and distributed, which are not installed: {INSTALL_HINT}") from None
    return distributed


def chunk_folder(out: str | os.PathLike) -> Path:
    """The folder of a sweep's chunks: ``RESULT.chunks`` next to RESULT."""
    out = Path(out)
    return out.with_name(out.name + ".chunks")


def config_digest(sim: Simulation) -> str:
    """SHA-256 of the full config (:func:`~stopgrad.dynamics.results.config_json`): what a chunk belongs to."""
    return hashlib.sha256(config_json(sim).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """How a sweep is cut: runs lo .. hi - 1 of chunk i are ``bounds(i)``.

    Attributes:
        n_runs: the sweep's run count.
        chunk_runs: runs per chunk (the last chunk may be shorter).
        folder: the chunk folder (``RESULT.chunks``).
        digest: SHA-256 of the config.
        done: indices of the chunks already written and verified (a resumed sweep skips them).
    """

    n_runs: int
    chunk_runs: int
    folder: Path
    digest: str
    done: tuple[int, ...] = ()

    @property
    def n_chunks(self) -> int:
        """The number of chunks: ceil(n_runs / chunk_runs)."""
        return -(-self.n_runs // self.chunk_runs)

    def bounds(self, i: int) -> tuple[int, int]:
        """Chunk ``i``'s run rows, [lo, hi)."""
        return i * self.chunk_runs, min(self.n_runs, (i + 1) * self.chunk_runs)

    def path(self, i: int) -> Path:
        """Chunk ``i``'s netCDF file in the chunk folder (zero-padded index)."""
        return self.folder / f"chunk-{i:0{len(str(self.n_chunks - 1))}d}.nc"

    def pending(self) -> list[int]:
        """The chunks not yet written, in order."""
        done = set(self.done)
        return [i for i in range(self.n_chunks) if i not in done]

    def manifest(self) -> dict:
        """The folder's manifest: format, config hash and chunking; a resume must match it."""
        return {"format": FORMAT, "config_sha256": self.digest, "n_runs": self.n_runs, "chunk_runs": self.chunk_runs,
                "n_chunks": self.n_chunks}


def default_chunk_runs(sim: Simulation) -> int:
    """Runs per chunk: at most CHUNK_BYTES of saved trajectories, and at least MIN_CHUNKS chunks."""
    by_memory = max(1, CHUNK_BYTES // saved_bytes_per_run(sim))
    return int(max(1, min(by_memory, -(-sim.n_runs // MIN_CHUNKS))))


def _check_sim(sim: Simulation) -> None:
    check("sim", type(sim).__name__, isinstance(sim, Simulation),
          "a distributed sweep runs a stopgrad.dynamics.Simulation (the linear flows)")
    check("grid", sim.grid, bool(sim.grid or sim.runs), "a sweep needs at least one swept parameter")
    check("engine", sim.engine, sim.engine != "sampled",
          "is not chunked: the sampled engine draws one sample stream for the whole batch of runs, so a "
          "run's samples depend on the batch; run it in-process (no scheduler)")


def plan_chunks(sim: Simulation, out: str | os.PathLike, chunk_runs: int | None = None) -> ChunkPlan:
    """The chunking of ``sim`` into ``RESULT.chunks``, resuming what is there; refuses before any work.

    A folder with a manifest of the same config resumes: its chunking is kept (``chunk_runs`` None or
    equal), and its chunk files that are complete and belong to this config and chunk are ``done``.
    Raises ConfigError for another config's folder, another ``chunk_runs``, or a manifest that cannot be
    read. Nothing is written.
    """
    _check_sim(sim)
    if chunk_runs is not None:
        check_range("chunk_runs", chunk_runs, 1, None, integer=True)
        chunk_runs = int(chunk_runs)
    folder = chunk_folder(out)
    digest = config_digest(sim)
    manifest = _read_manifest(folder)
    if manifest is None or not any(folder.glob("chunk-*.nc")):  # nothing written yet: start afresh
        return ChunkPlan(sim.n_runs, chunk_runs or default_chunk_runs(sim), folder, digest)
    if manifest.get("config_sha256") != digest or manifest.get("n_runs") != sim.n_runs:
        raise ConfigError("--out", str(out), f"{folder} holds the chunks of another config (sha256 "
                          f"{str(manifest.get('config_sha256'))[:12]}, this one {digest[:12]}): it cannot be "
                          f"resumed with this config; remove that folder or choose another --out")
    kept = int(manifest["chunk_runs"])
    if chunk_runs is not None and chunk_runs != kept:
        raise ConfigError("chunk_runs", chunk_runs, f"differs from the {kept} runs per chunk of the sweep being "
                          f"resumed in {folder}: give {kept} (or none) to resume it, or remove that folder")
    plan = ChunkPlan(sim.n_runs, kept, folder, digest)
    done = tuple(i for i in range(plan.n_chunks) if _chunk_ok(plan, i))
    return dataclasses.replace(plan, done=done)


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.exists():
        if folder.exists() and any(folder.glob("chunk-*.nc")):
            raise ConfigError("--out", str(folder), f"holds chunk files but no {MANIFEST}: not a folder this "
                              f"version of stopgrad wrote; remove it or choose another --out")
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("chunk_runs"), int):
            raise ValueError(f"format {manifest.get('format')!r}")
    except (OSError, ValueError) as exc:
        raise ConfigError("--out", str(path), f"cannot be read as a sweep manifest ({exc}); remove the folder "
                          f"{folder} to start the sweep afresh") from None
    return manifest


def _chunk_attrs(path: Path) -> dict | None:
    """The attributes of a chunk file, or None if it cannot be read (reads the header only)."""
    try:
        with xr.open_dataset(path, decode_cf=False, cache=False) as ds:
            return dict(ds.attrs) | {"_runs": int(ds.sizes.get("run", -1))}
    except Exception:  # noqa: BLE001  the backends raise OSError, ValueError or their own types
        return None


def _chunk_ok(plan: ChunkPlan, i: int) -> bool:
    """Whether chunk i's file is there, readable and of this config, index and run range."""
    path = plan.path(i)
    if not path.is_file():
        return False
    attrs = _chunk_attrs(path)
    lo, hi = plan.bounds(i)
    return (attrs is not None and attrs.get("config_sha256") == plan.digest and int(attrs.get("chunk_index", -1)) == i
            and int(attrs.get("run_start", -1)) == lo and int(attrs.get("run_stop", -1)) == hi
            and attrs["_runs"] == hi - lo)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a second sweep into it is refused, not interleaved)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(folder / ".lock", "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError("--out", str(folder), "another sweep is writing into this folder now") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _run_chunk(sim: Simulation, index: int, lo: int, hi: int, path: str, digest: str) -> dict:
    """One dask task: integrate runs lo .. hi - 1 of ``sim`` and write them to ``path`` atomically.

    Returns a small summary (the data stays on disk); the same summary is stored in the file."""
    start = _time.perf_counter()
    with warnings.catch_warnings():  # failures are reported once for the whole sweep, by run index
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = simulate_table(sim, RunTable.from_simulation(sim, rows=(lo, hi)))
    failed = np.flatnonzero(ds["status"].values != "ok")
    summary = {
        "verdicts": dict(Counter(ds["verdict"].values.tolist())),
        "n_failed": int(failed.size),
        "failures": [f"run {lo + r}: {ds['status'].values[r]} at t = {ds['t_fail'].values[r]:.6g}" for r in failed[:5]],
    }
    ds.attrs.update({"chunk_index": index, "run_start": lo, "run_stop": hi, "sweep_runs": sim.n_runs,
                     "config_sha256": digest, "chunk_summary": json.dumps(summary, sort_keys=True)})
    for var in ds.variables.values():  # status, verdict: fixed-width characters here (2x faster to write and
        if var.dtype.kind in "OU":     # read than variable-length strings); the result gets the usual kind
            var.encoding["dtype"] = "S1"
    import dask

    # on a worker xarray would guard each variable's write with a cluster-wide lock (a round trip to the
    # scheduler per variable, ~0.7 s a chunk); this file is this task's alone, so a local lock will do
    with dask.config.set(scheduler="synchronous"):
        write_netcdf(ds, path)
    summary.update(index=index, runs=hi - lo, seconds=_time.perf_counter() - start,
                   wall_seconds=float(ds.attrs["wall_seconds"]))
    return summary


@dataclasses.dataclass
class SweepReport:
    """What :func:`sweep_distributed` did.

    Attributes:
        path: the result file.
        n_runs, n_chunks, chunk_runs: the sweep and its chunking.
        chunks_skipped: chunks already on disk (a resumed sweep), not run again.
        chunks_run: chunks integrated by this call.
        runs_per_second: runs of this call's chunks over the time until the last of them was written.
        elapsed_seconds: this call's wall time, connection and combine included.
        combine_seconds: time to concatenate the chunks into the result.
        kernel_seconds: integration seconds summed over all chunks (every session, every worker).
        verdicts: collapse verdict -> runs, over the whole sweep.
        n_failed, failures: runs that failed (blow-up, step-size underflow, max steps); the first few.
        workers: worker threads of the cluster when the sweep started.
        scheduler: the scheduler's address (or "local").
    """

    path: Path
    n_runs: int
    n_chunks: int
    chunk_runs: int
    chunks_skipped: int
    chunks_run: int
    runs_per_second: float
    elapsed_seconds: float
    combine_seconds: float
    kernel_seconds: float
    verdicts: dict
    n_failed: int
    failures: list
    below_atol_runs: int
    backend: str
    workers: int
    scheduler: str


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _DropSlowExit(logging.Filter):
    """Drops the nanny's "Worker process still alive after 4.0 seconds, killing" at the end of a local
    sweep: a worker that imported torch can take that long to exit on a busy machine, after its work is
    written; nothing is lost. Every other message of the nanny still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for the nanny's "still alive after" message, True for every other record."""
        return "still alive after" not in record.getMessage()


@contextlib.contextmanager
def _connect(scheduler, n_workers: int | None):
    """A ``distributed.Client`` for ``scheduler``: "local" (a LocalCluster of processes, one
    single-threaded worker per core, one numba thread each), an address ("tcp://host:8786"), a Client
    (used as is, left open) or a cluster object (``LocalCluster``, dask-jobqueue's ``SLURMCluster``...)."""
    distributed = require_distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler, str(scheduler.scheduler_info()["address"])
        return
    if isinstance(scheduler, str) and scheduler == "local":
        n = n_workers or _cores()
        env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                           env=env)
        try:
            with distributed.Client(cluster) as client:
                yield client, f"local ({n} worker processes)"
        finally:
            nanny, quiet = logging.getLogger("distributed.nanny"), _DropSlowExit()
            nanny.addFilter(quiet)
            try:
                cluster.close()
            finally:
                nanny.removeFilter(quiet)
        return
    if isinstance(scheduler, str):
        check("scheduler", scheduler, bool(scheduler.strip()),
              "give 'local' or a scheduler address such as tcp://host:8786")
        try:
            client = distributed.Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError("scheduler", scheduler, f"cannot connect to this dask scheduler "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
        with client:
            yield client, scheduler
        return
    if hasattr(scheduler, "scheduler_address"):  # a cluster object
        with distributed.Client(scheduler) as client:
            yield client, str(scheduler.scheduler_address)
        return
    raise ConfigError("scheduler", type(scheduler).__name__,
                      "must be 'local', a scheduler address, a distributed.Client or a dask cluster object")


def sweep_distributed(sim: Simulation, out: str | os.PathLike, scheduler="local", chunk_runs: int | None = None,
                      progress: bool = False, keep_chunks: bool = False, n_workers: int | None = None) -> SweepReport:
    """Run the sweep ``sim`` on a dask.distributed cluster in chunks of runs; write the result to ``out``.

    The Dataset in ``out`` holds the same data variables and coordinates as
    :func:`~stopgrad.dynamics.sweep` (bitwise on the numba backends; see the module docstring). Its
    attributes are the sweep's, with ``wall_seconds`` the integration seconds summed over the chunks,
    and ``scheduler``, ``n_chunks``, ``chunk_runs``, ``elapsed_seconds`` added.

    Args:
        sim: a sweep (``grid`` or ``runs``); not the sampled engine.
        out: the result netCDF file. Its chunks go to ``out + ".chunks"`` (see :func:`chunk_folder`),
            which the client and every worker must be able to write.
        scheduler: "local" (a LocalCluster using every core of this machine), a scheduler address
            ("tcp://host:8786"), a ``distributed.Client`` or a cluster object (dask-jobqueue).
        chunk_runs: runs per chunk; default: at most CHUNK_BYTES (64 MiB) of saved trajectories per
            chunk and at least MIN_CHUNKS (64) chunks. A resumed sweep keeps the chunking it started with.
        progress: a progress bar on stderr (chunks done, runs per second).
        keep_chunks: keep the chunk folder after the result is written (default: remove it).
        n_workers: worker processes of a "local" cluster (default: one per core).

    Returns:
        A :class:`SweepReport`.

    Raises:
        ConfigError: dask missing, a scheduler that cannot be reached, the sampled engine, or a chunk
            folder of another config or chunking (before any work).
    """
    t0 = _time.perf_counter()
    out = Path(out)
    plan = plan_chunks(sim, out, chunk_runs)
    require_distributed()
    plan.folder.mkdir(parents=True, exist_ok=True)
    with _locked(plan.folder):
        plan = plan_chunks(sim, out, plan.chunk_runs)  # again, under the lock: what is on disk now
        for stale in plan.folder.glob(".chunk-*.tmp"):  # a killed writer's temporary file; never a chunk
            stale.unlink(missing_ok=True)
        manifest = plan.folder / MANIFEST
        with _connect(scheduler, n_workers) as (client, where):
            workers = sum(client.nthreads().values())
            with atomic_path(manifest) as tmp:  # written once connected: a folder that holds it holds work
                tmp.write_text(json.dumps(plan.manifest(), indent=1))
            summaries, run_seconds = _run_chunks(client, sim, plan, progress)
        start = _time.perf_counter()
        attrs, summary = _gather(plan, summaries, where)
        attrs["elapsed_seconds"] = start - t0
        _combine(plan, out, attrs)
        combine = _time.perf_counter() - start
        if not keep_chunks:
            for i in range(plan.n_chunks):
                plan.path(i).unlink(missing_ok=True)
            manifest.unlink(missing_ok=True)
    if not keep_chunks:
        (plan.folder / ".lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            plan.folder.rmdir()
    if summary["n_failed"]:
        head = "; ".join(summary["failures"][:5])
        more = f"; ... ({summary['n_failed']} runs in all)" if summary["n_failed"] > 5 else ""
        warnings.warn(f"{summary['n_failed']} of {plan.n_runs} runs failed: {head}{more}", RuntimeWarning, stacklevel=2)
    ran = plan.n_chunks - len(plan.done)
    ran_runs = sum(s["runs"] for s in summaries.values())
    return SweepReport(
        path=out, n_runs=plan.n_runs, n_chunks=plan.n_chunks, chunk_runs=plan.chunk_runs,
        chunks_skipped=len(plan.done), chunks_run=ran,
        runs_per_second=ran_runs / run_seconds if run_seconds > 0 else float("nan"),
        elapsed_seconds=_time.perf_counter() - t0, combine_seconds=combine, kernel_seconds=summary["kernel_seconds"],
        verdicts=summary["verdicts"], n_failed=summary["n_failed"], failures=summary["failures"],
        below_atol_runs=summary["below_atol_runs"], backend=attrs["backend"], workers=workers, scheduler=where)


def _run_chunks(client, sim: Simulation, plan: ChunkPlan, progress: bool) -> tuple[dict[int, dict], float]:
    """Submit the pending chunks, wait for them with a progress bar; returns their summaries and the
    seconds from the first submission to the last chunk written."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    pending = plan.pending()
    summaries: dict[int, dict] = {}
    start = _time.perf_counter()
    if not pending:
        return summaries, 0.0
    sim_future = client.scatter(sim, broadcast=True)  # shipped once per worker, not once per chunk
    session = uuid.uuid4().hex[:8]  # keys of this session only: a scheduler may remember an earlier one's
    futures = [client.submit(_run_chunk, sim_future, i, *plan.bounds(i), str(plan.path(i)), plan.digest,
                             key=f"stopgrad-chunk-{plan.digest[:8]}-{session}-{i}") for i in pending]
    done_runs = 0
    with tqdm(total=plan.n_chunks, initial=len(plan.done), desc="chunks", unit="chunk", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        if plan.done and progress:
            bar.write(f"resuming: {len(plan.done)} of {plan.n_chunks} chunks already written in {plan.folder}, skipped",
                      file=sys.stderr)
        try:
            for future in as_completed(futures):
                s = future.result()  # a failed chunk raises here; the chunks written so far stay
                future.release()
                summaries[s["index"]] = s
                done_runs += s["runs"]
                bar.set_postfix_str(f"{done_runs / (_time.perf_counter() - start):,.0f} runs/s", refresh=False)
                bar.update(1)
        except BaseException:
            client.cancel(futures)
            raise
    return summaries, _time.perf_counter() - start


def _gather(plan: ChunkPlan, summaries: dict[int, dict], where: str) -> tuple[dict, dict]:
    """The combined result's attributes and the sweep's summary, from every chunk file's header."""
    verdicts: Counter = Counter()
    n_failed, failures, kernel, below = 0, [], 0.0, 0
    backends: Counter = Counter()
    first = None
    for i in range(plan.n_chunks):
        attrs = _chunk_attrs(plan.path(i))
        if attrs is None:
            raise RuntimeError(f"chunk {i} ({plan.path(i)}) was reported written but cannot be read")
        first = first or attrs
        s = json.loads(attrs["chunk_summary"])
        verdicts.update(s["verdicts"])
        n_failed += s["n_failed"]
        failures += s["failures"][: max(0, 5 - len(failures))]
        kernel += float(attrs["wall_seconds"])
        below += int(attrs.get("below_atol_runs", 0))
        backends[str(attrs["backend"])] += 1
    attrs = {k: v for k, v in first.items() if k not in CHUNK_ATTRS and not k.startswith("_")}
    attrs.update({
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": kernel, "below_atol_runs": below, "scheduler": where, "n_chunks": plan.n_chunks,
        "chunk_runs": plan.chunk_runs,
        "backend": next(iter(backends)) if len(backends) == 1 else
        "mixed: " + ", ".join(f"{b} ({n} chunks)" for b, n in sorted(backends.items())),
        "wall_seconds_note": "wall_seconds: the integration seconds of the chunks, summed over all workers and "
                             "sessions; elapsed_seconds: the wall time of the session that wrote this file, "
                             "until its last chunk was on disk (the combine not included)",
    })
    return attrs, {"verdicts": dict(verdicts), "n_failed": n_failed, "failures": failures, "kernel_seconds": kernel,
                   "below_atol_runs": below}


def _combine(plan: ChunkPlan, out: Path, attrs: dict) -> None:
    """Concatenate the chunk files along ``run`` into ``out`` (atomically), one chunk file at a time.

    The first chunk is written by xarray, as the in-process sweep writes a Dataset (the same variables,
    dtypes, fill values, attributes and Fletcher-32 checksums; strings variable-length), with ``run`` an
    unlimited dimension; every later chunk's variables are appended to it as stored (raw values, no
    decoding), with one chunk file open at a time and no HDF5 chunk cache (CACHE_BYTES). Memory: the
    first chunk, then one variable of one chunk."""
    import netCDF4

    paths = [plan.path(i) for i in range(plan.n_chunks)]
    with xr.open_dataset(paths[0]) as first:
        first = first.load()
    encoding = {}
    for name, var in first.variables.items():
        var.encoding = {}
        enc = {"fletcher32": True} if var.ndim >= 1 and var.dtype.kind in "biuf" else {}
        if "run" in var.dims:  # HDF5 chunks of at most ~4 MiB along run (the netCDF default for an
            row = (var.dtype.itemsize if var.dtype.kind != "O" else 16) * math.prod(  # unlimited dim is 1)
                first.sizes[d] for d in var.dims if d != "run")
            enc["chunksizes"] = tuple(max(1, min(plan.chunk_runs, plan.n_runs, 2**22 // max(1, row))) if d == "run"
                                      else first.sizes[d] for d in var.dims)
        if var.dtype.kind == "O":
            var.data = var.data.astype(VLEN_STR)
        encoding[name] = enc
    first.attrs = attrs
    with atomic_path(out) as tmp:
        first.to_netcdf(tmp, engine="netcdf4", unlimited_dims=["run"], encoding=encoding)
        del first
        with netCDF4.Dataset(tmp, "a") as dst:
            dst.set_auto_maskandscale(False)
            along_run = [name for name, v in dst.variables.items() if v.dimensions[:1] == ("run",)]
            for name in along_run:
                dst[name].set_var_chunk_cache(size=CACHE_BYTES)
            for i in range(1, plan.n_chunks):
                lo, hi = plan.bounds(i)
                with netCDF4.Dataset(paths[i]) as src:
                    src.set_auto_maskandscale(False)  # raw values; character arrays still read as strings
                    for name in along_run:
                        values = src[name][:]
                        if dst[name].dtype is str:  # variable-length strings take an object array
                            values = np.asarray(values, dtype=object)
                        dst[name][lo:hi] = values
