"""Fault tests of the training writers, on real files and real processes: a truncated or bit-flipped
checkpoint, a truncated metrics.nc, two `train` runs into one folder, a folder of another run, a
non-finite training state, file modes. (Kill-and-resume bitwise: test_train.py.)

Each fault must end in one clear line (exit status 2 from the CLI), and nothing good may be overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from stopgrad.analysis import DatasetError, open_dataset
from stopgrad.cli import main
from stopgrad.ssl_models import (
    DataConfig,
    EvalConfig,
    Trainer,
    TrainingError,
    TrainSpec,
    config_to_toml,
    load_checkpoint,
    save_checkpoint,
    synthetic_data,
)

REPO = Path(__file__).resolve().parents[2]
CKPT = "checkpoint.pt"
LOCK = ".stopgrad-train.lock"


def _digests(folder: Path) -> dict:
    """sha256 of every file in ``folder`` but the lock file (a refused `train` takes the lock before it
    looks at the folder): what "nothing good is overwritten" compares."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != LOCK}


def _tiny(make_config, **train):
    """A tiny synthetic-data run: 4 steps per epoch (256 images, batch 64), a checkpoint every epoch."""
    spec = dict(epochs=2, batch_size=64, progress=False, checkpoint_every=1, log_every=4)
    spec.update(train)
    return make_config("simsiam", data=DataConfig(name="synthetic", synthetic_size=256), train=TrainSpec(**spec),
                       eval=EvalConfig(knn_every=0, knn_k=20, linear_epochs=2))


@pytest.fixture(scope="module")
def synth():
    return synthetic_data(256, 10, 32)


@pytest.fixture
def finished_run(tmp_path, make_config, synth):
    """A finished tiny run folder and its config file."""
    cfg = _tiny(make_config)
    Trainer(cfg, tmp_path / "run", device="cpu", data=synth).run()
    path = tmp_path / "run.toml"
    path.write_text(config_to_toml(cfg))
    return tmp_path / "run", path


def _cli_error(capsys, args) -> str:
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("stopgrad: error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------------------------- corrupt checkpoints
def _payload_span(raw: bytes, folder: Path) -> tuple[int, int]:
    """Where the serialised state (the checksummed payload) lies in the checkpoint file."""
    payload = torch.load(folder / CKPT, weights_only=True)["payload"].numpy().tobytes()
    start = raw.find(payload[:256])
    assert start > 0 and raw[start:start + len(payload)] == payload
    return start, start + len(payload)


def _faults(raw: bytes, span: tuple[int, int]) -> dict[str, bytes]:
    lo, hi = span
    flip = lambda pos: raw[:pos] + bytes([raw[pos] ^ 0x10]) + raw[pos + 1:]  # noqa: E731
    return {
        "bit flip in the tensor data": flip(lo + (hi - lo) * 3 // 4),
        "bit flip at the payload's start": flip(lo + 8),
        "bit flip in the file's zip directory": flip(len(raw) - 30),
        "truncated to half": raw[: len(raw) // 2],
        "truncated by one byte": raw[:-1],
        "empty": b"",
    }


def test_corrupt_checkpoint_is_refused_by_evaluate_and_resume(finished_run, capsys):
    """Every truncation and bit flip is refused in one line by `evaluate` and by `train --resume`, the
    folder is left byte for byte as it was (no eval.json, no new checkpoint or metrics), and a flip inside
    the tensor data (which torch.load alone accepts: the bug) is caught by the checksum."""
    run, cfg = finished_run
    raw = (run / CKPT).read_bytes()
    span = _payload_span(raw, run)
    for fault, data in _faults(raw, span).items():
        (run / CKPT).write_bytes(data)
        before = _digests(run)
        err = _cli_error(capsys, ["evaluate", str(run), "--device", "cpu", "--knn-only"])
        assert str(run / CKPT) in err and ("corrupt" in err or "unreadable" in err), (fault, err)
        if fault == "bit flip in the tensor data":
            assert "checksum does not match" in err, err
        err = _cli_error(capsys, ["train", str(cfg), "--out", str(run), "--device", "cpu", "--resume"])
        assert str(run / CKPT) in err, (fault, err)
        assert _digests(run) == before, fault
    # the intact file still loads, and evaluates
    (run / CKPT).write_bytes(raw)
    assert load_checkpoint(run / CKPT)["step"] == 8


def test_a_checkpoint_holding_inf_is_refused_on_load(finished_run):
    run, _ = finished_run
    state = load_checkpoint(run / CKPT)
    key = next(k for k in state["method"] if k.endswith("running_var"))
    state["method"][key][0] = float("inf")
    save_checkpoint(state, run / "bad.pt")
    with pytest.raises(TrainingError, match=f"{key} holds inf; a non-finite checkpoint is not used"):
        load_checkpoint(run / "bad.pt")


def test_truncated_metrics_is_a_clear_error_and_resume_rewrites_it(tmp_path, make_config, synth):
    """metrics.nc is derived from the checkpoint (which holds the probes): a truncated one is reported
    in one line by open_dataset, and a resumed run writes it whole again with every probe."""
    cfg = _tiny(make_config, max_steps=4)
    run = tmp_path / "run"
    Trainer(cfg, run, device="cpu", data=synth).run()
    times = open_dataset(run / "metrics.nc")["time"].values.tolist()
    raw = (run / "metrics.nc").read_bytes()
    (run / "metrics.nc").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="not a readable netCDF file") as err:
        open_dataset(run / "metrics.nc")
    assert "\n" not in str(err.value)
    res = Trainer(replace(cfg, train=replace(cfg.train, max_steps=0)), run, device="cpu", data=synth,
                  resume=True).run()
    assert res.steps == 8
    ds = open_dataset(run / "metrics.nc", require=("s", "loss"))
    assert ds["time"].values.tolist()[: len(times)] == times and ds["time"].values[-1] == 8


# ----------------------------------------------------------------------------------- one run per folder
def test_two_train_processes_into_one_folder_the_second_is_refused(tmp_path, make_config):
    """Two `stopgrad train` processes started together into one empty --out: exactly one trains (exit 0),
    the other is refused in one line (the folder is locked, or already holds the first run's checkpoint).
    Real processes (not forks of this one: a fork of a process that holds other threads, such as an
    earlier test's dask client, can deadlock in the child; seen once in CI under load)."""
    cfg = _tiny(make_config, epochs=2)
    path = tmp_path / "run.toml"
    path.write_text(config_to_toml(cfg))
    out = tmp_path / "run"
    args = ["train", str(path), "--out", str(out), "--device", "cpu"]
    errs = [open(tmp_path / f"err{i}", "w") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "stopgrad.cli", *args], stdout=subprocess.DEVNULL, stderr=err)
             for err in errs]
    for p in procs:
        p.wait(timeout=600)
    for err in errs:
        err.close()
    results = [(p.returncode, (tmp_path / f"err{i}").read_text().strip()) for i, p in enumerate(procs)]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert refused.startswith("stopgrad: error: ") and "\n" not in refused, refused
    assert ("is in use by another `stopgrad train`" in refused or "already holds a run" in refused), refused
    state = load_checkpoint(out / CKPT)
    assert state["step"] == 8 and json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_a_running_train_holds_its_folder(tmp_path, make_config, synth):
    """While one Trainer runs (holds the lock), a second one into the same folder is refused with the
    first's pid; once the first has ended, --resume may continue it."""
    cfg = _tiny(make_config, max_steps=5)
    run = tmp_path / "run"
    first = Trainer(cfg, run, device="cpu", data=synth).setup()  # holds the folder from setup to close
    with pytest.raises(TrainingError, match=rf"is in use by another `stopgrad train` \(pid {os.getpid()}\)"):
        Trainer(cfg, run, device="cpu", data=synth).run()
    first.run()
    rest = replace(cfg, train=replace(cfg.train, max_steps=0))
    assert Trainer(rest, run, device="cpu", data=synth, resume=True).run().steps == 8


def test_a_folder_with_another_runs_files_but_no_checkpoint_is_refused(tmp_path, make_config, synth):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("# another run's\n")
    before = _digests(run)
    with pytest.raises(TrainingError, match=r"holds another run's files \(config.toml\) but no checkpoint.pt"):
        Trainer(_tiny(make_config), run, device="cpu", data=synth).run()
    assert _digests(run) == before


# ------------------------------------------------------------------------------------ non-finite state
def _corrupt(tr: Trainer, what: str) -> str:
    """Put an inf into one tensor of the training state; returns the name the stop message must give."""
    m = tr.method
    with torch.no_grad():
        if what == "bn_running_var":  # not used by a training-mode forward: the loss stays finite
            name, buf = next((n, b) for n, b in m.named_buffers() if n.endswith("running_var"))
            buf[0] = float("inf")
            return name
        if what == "weight":
            name, p = next((n, p) for n, p in m.named_parameters() if n.endswith("weight") and p.requires_grad)
            p.view(-1)[0] = float("inf")
            return name
        param, st = next(iter(tr.optimizer.state.items()))
        st["momentum_buffer"].view(-1)[0] = float("nan")
        return "momentum_buffer of " + next(n for n, p in m.named_parameters() if p is param)


@pytest.mark.parametrize("what", ["bn_running_var", "weight", "optimizer_momentum"])
def test_nonfinite_training_state_stops_and_keeps_a_finite_checkpoint(what, tmp_path, make_config, synth):
    """An inf or NaN in the BN statistics, a weight or the optimizer's momentum (put there at the end of
    the 8th step, in epoch 2) stops the run at the next check (step 8, a log point) with one line naming
    the tensor; the checkpoint of epoch 1 (step 4) is kept, finite. Before the fix a non-finite BN statistic
    ran to "finished" and was saved as the final checkpoint."""
    cfg = _tiny(make_config, epochs=3)
    tr = Trainer(cfg, tmp_path / "run", device="cpu", data=synth).setup()
    on_step_end = tr.method.on_step_end
    names = []

    def inject(step):  # a fault in the state, as an overflow in a real run would leave it
        on_step_end(step)
        if step == 7:  # the last step before the log point at step 8
            names.append(_corrupt(tr, what))

    tr.method.on_step_end = inject
    with pytest.raises(TrainingError) as err:
        tr.run()
    msg = str(err.value)
    assert msg.startswith(f"the training state ({'optimizer ' if what == 'optimizer_momentum' else ''}{names[0]})")
    assert "at step 7" not in msg and "at step 8 (epoch 2.00)" in msg and "\n" not in msg, msg
    assert "the last good checkpoint" in msg and "is kept" in msg
    state = load_checkpoint(tmp_path / "run" / CKPT)  # refuses a non-finite model state itself
    assert state["step"] == 4
    opt = [v for s in state["optimizer"]["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert opt and all(bool(torch.isfinite(v).all()) for v in opt)
    assert not (tmp_path / "run" / "summary.json").exists()


# -------------------------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_respect_the_umask(umask, tmp_path, make_config, synth):
    """checkpoint.pt, metrics.nc, config.toml and summary.json get 0666 less the umask (as any new file),
    not the 0600 of the temporary file they are written to."""
    old = os.umask(umask)
    try:
        Trainer(_tiny(make_config, epochs=1), tmp_path / "run", device="cpu", data=synth).run()
    finally:
        os.umask(old)
    for name in (CKPT, "metrics.nc", "config.toml", "summary.json"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o666 & ~umask, name
