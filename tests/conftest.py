"""Shared fixtures: float64 CPU torch, and the offline data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _torch_defaults():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder with cifar10-jpeg.npz: $STOPGRAD_DATA, else ../shared/data beside the checkout."""
    root = Path(os.environ.get("STOPGRAD_DATA", REPO.parent / "shared" / "data"))
    if not (root / "cifar10-jpeg.npz").is_file():
        pytest.skip(f"offline CIFAR-10 not found under {root} (set STOPGRAD_DATA)")
    return root


@pytest.fixture(scope="session")
def dask_client():
    """A dask.distributed Client of a LocalCluster of two single-threaded worker processes (one numba
    thread each), shared by the distributed-sweep tests; skipped without the extra stopgrad[distributed]."""
    distributed = pytest.importorskip("distributed")
    env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env=env) as cluster, distributed.Client(cluster) as client:
        client.run(__import__, "stopgrad.dynamics")  # the workers' imports, once, outside the tests' timing
        yield client


def _assert_bitwise(got, want) -> None:
    """Every data variable and coordinate of the Dataset ``want`` is in ``got`` with the same dims, dtype
    and bytes (floats compared as bytes: NaN payloads and signed zeros included); attributes are not compared."""
    assert set(got.data_vars) == set(want.data_vars) and set(got.coords) == set(want.coords)
    for name in list(want.data_vars) + list(want.coords):
        a, b = got[name], want[name]
        assert a.dims == b.dims, name
        va, vb = a.values, b.values
        if vb.dtype.kind in "biuf":
            assert va.dtype == vb.dtype and va.shape == vb.shape and va.tobytes() == vb.tobytes(), name
        else:  # strings (status, verdict)
            assert va.shape == vb.shape and np.array_equal(va.astype(str), vb.astype(str)), name


@pytest.fixture(scope="session")
def assert_bitwise():
    """``assert_bitwise(got, want)``: two Datasets hold the same data variables and coordinates, bit for bit."""
    return _assert_bitwise
