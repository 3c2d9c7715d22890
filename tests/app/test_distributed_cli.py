"""``stopgrad sweep --scheduler``: a sweep killed halfway resumes from its chunks and ends bitwise equal
to the in-process sweep; the errors are one line."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stopgrad.analysis import open_dataset
from stopgrad.cli import main
from stopgrad.cmd_dynamics import simulation_from_dict
from stopgrad.config import load_toml
from stopgrad.dynamics import sweep

REPO = Path(__file__).resolve().parents[2]

#: 48 runs of a 16 x 8 matrix flow, cut into 24 chunks of 2 runs
CONFIG = """
[model]
n1 = 16
n2 = 8
method = "byol"
beta = 0.5
[model.data]
sigma2 = 0.5
[simulate]
engine = "matrix"
t_end = 100.0
n_save = 11
[grid]
eta = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2]
seed = [0, 1, 2, 3, 4, 5, 6, 7]
"""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stopgrad.cli", "sweep", *args]


@contextlib.contextmanager
def _at_most_two_cores():
    """This process on at most two cores for the block: ``--scheduler local`` starts one worker per core
    it may use (and the workers inherit the affinity)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(before)[:2])
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def test_a_killed_sweep_resumes_and_equals_a_straight_run(dask_client, tmp_path, capsys, assert_bitwise):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "result.nc"
    folder = tmp_path / "result.nc.chunks"
    address = dask_client.scheduler_info()["address"]
    # 1. start the sweep on the shared cluster and kill its process (SIGKILL: no clean-up) once a few chunks
    #    are written; the chunks its workers were integrating may still land after it
    proc = subprocess.Popen(_cli(str(cfg), "--out", str(out), "--scheduler", address, "--chunk-runs", "2",
                                 "--keep-chunks", "--no-progress"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    written: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        written = sorted(folder.glob("chunk-*.nc")) if folder.is_dir() else []
        if len(written) >= 3:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(written) < 24, (len(written), proc.stderr.read().decode()[-2000:])
    assert not out.exists()
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in written}
    # 2. resume with --scheduler local (a cluster of this machine's cores, here at most two): the chunks
    #    on disk are skipped, the rest run, the result is written
    capsys.readouterr()
    with _at_most_two_cores():
        assert main(["sweep", str(cfg), "--out", str(out), "--scheduler", "local", "--keep-chunks", "--no-progress"]) == 0
    resumed = capsys.readouterr()
    skipped = int(re.search(r"\((\d+) already written: skipped\)", resumed.out).group(1))
    assert len(written) <= skipped < 24, resumed.out
    assert "24 chunk(s) of 2 run(s)" in resumed.err and "on local" in resumed.err, resumed.err
    assert "at local (2 worker processes)" in resumed.out or "at local (1 worker processes)" in resumed.out
    assert {p: (folder / p).stat().st_ino for p in kept} == {p: v[0] for p, v in kept.items()}
    assert {p: (folder / p).stat().st_mtime_ns for p in kept} == {p: v[1] for p, v in kept.items()}
    assert not list(folder.glob(".chunk-*.tmp"))  # no temporary file of the killed writers is left
    # 3. the same Dataset as the in-process sweep that ran straight through, bit for bit
    assert_bitwise(open_dataset(out), sweep(simulation_from_dict(load_toml(str(cfg)))))


def test_scheduler_errors_are_one_line(dask_client, tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(CONFIG.replace("t_end = 100.0", "t_end = 5.0"))
    out = str(tmp_path / "r.nc")
    assert main(["sweep", str(cfg), "--out", out, "--scheduler", "local", "--chunk-runs", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("stopgrad: error: --chunk-runs = 0: must lie in [1, inf]")
    address = dask_client.scheduler_info()["address"]
    assert main(["sweep", str(cfg), "--out", out, "--scheduler", address, "--chunk-runs", "16", "--keep-chunks",
                 "--no-progress"]) == 0
    capsys.readouterr()
    cfg.write_text(CONFIG.replace("t_end = 100.0", "t_end = 6.0"))  # another config, the same --out
    assert main(["sweep", str(cfg), "--out", out, "--scheduler", address]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "r.nc.chunks holds the chunks of another config" in err[0], err
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were not installed
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "s.nc"), "--scheduler", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stopgrad: error: --scheduler = ") and "pip install 'stopgrad[distributed]'" in err, err
