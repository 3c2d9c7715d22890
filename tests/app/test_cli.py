"""The stopgrad CLI: verbs run end to end; bad input gives one clear line naming the field, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stopgrad.analysis import open_dataset
from stopgrad.cli import main

REPO = Path(__file__).resolve().parents[2]

GOOD = """
[model]
n1 = 6
n2 = 3
method = "byol"
beta = 0.5
eta = 0.02
[simulate]
t_end = 5.0
n_save = 6
"""


def _write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_simulate_and_sweep_write_contract_datasets(tmp_path, capsys):
    out = tmp_path / "a.nc"
    assert main(["simulate", _write(tmp_path, GOOD), "--out", str(out), "--no-progress"]) == 0
    ds = open_dataset(out, require=("s", "p", "balance"))
    assert ds.sizes["run"] == 1 and ds.attrs["engine"] == "matrix"
    assert "wrote" in capsys.readouterr().out
    sweep = GOOD + "[grid]\neta = [0.0, 0.1]\nseed = [0, 1]\n"
    assert main(["sweep", _write(tmp_path, sweep, "s.toml"), "--out", str(tmp_path / "b.nc"), "--no-progress"]) == 0
    assert open_dataset(tmp_path / "b.nc").sizes["run"] == 4
    assert main(["sweep", _write(tmp_path, GOOD, "n.toml"), "--out", str(tmp_path / "c.nc")]) == 2  # no grid


@pytest.mark.parametrize("edit,message", [
    (("n1 = 6", "n1 = -6"), "model.n1 = -6: must lie in [1, inf]"),
    (("eta = 0.02", "eta = nan"), "model.eta = nan: must be finite"),
    (("eta = 0.02", "eta = 0.02\nzeta = 1"), "model.zeta = 1: unknown key"),
    (("n2 = 3", 'n2 = "three"'), "model.n2 = 'three': must be an integer"),
    (("t_end = 5.0", "t_end = -5.0"), "simulate.t_end = -5.0: must lie in"),
    (("[simulate]", "[simulte]"), "simulte = '[table]': unknown table"),
    (('method = "byol"', "method = 3"), "model.method = 3: must be a string"),
])
def test_bad_config_gives_one_line(tmp_path, capsys, edit, message):
    text = GOOD.replace(*edit)
    code = main(["simulate", _write(tmp_path, text), "--out", str(tmp_path / "x.nc")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("stopgrad: error: ") and message in err, err
    assert "\n" not in err and not (tmp_path / "x.nc").exists()


def test_non_psd_data_moments_are_rejected(tmp_path, capsys):
    text = GOOD.replace("n1 = 6", "n1 = 2").replace("n2 = 3", "n2 = 1") + (
        '[model.data]\nkind = "general"\nX = [[1.0, 0.0], [0.0, -1.0]]\nX_prime = [[1.0, 0.0], [0.0, 1.0]]\n')
    assert main(["simulate", _write(tmp_path, text), "--out", str(tmp_path / "x.nc")]) == 2
    err = capsys.readouterr().err
    assert "model.data.X = 'a matrix with eigenvalue -1': must be positive semi-definite" in err, err


def test_no_traceback_in_a_real_process(tmp_path):
    bad = _write(tmp_path, GOOD.replace("n1 = 6", "n1 = -1"))
    proc = subprocess.run([sys.executable, "-m", "stopgrad.cli", "simulate", bad, "--out", str(tmp_path / "x.nc")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "stopgrad: error: model.n1 = -1: must lie in [1, inf]"
    assert "Traceback" not in proc.stderr
    missing = subprocess.run([sys.executable, "-m", "stopgrad.cli", "simulate", str(tmp_path / "nope.toml"), "--out", "x.nc"],
                             capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_check_subset_passes_and_writes_json(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["check", "--only", "theorem3_identity", "local_rates", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2/2 checks passed" in text and out.is_file()
    assert main(["check", "--only", "no_such_check"]) == 2
