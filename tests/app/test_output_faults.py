"""Faults of the simulate/sweep/demo writers and of reading their results.

- a truncated, bit-flipped, emptied or foreign result file gives one clear DatasetError line (the reader
  every reading verb uses), never a traceback and never silently wrong numbers (write_netcdf stores a
  Fletcher-32 checksum per HDF5 chunk);
- writers racing on one --out leave one complete file, equal to one writer's result, never a mix;
- an --out that is a device, a FIFO, a link to a device, a folder, under a file, unwritable, empty or one
  of the inputs is refused in one line before any work (no plan line is printed), and nothing is replaced.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from stopgrad.analysis import DatasetError, open_dataset, write_netcdf
from stopgrad.cli import main

SMALL = """
[model]
n1 = 6
n2 = 3
eta = 0.02
[simulate]
t_end = 2.0
n_save = 4
"""


def _dataset(seed: int = 0, runs: int = 64):
    """A real simulate() result (a grid of seeds), so the file layout is the one users get."""
    from stopgrad.dynamics import LinearModel, Simulation, simulate

    grid = {"seed": list(range(seed, seed + runs))}
    return simulate(Simulation(model=LinearModel(n1=6, n2=3, eta=0.02), t_end=2.0, n_save=4, grid=grid))


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("nc") / "good.nc"
    write_netcdf(_dataset(), path)
    return path


def _one_line_error(path) -> str:
    with pytest.raises(DatasetError) as info:
        open_dataset(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


@pytest.mark.parametrize("cut", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated_result_is_a_clear_error(good_file, tmp_path, cut):
    """Any truncation of the file (HDF5 superblock, metadata or data cut off) is one DatasetError line."""
    data = good_file.read_bytes()
    bad = tmp_path / "cut.nc"
    bad.write_bytes(data[: int(cut * len(data))])
    assert "not a readable netCDF file" in _one_line_error(bad)


def test_bit_flips_in_the_data_are_detected_by_the_checksum(good_file, tmp_path):
    """Flip one bit inside a stored value of ``s``: the Fletcher-32 checksum of its chunk fails on reading.

    The byte offset is found in the file itself: the 8 little-endian bytes of a float64 value of ``s``
    occur where that value is stored (a random 64-bit pattern recurs elsewhere with probability ~1e-14)."""
    data = good_file.read_bytes()
    s = open_dataset(good_file).s.values
    tried = 0
    for value in s[::7, 1:, 0].ravel()[:8]:
        off = data.find(np.float64(value).astype("<f8").tobytes())
        assert off >= 0
        flipped = bytearray(data)
        flipped[off + 2] ^= 0x04  # a mantissa bit: without the checksum the file would read a wrong number
        bad = tmp_path / f"flip{off}.nc"
        bad.write_bytes(bytes(flipped))
        assert "not a readable netCDF file" in _one_line_error(bad)
        tried += 1
    assert tried == 8


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + b"\0" * 40, b"CDF\x01garbage", b"[model]\nn1 = 4\n",
                                     bytes(range(256))])
def test_foreign_or_empty_file_is_a_clear_error(tmp_path, content):
    bad = tmp_path / "x.nc"
    bad.write_bytes(content)
    _one_line_error(bad)


def _writer(path: str, seed: int, rounds: int) -> None:
    ds = xr.load_dataset(path + f".src{seed}")
    for _ in range(rounds):
        write_netcdf(ds, path)


def test_racing_writers_leave_one_complete_file(tmp_path):
    """Two processes write different results to one path, 20 times each, while this one reads it: every
    read sees one complete file equal to one writer's result (the temporary-file-and-rename protocol)."""
    path = tmp_path / "race.nc"
    results = {}
    for seed in (0, 1000):
        ds = _dataset(seed)
        write_netcdf(ds, str(path) + f".src{seed}")
        results[seed] = ds.s.values
    write_netcdf(_dataset(0), path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), seed, 20)) for seed in results]
    for p in procs:
        p.start()
    seen = set()
    while any(p.is_alive() for p in procs):
        back = open_dataset(path)  # raises on a partial or mixed file
        match = [seed for seed, s in results.items() if np.array_equal(back.s.values, s, equal_nan=True)]
        assert len(match) == 1
        seen.add(match[0])
    for p in procs:
        p.join()
        assert p.exitcode == 0
    final = open_dataset(path)
    assert any(np.array_equal(final.s.values, s, equal_nan=True) for s in results.values())
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # no temporary file left behind


@pytest.mark.slow
def test_two_cli_processes_on_one_out_leave_one_complete_file(tmp_path):
    """Two `stopgrad simulate` processes with different seeds, started together on one --out."""
    outs = {}
    for seed in (1, 2):
        cfg = tmp_path / f"c{seed}.toml"
        cfg.write_text(SMALL + f"\n[grid]\nseed = [{', '.join(str(seed * 100 + i) for i in range(200))}]\n")
        outs[seed] = cfg
    target = tmp_path / "same.nc"
    procs = [subprocess.Popen([sys.executable, "-m", "stopgrad.cli", "sweep", str(c), "--out", str(target)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in outs.values()]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    back = open_dataset(target)
    seeds = back.seed.values.tolist()
    assert seeds in ([100 + i for i in range(200)], [200 + i for i in range(200)])


def _refused(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err  # one line, and no plan line: refused before any work
    return lines[0]


def test_special_outputs_are_refused_and_left_alone(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL)
    before = cfg.read_bytes()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "null-link.nc"
    link.symlink_to("/dev/null")
    cases = {
        str(fifo): "device, pipe or socket",
        str(link): "device, pipe or socket",
        "/dev/null": "device, pipe or socket",
        "{input}": "is also an input",
        str(tmp_path): "is a folder",
        str(cfg / "x.nc"): "is a file",
        "/proc/stopgrad-test.nc": "cannot write in /proc",
        "": "is empty",
    }
    grid = tmp_path / "g.toml"
    grid.write_text(SMALL + "\n[grid]\nseed = [0, 1]\n")
    for out, fragment in cases.items():
        for verb, config in (("simulate", cfg), ("sweep", grid)):
            line = _refused([verb, str(config), "--out", out.replace("{input}", str(config))], capsys)
            assert line.startswith("stopgrad: error: --out = ") and fragment in line, line
    assert cfg.read_bytes() == before and grid.read_text().startswith(SMALL)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_an_input_reached_through_a_link_is_still_an_input(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL)
    alias = tmp_path / "alias.nc"
    alias.symlink_to(cfg)
    hard = tmp_path / "hard.nc"
    os.link(cfg, hard)
    for out in (alias, hard):
        assert "is also an input" in _refused(["simulate", str(cfg), "--out", str(out)], capsys)
    assert cfg.read_text() == SMALL


def test_demo_and_check_outputs_are_checked_first(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep")
    assert "not a folder" in _refused(["demo", "--out", str(f)], capsys)
    assert "is a folder" in _refused(["check", "--json", str(tmp_path), "--only", "fixed_points"], capsys)
    assert f.read_text() == "keep"


def test_a_good_out_in_a_new_folder_is_written(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "new" / "deeper" / "r.nc"
    assert main(["simulate", str(cfg), "--out", str(out)]) == 0
    assert open_dataset(out).sizes["run"] == 1
    assert "1 run(s)" in capsys.readouterr().err  # the plan, printed before the work
