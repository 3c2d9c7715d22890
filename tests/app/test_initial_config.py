"""Explicit initial states from TOML: ``[initial]`` with .npy paths, or ``initial = "x.npz"/"result.nc"``."""

from __future__ import annotations

import numpy as np

from stopgrad.analysis import open_dataset
from stopgrad.cli import main

CONFIG = """
[model]
n1 = 4
n2 = 2
method = "byol"
beta = 0.5

[simulate]
t_end = 3.0
save_times = [0.5, 3.0]
{extra}
"""


def test_toml_initial_state_from_npy_npz_and_a_stored_result(tmp_path):
    rng = np.random.default_rng(4)
    W, Wp = rng.standard_normal((2, 4)), rng.standard_normal((2, 2))
    np.save(tmp_path / "W.npy", W)
    np.savez(tmp_path / "state.npz", W=W, Wp=Wp)
    (tmp_path / "a.toml").write_text(CONFIG.format(extra=f'[initial]\nW = "{tmp_path / "W.npy"}"\n'))
    (tmp_path / "b.toml").write_text(CONFIG.format(extra=f'initial = "{tmp_path / "state.npz"}"\n'))
    assert main(["simulate", str(tmp_path / "a.toml"), "--out", str(tmp_path / "a.nc"), "--no-progress"]) == 0
    assert main(["simulate", str(tmp_path / "b.toml"), "--out", str(tmp_path / "b.nc"), "--no-progress"]) == 0
    a, b = open_dataset(tmp_path / "a.nc"), open_dataset(tmp_path / "b.nc")
    assert list(a.time.values) == [0.0, 0.5, 3.0]
    assert np.array_equal(a.init_W.values[0], W) and np.array_equal(b.init_Wp.values[0], Wp)
    # replay b from its own file: the same numbers
    (tmp_path / "c.toml").write_text(CONFIG.format(extra=f'initial = "{tmp_path / "b.nc"}"\n'))
    assert main(["simulate", str(tmp_path / "c.toml"), "--out", str(tmp_path / "c.nc"), "--no-progress"]) == 0
    assert open_dataset(tmp_path / "c.nc").equals(b)


def test_a_missing_initial_file_is_one_line(tmp_path, capsys):
    (tmp_path / "a.toml").write_text(CONFIG.format(extra='initial = "nope.npz"\n'))
    assert main(["simulate", str(tmp_path / "a.toml"), "--out", str(tmp_path / "a.nc")]) == 2
    assert "initial = 'nope.npz': no such file" in capsys.readouterr().err
