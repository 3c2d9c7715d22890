"""Dynamic scheduling of a batch's shares over CPU threads, for the numba backends.

Each numba backend integrates a *share* of a batch: runs ``first, first + stride, ...`` (strided, so
that a sweep's grid order, which puts similar and similarly stiff runs side by side, is spread over
every share). A share is one call of a serial, GIL-free numba function. The shares are handed to the
threads of a pool as the threads free up, so a thread whose core is busy with another process takes
fewer shares instead of stalling the others at the end (a static split, as ``prange`` makes, leaves
the whole batch waiting for the slowest thread). Which thread integrates a run never changes its
result: runs are independent, and a share's arithmetic does not depend on the thread.

Where it matters (benchmarks/bench_scheduling.py, one busy neighbour on a 2-core host): with threads
bound one per core, a static split waits for the thread that shares its core (about 2x the quiet
time) and the dynamic schedule does not (about 1.33x expected from CPU shares). With unbound threads
(the default here) Linux time-slices all threads fairly, so both schedules pay about the fair share,
1.5x; the dynamic one then only evens out runs of unequal cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba as nb

__all__ = ["SCHEDULES", "SHARES_PER_THREAD", "n_shares", "run_shares", "using_schedule"]

#: "dynamic" hands shares out as threads free up; "static" gives each thread a fixed contiguous block
#: of shares up front, as ``prange`` does (kept to measure the difference: benchmarks/bench_scheduling.py)
SCHEDULES = ("dynamic", "static")
_current = {"schedule": "dynamic"}

#: shares per thread: the last share bounds the idle tail of a dynamic schedule to about
#: 1 / SHARES_PER_THREAD of one thread's work; each share costs one dispatch (~20 us) and its buffers
SHARES_PER_THREAD = 32


def n_shares(n_units: int, n_threads: int | None = None) -> int:
    """The number of shares for ``n_units`` schedulable units (runs, or lane packs) on ``n_threads``
    threads (default: numba's thread count, which ``NUMBA_NUM_THREADS`` and
    ``numba.set_num_threads`` set)."""
    threads = nb.get_num_threads() if n_threads is None else n_threads
    return max(1, min(int(n_units), SHARES_PER_THREAD * max(1, threads)))


@contextmanager
def using_schedule(schedule: str) -> Iterator[None]:
    """Within the block, :func:`run_shares` calls that name no schedule use ``schedule``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    old, _current["schedule"] = _current["schedule"], schedule
    try:
        yield
    finally:
        _current["schedule"] = old


def run_shares(solve_share: Callable[[int, int], None], shares: int, n_threads: int | None = None,
               schedule: str | None = None) -> None:
    """Call ``solve_share(first, shares)`` for ``first`` in ``range(shares)`` on ``n_threads`` threads.

    Args:
        solve_share: integrates share ``first`` of ``shares`` (a GIL-free numba call writing into its
            runs' rows of preallocated outputs).
        shares: the number of shares (see :func:`n_shares`).
        n_threads: threads to use; default numba's thread count.
        schedule: one of :data:`SCHEDULES`; default ``"dynamic"`` (or the one :func:`using_schedule`
            sets).
    """
    schedule = _current["schedule"] if schedule is None else schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    threads = min(shares, nb.get_num_threads() if n_threads is None else max(1, n_threads))
    if threads <= 1:
        for first in range(shares):
            solve_share(first, shares)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stopgrad-share") as pool:
        if schedule == "dynamic":
            futures = [pool.submit(solve_share, first, shares) for first in range(shares)]
        elif schedule == "static":
            per = -(-shares // threads)

            def block(lo: int) -> None:
                for first in range(lo, min(shares, lo + per)):
                    solve_share(first, shares)

            futures = [pool.submit(block, lo) for lo in range(0, shares, per)]
        for future in futures:
            future.result()
