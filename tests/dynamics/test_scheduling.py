"""Dynamic scheduling of the numba backends (dynamics.solvers.scheduling).

Two properties: which thread integrates a run, and how the batch is split, never changes a result
(bitwise, on each of the three numba backends); and a thread that is slowed down takes fewer shares
under the dynamic schedule, where the static split gives every thread the same number.
"""

from __future__ import annotations

import threading
import time

import numba
import numpy as np
import pytest

from stopgrad.dynamics import DataSpec, InitSpec, LinearModel, ModeInit, Simulation, Solver, simulate
from stopgrad.dynamics.solvers import scheduling


def _record_calls(shares, threads, schedule, slow_factor=1.0):
    """Run ``shares`` shares that sleep 2 ms each (slow_factor times longer on the thread that takes
    share 0); returns {first: thread ident} and the ident of the slow thread."""
    seen, lock, slow = {}, threading.Lock(), []

    def share(first, stride):
        assert stride == shares
        me = threading.get_ident()
        with lock:
            assert first not in seen, f"share {first} ran twice"
            seen[first] = me
            if first == 0:
                slow.append(me)
        time.sleep(0.002 * (slow_factor if slow and me == slow[0] else 1.0))

    scheduling.run_shares(share, shares, n_threads=threads, schedule=schedule)
    return seen, slow[0]


@pytest.mark.parametrize("schedule", ["dynamic", "static"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_share_runs_exactly_once(schedule, threads):
    seen, _ = _record_calls(37, threads, schedule)
    assert sorted(seen) == list(range(37))
    assert len(set(seen.values())) == min(threads, 37)


def test_a_slowed_thread_takes_fewer_shares_only_under_the_dynamic_schedule():
    # sleeps, not arithmetic: the slow thread's share costs 10x the others' whatever the machine's load.
    # Dynamic: the slow thread takes about 64 / 11 ~ 6 of 64 shares; static: exactly 32.
    shares, factor = 64, 10.0
    seen, slow = _record_calls(shares, 2, "dynamic", factor)
    n_slow = sum(1 for t in seen.values() if t == slow)
    assert n_slow <= shares // 4, f"the slowed thread took {n_slow} of {shares} shares"
    seen, slow = _record_calls(shares, 2, "static", factor)
    assert sum(1 for t in seen.values() if t == slow) == shares // 2


def test_share_counts_follow_the_thread_count():
    assert scheduling.n_shares(10, 2) == 10
    assert scheduling.n_shares(10_000, 2) == 2 * scheduling.SHARES_PER_THREAD
    assert scheduling.n_shares(0, 4) == 1
    with pytest.raises(ValueError, match="schedule"):
        scheduling.run_shares(lambda f, s: None, 4, n_threads=2, schedule="guided")
    with pytest.raises(ValueError, match="schedule"), scheduling.using_schedule("guided"):
        pass


def _sims():
    matrix = LinearModel(n1=12, n2=6, method="byol", beta=0.5, data=DataSpec(sigma2=0.5), init=InitSpec(wa="zero"))
    modes = LinearModel(n1=6, n2=6, method="byol", beta=0.5, eta=0.05, data=DataSpec(sigma2=0.5))
    one = LinearModel(n1=1, n2=1, method="simsiam", eta=0.05, data=DataSpec(sigma2=0.5))
    return {
        "numba_runs": Simulation(model=matrix, t_end=20.0, n_save=4,
                                 grid={"eta": [0.0, 0.02, 0.05], "seed": list(range(7))},
                                 solver=Solver(method="dop853", rtol=1e-8, atol=1e-10)),
        "numba_lanes": Simulation(model=modes, engine="modes", t_end=20.0, n_save=4,
                                  grid={"eta": np.linspace(0.0, 0.2, 23).tolist(), "beta": [0.2, 0.9, 1.0]}),
        "numba_one_mode": Simulation(model=one, engine="modes", t_end=30.0, n_save=3, modes=ModeInit(s0=0.1),
                                     grid={"p0": np.linspace(-0.5, 1.0, 31).tolist(), "eta": [0.0, 0.1, 0.3]},
                                     solver=Solver(method="dopri5", rtol=1e-6, atol=1e-8)),
    }


@pytest.mark.parametrize("backend", ["numba_runs", "numba_lanes", "numba_one_mode"])
def test_threads_and_schedule_never_change_a_result(backend):
    """Bitwise: 1 thread, 2 threads dynamic, 2 threads static."""
    sim = _sims()[backend]
    results = []
    for threads, schedule in ((1, "dynamic"), (2, "dynamic"), (2, "static")):
        old = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            with scheduling.using_schedule(schedule):
                ds = simulate(sim)
        finally:
            numba.set_num_threads(old)
        assert ds.attrs["backend"] == "numba"
        results.append(ds)
    for other in results[1:]:
        for key in ("s", "p", "tau", "nfev", "status"):
            np.testing.assert_array_equal(results[0][key].values, other[key].values, err_msg=key)
