"""The training loop end to end: CLI train/evaluate, the metrics contract, NaN stop, resume after SIGKILL,
two-process DDP against one process, the kNN monitor on a constructed case, bad inputs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stopgrad.analysis import open_dataset
from stopgrad.cli import main
from stopgrad.ssl_models import (
    EvalConfig,
    EvalTransform,
    ImageData,
    PredictorConfig,
    ProbeConfig,
    Trainer,
    TrainingError,
    TrainSpec,
    knn_monitor,
    load_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]

TINY = """
[method]
name = "{method}"
[encoder]
arch = "convnet"
width = 8
[projector]
hidden_dim = 128
out_dim = 64
[predictor]
kind = "mlp"
hidden_dim = 16
[data]
name = "cifar10"
train_subset = {train}
test_subset = 256
[optim]
lr = 0.1
[train]
epochs = {epochs}
batch_size = {batch}
checkpoint_every = 1
log_every = 4
progress = false
bn_splits = {splits}
[probe]
every = 4
[eval]
knn_every = {knn_every}
knn_k = 20
linear_epochs = 100
"""


def _write(tmp_path, name="run.toml", method="simsiam", train=512, epochs=2, batch=64, splits=1, knn_every=1):
    path = tmp_path / name
    path.write_text(TINY.format(method=method, train=train, epochs=epochs, batch=batch, splits=splits,
                                knn_every=knn_every))
    return path


def _env(data_root):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", STOPGRAD_DATA=str(data_root))
    env.pop("WORLD_SIZE", None)
    return env


# --------------------------------------------------------------------------------------- end to end
def test_cli_train_then_evaluate(tmp_path, data_root, capsys):
    cfg = _write(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--data-root", str(data_root), "--device", "cpu"]) == 0
    for name in ("checkpoint.pt", "metrics.nc", "config.toml", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 16 and 0 < summary["knn_last"] <= 1
    ds = open_dataset(out / "metrics.nc", require=("s", "loss", "std_l2", "effective_rank", "rankme", "uniformity",
                                                  "knn_acc", "align_loss"))
    assert ds.attrs["source"] == "measured" and ds.attrs["method"] == "simsiam"
    assert ds["time"].attrs["units"] == "step" and "epoch" in ds.coords
    np.testing.assert_allclose(ds["epoch"].values, ds["time"].values / 8)
    assert list(ds["time"].values[:4]) == [0.0, 4.0, 8.0, 12.0]
    s = ds["s"].dropna("time", how="all").values
    assert (np.diff(s, axis=1) <= 1e-9).all() and (s[:, 0] > 0).all()  # descending eigenvalues
    knn = ds["knn_acc"].dropna("time")
    assert list(knn["time"].values) == [8.0, 16.0]
    assert float(knn[-1]) == pytest.approx(summary["knn_last"])
    assert 0 < ds.attrs["probe_fraction"] < 1
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data-root", str(data_root), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "kNN accuracy" in text and "linear probe" in text
    ev = json.loads((out / "eval.json").read_text())
    # the offline evaluation reproduces the monitor's last number (same backbone, bank and protocol)
    assert ev["knn_acc"] == pytest.approx(summary["knn_last"], abs=1e-12)
    assert 0.1 < ev["linear_test_acc"] <= 1 and ev["linear_train_acc"] > 0.1


def test_probes_of_a_linear_predictor_and_gsg(cifar_small, make_config, tmp_path):
    cfg = make_config("simsiam-gsg", predictor=PredictorConfig(kind="linear"), probe=ProbeConfig(every=2))
    tr = Trainer(cfg, tmp_path / "gsg", device="cpu", data=cifar_small)
    result = tr.run()
    assert result.status == "finished"
    ds = open_dataset(tmp_path / "gsg" / "metrics.nc", require=("s", "p", "alignment", "commutator", "asymmetry",
                                                               "neg_dist"))
    d = cfg.projector.out_dim
    assert ds.sizes["mode"] == d
    assert np.nanmax(np.abs(ds["alignment"].values)) <= 1 + 1e-9
    assert (ds["neg_dist"].dropna("time").values > 0).all()
    # s at time 0 is the spectrum of the first batch's correlation (the probe's F-hat starts there),
    # and p at time 0 the initial W_p along its eigenvectors: recompute both from a fresh, identical run
    twin = Trainer(cfg, None, device="cpu", data=cifar_small).setup()
    W0 = twin.method.predictor_matrix().double()
    z = twin.train_step(twin.epoch_order(0)[:64])["z"].double()
    F = z.T @ z / z.shape[0]
    s, U = torch.linalg.eigh(F)
    np.testing.assert_allclose(ds["s"].isel(time=0).values, s.flip(0).numpy(), rtol=1e-5, atol=1e-6)
    p = (U * (W0 @ U)).sum(0).flip(0)
    top = slice(0, 8)  # well-separated leading modes: eigenvectors defined up to sign, p is sign-free
    np.testing.assert_allclose(ds["p"].isel(time=0).values[top], p.numpy()[top], rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------- non-finite loss
def test_nonfinite_loss_stops_with_message_and_keeps_last_good_checkpoint(cifar_small, make_config, tmp_path):
    cfg = make_config("simsiam", train=TrainSpec(epochs=4, batch_size=64, checkpoint_every=1, progress=False))
    tr = Trainer(cfg, tmp_path / "nan", device="cpu", data=cifar_small).setup()
    bad_from = 2 * tr.steps_per_epoch + 3  # a fault injected into the data path in epoch 3

    def poison(module, args):
        if tr.step >= bad_from:
            return (args[0] * float("nan"),)

    tr.method.backbone.register_forward_pre_hook(poison)
    with pytest.raises(TrainingError) as err:
        tr.run()
    msg = str(err.value)
    assert f"at step {bad_from}" in msg and "last good checkpoint" in msg and "\n" not in msg
    state = load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert state["step"] == 2 * tr.steps_per_epoch  # written after epoch 2, not overwritten since
    assert all(torch.isfinite(v).all() for v in state["method"].values() if isinstance(v, torch.Tensor)
               and v.is_floating_point())
    assert (tmp_path / "nan" / "metrics.nc").is_file()


# ------------------------------------------------------------------------------------------------ resume
def _cli(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "stopgrad.cli", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _state_tensors(path):
    state = load_checkpoint(path)
    return state, {k: v for k, v in state["method"].items() if isinstance(v, torch.Tensor)}


def test_resume_after_sigkill_gives_the_same_weights(tmp_path, data_root):
    cfg = _write(tmp_path, train=512, epochs=10, batch=32, knn_every=0)
    env = _env(data_root)
    full = tmp_path / "full"
    a = _cli(["train", str(cfg), "--out", str(full), "--device", "cpu"], env)
    b_dir = tmp_path / "killed"
    b = _cli(["train", str(cfg), "--out", str(b_dir), "--device", "cpu"], env)
    ckpt = b_dir / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.is_file() and time.time() < deadline and b.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    b.send_signal(signal.SIGKILL)
    b.wait()
    assert a.wait(timeout=300) == 0, a.stderr.read().decode()
    killed_state = load_checkpoint(ckpt)
    total = 10 * (512 // 32)
    assert b.returncode == -signal.SIGKILL and 0 < killed_state["step"] < total, killed_state["step"]
    r = _cli(["train", str(cfg), "--out", str(b_dir), "--device", "cpu", "--resume"], env)
    assert r.wait(timeout=300) == 0, r.stderr.read().decode()
    sa, ta = _state_tensors(full / "checkpoint.pt")
    sb, tb = _state_tensors(b_dir / "checkpoint.pt")
    assert sa["step"] == sb["step"] == total
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    da, db = open_dataset(full / "metrics.nc"), open_dataset(b_dir / "metrics.nc")
    np.testing.assert_array_equal(da["time"].values, db["time"].values)
    for v in ("s", "loss", "std_l2", "knn_acc"):
        np.testing.assert_array_equal(da[v].values, db[v].values)


def test_resume_refuses_a_changed_config(tmp_path, data_root, cifar_small, make_config):
    cfg = make_config("simsiam", train=TrainSpec(epochs=2, batch_size=64, max_steps=3, progress=False))
    Trainer(cfg, tmp_path / "r", device="cpu", data=cifar_small).run()
    other = replace(cfg, optim=replace(cfg.optim, lr=0.5))
    with pytest.raises(TrainingError, match="optim.lr"):
        Trainer(other, tmp_path / "r", device="cpu", data=cifar_small, resume=True).run()
    longer = replace(cfg, train=replace(cfg.train, max_steps=5))  # max_steps may change: continue further
    res = Trainer(longer, tmp_path / "r", device="cpu", data=cifar_small, resume=True).run()
    assert res.steps == 5


# ----------------------------------------------------------------------------------------------------- DDP
def test_two_process_ddp_matches_one_process(tmp_path, data_root):
    """Two gloo processes (torchrun) against one process whose BatchNorm uses the same two groups."""
    env = _env(data_root)
    ddp_cfg = _write(tmp_path, "ddp.toml", epochs=1, batch=64, knn_every=0)
    one_cfg = _write(tmp_path, "one.toml", epochs=1, batch=64, splits=2, knn_every=0)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "stopgrad.cli", "train", str(ddp_cfg), "--out", str(tmp_path / "ddp"), "--device", "cpu"]
    ddp = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr.decode()[-3000:]
    one = _cli(["train", str(one_cfg), "--out", str(tmp_path / "one"), "--device", "cpu"], env)
    assert one.wait(timeout=300) == 0, one.stderr.read().decode()
    sd, td = _state_tensors(tmp_path / "ddp" / "checkpoint.pt")
    so, to = _state_tensors(tmp_path / "one" / "checkpoint.pt")
    assert sd["world_size"] == 2 and so["world_size"] == 1 and sd["step"] == so["step"] == 8
    params = [k for k in td if "running" not in k and "num_batches" not in k]
    assert len(params) > 10
    init = Trainer(replace(_load(ddp_cfg)), None, device="cpu", data=_fake_data()).setup().method.state_dict()
    moved = 0.0
    for k in params:
        torch.testing.assert_close(td[k], to[k], atol=2e-5, rtol=1e-4, msg=k)
        moved = max(moved, float((to[k] - init[k]).abs().max()))
    assert moved > 1e-3  # the runs trained: agreement is not just the shared initialisation
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2


def _load(path):
    from stopgrad.cmd_train import load_train_config

    return load_train_config(path)


def _fake_data():
    from stopgrad.ssl_models import synthetic_data

    return synthetic_data(64, 10, 32)


# ------------------------------------------------------------------------------------------------ kNN
def test_knn_monitor_on_a_constructed_case():
    """Features are the raw pixels of 1x1 images (an identity backbone). For the query, the k = 3 nearest
    bank images are two of class 0 at cos 0.805 and one of class 1 at cos 0.961: the exp(sim / T) vote picks
    class 1 at T = 0.1 (2 e^8.05 < e^9.61) and class 0 at T = 1 (2 e^0.805 > e^0.961)."""
    bank = torch.tensor([[255, 60, 60], [60, 255, 60], [255, 200, 120], [0, 0, 255], [0, 255, 0]], dtype=torch.uint8)
    bank_y = torch.tensor([0, 0, 1, 0, 0])
    query = torch.tensor([[200, 200, 200], [10, 10, 250]], dtype=torch.uint8)
    query_y = torch.tensor([1, 0])
    data = ImageData("constructed", bank.view(5, 3, 1, 1), bank_y, query.view(2, 3, 1, 1), query_y, ("a", "b"),
                     (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    tf = EvalTransform(1, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    backbone = nn.Flatten()
    q = query.double() / 255
    b = bank.double() / 255
    cos = (q / q.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T
    assert cos[0].topk(3).indices.sort().values.tolist() == [0, 1, 2]
    assert math.isclose(float(cos[0, 2]), 0.9606, abs_tol=1e-3)
    acc_sharp = knn_monitor(backbone, data, EvalConfig(knn_k=3, knn_temperature=0.1), tf)
    acc_flat = knn_monitor(backbone, data, EvalConfig(knn_k=3, knn_temperature=1.0), tf)
    # query 2 is closest to (0, 0, 255) and its class-0 neighbours win at any temperature
    assert acc_sharp == 1.0
    assert acc_flat == 0.5


# ------------------------------------------------------------------------------------------- bad input
def _bad(tmp_path, capsys, monkeypatch, toml_text, extra=(), root=None):
    monkeypatch.delenv("STOPGRAD_DATA", raising=False)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml_text)
    out = tmp_path / "out"
    args = ["train", str(cfg), "--out", str(out), "--device", "cpu", *extra]
    if root is not None:
        args += ["--data-root", str(root)]
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("stopgrad: error: ") and "\n" not in err, err
    assert not (out / "checkpoint.pt").exists()
    return err


def test_bad_inputs_get_one_clear_line(tmp_path, capsys, monkeypatch, data_root):
    good = TINY.format(method="simsiam", train=512, epochs=1, batch=64, splits=1, knn_every=1)
    err = _bad(tmp_path, capsys, monkeypatch, good.replace('name = "simsiam"', 'name = "simsiamm"'), root=data_root)
    assert "method.name = 'simsiamm': must be one of 'simsiam', 'byol'" in err
    err = _bad(tmp_path, capsys, monkeypatch, good)
    assert "no data root" in err and "STOPGRAD_DATA" in err
    err = _bad(tmp_path, capsys, monkeypatch, good, root=tmp_path / "missing")
    assert "is not a folder" in err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "cifar10-jpeg.npz").write_bytes((data_root / "cifar10-jpeg.npz").read_bytes()[:50_000])
    err = _bad(tmp_path, capsys, monkeypatch, good, root=corrupt)
    assert "corrupt or unreadable npz" in err
    err = _bad(tmp_path, capsys, monkeypatch, good.replace("train_subset = 512", "train_subset = 40"), root=data_root)
    assert "batch_size = 64 is larger than the training set (40 images" in err
    err = _bad(tmp_path, capsys, monkeypatch, good.replace("out_dim = 64", "out_dim = 0"), root=data_root)
    assert "projector.out_dim = 0" in err
    err = _bad(tmp_path, capsys, monkeypatch, good + '[predictor.rule]\nname = "directpred"\n', root=data_root)
    assert "predictor.kind = 'mlp': a predictor rule overwrites a linear predictor" in err
    err = _bad(tmp_path, capsys, monkeypatch, good, extra=["--resume"], root=data_root)
    assert "holds no checkpoint.pt" in err
    err = _bad(tmp_path, capsys, monkeypatch, good, extra=["--set", "train.epochs=0"], root=data_root)
    assert "train.epochs = 0" in err
    if not torch.cuda.is_available():
        err = _bad(tmp_path, capsys, monkeypatch, good, extra=["--device", "cuda"], root=data_root)
        assert "CUDA is not available" in err


def test_evaluate_run_of_a_split_bn_mocov2_run(cifar_small, make_config, tmp_path):
    """A run trained with SplitBatchNorm (MoCo's 8 groups) evaluates with plain BatchNorm (same state names)."""
    from stopgrad.ssl_models import evaluate_run

    cfg = make_config("mocov2", train=TrainSpec(epochs=1, batch_size=64, bn_splits=8, progress=False))
    res = Trainer(cfg, tmp_path / "moco", device="cpu", data=cifar_small).run()
    ev = evaluate_run(cfg, tmp_path / "moco", device="cpu", data=cifar_small, linear=False)
    assert ev["knn_acc"] == pytest.approx(res.knn_last, abs=1e-12)
    assert (tmp_path / "moco" / "eval.json").is_file()


@pytest.mark.parametrize("name", ["directpred", "byol-gsg", "mocov2"])
def test_resume_restores_fhat_targets_queue_and_generators(name, cifar_small, make_config, tmp_path):
    """Stop after 5 steps, resume, finish: bitwise the weights (and F-hat, EMA target, MoCo queue, GSG's
    partner generator) of an uninterrupted run."""
    from stopgrad.dynamics import RuleSpec
    from stopgrad.ssl_models import MethodConfig

    over = {}
    if name == "directpred":
        over = dict(method=MethodConfig(name="byol"),
                    predictor=PredictorConfig(kind="linear", rule=RuleSpec("directpred"), rho=0.3, freq=2))
    cfg = make_config("byol" if name == "directpred" else name, **over)
    cfg = replace(cfg, eval=replace(cfg.eval, knn_every=0))
    full = Trainer(cfg, tmp_path / "full", device="cpu", data=cifar_small).run()
    part = replace(cfg, train=replace(cfg.train, max_steps=5))
    Trainer(part, tmp_path / "part", device="cpu", data=cifar_small).run()
    rest = Trainer(cfg, tmp_path / "part", device="cpu", data=cifar_small, resume=True).run()
    assert full.steps == rest.steps == 16
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["method"]
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["method"]
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b[k]), k
    if name == "directpred":
        assert torch.equal(a["_extra_state"]["fhat"]["F"], b["_extra_state"]["fhat"]["F"])
