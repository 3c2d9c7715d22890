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
    mean_negative_distance,
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
precision = "{precision}"
[probe]
every = 4
[eval]
knn_every = {knn_every}
knn_k = 20
linear_epochs = 100
"""


def _write(tmp_path, name="run.toml", method="simsiam", train=512, epochs=2, batch=64, splits=1, knn_every=1,
           precision="auto"):
    path = tmp_path / name
    path.write_text(TINY.format(method=method, train=train, epochs=epochs, batch=batch, splits=splits,
                                knn_every=knn_every, precision=precision))
    return path


# ------------------------------------------------------------- comparing two computational paths of one run
# Two paths of the same training run (one process against two, loss x 4 against lr x 4) differ only by
# rounding: a sum reordered, a product rounded differently. The tiny nets below amplify such differences
# (at SimCLR's T = 0.1 a 1e-7 relative perturbation of the initial weights moves them by ~0.1 within 4
# steps), and the size of the rounding differences depends on the CPU's kernels: with AVX-512, float32
# one- and two-process runs differed by 2e-3 after 6 steps, past any tolerance a float32 test could
# justify. So these comparisons run in float64 (train.precision = "fp64") and use a bound derived from
# the arithmetic and a sensitivity measured in the test itself, never a number fitted to one machine:
#
#   * each step, the two paths' updates differ by at most gamma_n = n * eps64 relative (Higham's bound for
#     a sum of n terms in any order; n = the longest reduction, e.g. a conv weight gradient summed over
#     batch x height x width), whatever the kernels' vector width or summation order;
#   * the run amplifies a relative change delta of its weights into at most A * delta in the final state.
#     A is measured by rerunning the one-process reference from initial weights perturbed by a random
#     relative PERTURBATION (small enough for the linear regime, 1e6 x above float64 round-off);
#   * a change injected at a later step is amplified over fewer steps, so after ``steps`` steps the
#     paths differ by at most steps * A * gamma_n.
#
# Typical rounding is ~sqrt(n) eps, not n eps, which leaves a margin of sqrt(n) (~100) for a random
# perturbation direction that grows less than the worst. Each test also checks that its bound is far
# below how far training moved the weights, so a real bug (a lost gradient, a wrong BN group) still fails.
EPS64 = torch.finfo(torch.float64).eps
PERTURBATION = 1e-10


def _trained_keys(state: dict) -> list[str]:
    """The floating tensors of a state dict that training changes, without the BN running statistics."""
    return [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
            and "running" not in k]


def _max_diff(a: dict, b: dict, keys) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)


def _perturb_(module: nn.Module, delta: float, seed: int = 12345) -> None:
    """Multiply every weight by (1 + delta * xi), xi standard normal, seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1 + delta * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def _amplification(trainer: Trainer, reference: dict) -> float:
    """A: max |final state - reference| / PERTURBATION for a run (set up, not yet run) whose initial
    weights are perturbed by the relative PERTURBATION; ``reference`` is the unperturbed run's state."""
    _perturb_(trainer.method, PERTURBATION)
    trainer.run()
    return _max_diff(trainer.method.state_dict(), reference, _trained_keys(reference)) / PERTURBATION


def _roundoff_bound(amplification: float, steps: int, n_terms: int) -> float:
    """steps * A * n * eps64: the largest difference rounding can make between two float64 paths."""
    return steps * amplification * n_terms * EPS64


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


@pytest.mark.parametrize("name", ["simsiam", "byol", "simclr"])
def test_probe_logs_neg_dist_for_two_view_methods(name, cifar_small, make_config):
    """Methods without GSG's own neg_dist get the same statistic from the step's two views (fixed partner
    i + B/2), averaged over the steps since the previous probe."""
    cfg = make_config(name, probe=ProbeConfig(every=2))
    tr = Trainer(cfg, None, device="cpu", data=cifar_small).setup()
    order = tr.epoch_order(0)
    b = cfg.train.batch_size
    vals = []
    for k in range(3):  # probes at steps 0 and 2; step 2 holds the mean of steps 1 and 2
        z = tr.train_step(order[k * b : (k + 1) * b])["z"]
        vals.append(float(mean_negative_distance(z[: z.shape[0] // 2], z[z.shape[0] // 2 :])))
    tr.probe.flush()
    assert tr.probe.records[0]["neg_dist"] == torch.tensor(vals[0], dtype=torch.float32).double()
    assert math.isclose(float(tr.probe.records[2]["neg_dist"]), (vals[1] + vals[2]) / 2, rel_tol=1e-6)  # fp32 sum
    assert all(v > 0 for v in vals)


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


# ----------------------------------------------------------------------------------- kNN reporting, EMA attrs
def test_max_steps_run_reports_the_knn_of_its_final_weights(cifar_small, make_config, tmp_path):
    """A run stopped by train.max_steps mid-epoch evaluates kNN at its last step (it used to report the
    epoch-1 value); the step-0 baseline is reported separately and never counts as the best. A cosine EMA
    schedule is described by its ends, not by a single ema_momentum attribute."""
    from stopgrad.ssl_models import cosine_momentum

    cfg = make_config("byol", train=TrainSpec(epochs=2, batch_size=64, max_steps=11, progress=False,
                                              checkpoint_every=0, log_every=4),
                      eval=EvalConfig(knn_every=1, knn_at_start=True, knn_k=20))
    tr = Trainer(cfg, tmp_path / "ms", device="cpu", data=cifar_small)
    res = tr.run()
    assert res.status == "max_steps" and res.steps == 11
    assert [s for s, _ in tr.knn_history] == [0, 8, 11]
    final = knn_monitor(tr.method.backbone, tr.eval_data, cfg.eval, tr.eval_transform, tr.device)
    assert res.knn_last == final
    assert res.knn_best == max(a for s, a in tr.knn_history if s > 0)
    assert res.knn_start == tr.knn_history[0][1]
    summary = json.loads((tmp_path / "ms" / "summary.json").read_text())
    assert summary["knn_last"] == final and summary["knn_start"] == res.knn_start
    ds = open_dataset(tmp_path / "ms" / "metrics.nc")
    assert list(ds["knn_acc"].dropna("time")["time"].values) == [0.0, 8.0, 11.0]
    assert math.isnan(ds.attrs["ema_momentum"]) and ds.attrs["ema_momentum_schedule"] == "cosine"
    assert (ds.attrs["ema_momentum_start"], ds.attrs["ema_momentum_final"]) == (0.99, 1.0)
    assert float(ds["ema_momentum"].sel(time=8.0)) == pytest.approx(cosine_momentum(8, 16, 0.99, 1.0))
    # only the baseline: no best, no last (it used to fall back to the baseline)
    tr.knn_history = [(0, 0.9)]
    only = tr.result("max_steps")
    assert only.knn_best is None and only.knn_last is None and only.knn_start == 0.9
    tr.knn_history = [(0, 0.9), (5, 0.3)]
    assert tr.result("max_steps").knn_best == 0.3


def test_loss_scale_equals_lr_times_scale_and_weight_decay_over_scale(cifar_small, make_config):
    """method.loss_scale = 4 (DirectPred's sum over views of -2 cos) gives the same SGD trajectory as lr x 4
    with weight decay / 4 and an unscaled loss; the reported loss is the method's, unscaled."""
    from stopgrad.ssl_models import MethodConfig, OptimConfig

    base = make_config("byol", method=MethodConfig(name="byol", momentum_schedule="constant"))
    base = replace(base, train=replace(base.train, precision="fp64"))  # see _roundoff_bound
    steps = 3

    def run(scale, lr, wd, perturb=0.0):
        cfg = replace(base, method=replace(base.method, loss_scale=scale), optim=OptimConfig(lr=lr, weight_decay=wd))
        tr = Trainer(cfg, None, device="cpu", data=cifar_small).setup()
        if perturb:
            _perturb_(tr.method, perturb)
        losses = [float(tr.train_step(tr.epoch_order(0)[64 * k : 64 * (k + 1)])["loss"].detach())
                  for k in range(steps)]
        return losses, {k: v for k, v in tr.method.state_dict().items() if isinstance(v, torch.Tensor)}

    la, a = run(4.0, 0.05, 4e-4)
    lb, b = run(1.0, 0.2, 1e-4)
    lc, c = run(1.0, 0.05, 4e-4)
    _, bp = run(1.0, 0.2, 1e-4, perturb=PERTURBATION)
    keys = _trained_keys(a)
    amplification = _max_diff(bp, b, keys) / PERTURBATION
    # x 4 is exact in binary floating point, so the gradients agree bitwise; the paths differ only in the
    # rounding of lr x (g + wd w), momentum included: a handful of rounded products and sums per step
    # (n = SGD_OPS in gamma_n; the BYOL target's EMA update is the same in both)
    SGD_OPS = 8
    bound = _roundoff_bound(amplification, steps, SGD_OPS)
    assert la[0] == lb[0] == lc[0] and -1 <= la[0] <= 1
    diff = _max_diff(a, b, keys)
    assert diff <= bound, (diff, bound, amplification)
    moved = _max_diff(a, c, keys)
    assert moved > 1e-3 and bound < 1e-3 * moved, (moved, bound)


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
    for v in ("s", "loss", "std_l2", "knn_acc", "neg_dist"):
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
    """Two gloo processes (torchrun) against one process whose BatchNorm uses the same two groups, in
    float64 within the round-off bound of the run (see _roundoff_bound; n = the first conv's weight
    gradient, summed over the global batch x 32 x 32 pixels)."""
    env = _env(data_root)
    ddp_cfg = _write(tmp_path, "ddp.toml", epochs=1, batch=64, knn_every=0, precision="fp64")
    one_cfg = _write(tmp_path, "one.toml", epochs=1, batch=64, splits=2, knn_every=0, precision="fp64")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "stopgrad.cli", "train", str(ddp_cfg), "--out", str(tmp_path / "ddp"), "--device", "cpu"]
    ddp = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr.decode()[-3000:]
    one = _cli(["train", str(one_cfg), "--out", str(tmp_path / "one"), "--device", "cpu"], env)
    assert one.wait(timeout=300) == 0, one.stderr.read().decode()
    sd, td = _state_tensors(tmp_path / "ddp" / "checkpoint.pt")
    so, to = _state_tensors(tmp_path / "one" / "checkpoint.pt")
    assert sd["world_size"] == 2 and so["world_size"] == 1 and sd["step"] == so["step"] == 8
    params = _trained_keys(td)
    assert len(params) > 10 and all(td[k].dtype == torch.float64 for k in params)
    init = Trainer(replace(_load(ddp_cfg)), None, device="cpu", data=_fake_data()).setup().method.state_dict()
    amplification = _amplification(Trainer(_load(one_cfg), None, device="cpu", data_root=data_root).setup(), to)
    bound = _roundoff_bound(amplification, sd["step"], 64 * 32 * 32)
    diff = _max_diff(td, to, params)
    moved = _max_diff(to, init, params)
    assert diff <= bound, (diff, bound, amplification)
    # the runs trained (agreement is not just the shared initialisation), and far more than the bound
    assert moved > 1e-3 and bound < 1e-3 * moved, (moved, bound)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2


# ------------------------------------------------------------- two gloo processes: MoCo, SimCLR, shuffle, NaN
WORKER = Path(__file__).with_name("ddp_worker.py")


def _ddp_config(name: str, bn_splits: int, precision: str = "fp64", **method) -> "TrainConfig":
    from stopgrad.ssl_models import (DataConfig, EncoderConfig, MethodConfig, OptimConfig, ProjectorConfig,
                                     TrainConfig)

    pred = PredictorConfig(kind="none") if name in ("mocov2", "simclr") else PredictorConfig(hidden_dim=16)
    proj = ProjectorConfig(hidden_dim=64, out_dim=32, last_bn=False, last_bias=True)
    return TrainConfig(method=MethodConfig(name=name, **method), encoder=EncoderConfig(arch="convnet", width=8),
                       projector=proj, predictor=pred, data=DataConfig(name="synthetic"),
                       optim=OptimConfig(lr=0.2, weight_decay=5e-4),
                       train=TrainSpec(epochs=2, batch_size=32, max_steps=6, bn_splits=bn_splits, progress=False,
                                       checkpoint_every=0, log_every=2, precision=precision),
                       probe=ProbeConfig(every=2), eval=EvalConfig(knn_every=0, knn_k=20))


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for sk in socks:
        sk.bind(("127.0.0.1", 0))
    ports = [sk.getsockname()[1] for sk in socks]
    for sk in socks:
        sk.close()
    return ports


@pytest.fixture(scope="module")
def two_process(tmp_path_factory):
    """Runs ddp_worker.py in two gloo processes (all scenarios in one launch) and, meanwhile, the one-process
    references: MoCo v2 with bn_splits = 2 per process against 4 groups in one process, SimCLR with
    per-process BN against 2 groups (the interleaved shards make them the same BatchNorm groups)."""
    return _run_two_process(tmp_path_factory.mktemp("two_process"))


def _run_two_process(out: Path, precision: str = "fp64"):
    """The fixture's work, in ``precision`` for the moco and simclr scenarios: (out, refs, logs)."""
    from stopgrad.ssl_models import config_to_toml, synthetic_data

    configs = {
        "moco": (_ddp_config("mocov2", 2, precision, queue_size=128), 4),
        "simclr": (_ddp_config("simclr", 1, precision, temperature=0.5), 2),
        "shuffle": (_ddp_config("mocov2", 1, queue_size=16), 2),
        "nan": (replace(_ddp_config("simsiam", 1), train=TrainSpec(epochs=1, batch_size=32, progress=False,
                                                                  checkpoint_every=0, log_every=4)), 2),
    }
    for name, (cfg, _) in configs.items():
        (out / f"{name}.toml").write_text(config_to_toml(cfg))
    ports = ",".join(str(p) for p in _free_ports(4))
    procs = []
    for rank in range(2):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", PORTS=ports)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = synthetic_data(256, 10, 32)  # what the worker trains on
        refs = {}
        for name in ("moco", "simclr"):
            cfg, splits = configs[name]
            one = replace(cfg, train=replace(cfg.train, bn_splits=splits))
            tr = Trainer(one, None, device="cpu", data=data)
            tr.run()
            state = tr.method.state_dict()
            amplification = _amplification(Trainer(one, None, device="cpu", data=data).setup(), state)
            refs[name] = (state, tr.world, amplification)
        cfg, splits = configs["shuffle"]
        torch.manual_seed(0)
        from stopgrad.ssl_models import MoCoV2, convert_split_batchnorm

        m = convert_split_batchnorm(MoCoV2(cfg), splits)
        m.generator = torch.Generator().manual_seed(100)  # rank 0's generator
        refs["shuffle"] = m.keys(torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    finally:
        torch.set_num_threads(old)
    logs = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        logs.append((proc.returncode, err.decode()[-3000:]))
    return out, refs, logs


def _scenario_ok(out: Path, name: str, logs) -> None:
    errors = sorted(out.glob(f"{name}.error.*"))
    assert not errors, "\n".join(e.read_text()[-2500:] for e in errors)
    assert all(code == 0 for code, _ in logs), logs


def _compare_states(ddp: dict, one: dict, amplification: float) -> float:
    """The 2-process and 1-process float64 states agree within _roundoff_bound (n = the first conv's
    weight gradient, summed over the global batch of 32 x 32 x 32 pixels); returns the bound."""
    keys = _trained_keys(ddp)
    assert keys and set(keys) <= set(one) and all(ddp[k].dtype == torch.float64 for k in keys)
    bound = _roundoff_bound(amplification, 6, 32 * 32 * 32)
    diff = _max_diff(ddp, one, keys)
    assert diff <= bound, (diff, bound, amplification)
    return bound


def test_two_process_mocov2_with_split_bn_matches_one_process(two_process):
    """MoCo v2 (momentum key encoder, queue, global shuffle-BN) with bn_splits = 2 in each of 2 processes
    runs its 6 steps (a trainable copy of the frozen key encoder's BN parameters made DDP fail on step 2)
    and ends with the weights, key encoder and queue of one process with 4 BN groups."""
    out, refs, logs = two_process
    _scenario_ok(out, "moco", logs)
    ddp = torch.load(out / "moco.pt", weights_only=True)
    one, world, amplification = refs["moco"]
    assert world == 1 and any(k.startswith("target.") for k in ddp) and "queue" in ddp
    bound = _compare_states(ddp, one, amplification)
    init = Trainer(_ddp_config("mocov2", 4, queue_size=128), None, device="cpu",
                   data=_fake_data()).setup().method.state_dict()
    assert bound < 1e-3 * _max_diff(one, init, _trained_keys(one))  # the bound can tell a bug from rounding
    assert int(ddp["queue_ptr"]) == 6 * 2 * 32 % 128


def test_two_process_simclr_gradient_flows_through_the_gathered_negatives(two_process):
    """SimCLR's NT-Xent takes its negatives from both processes (all_gather with gradient): after 6 steps
    the 2-process weights equal a one-process run over the whole batch (same BN groups). T = 0.5: at
    T = 0.1 this tiny net at this lr is chaotic (a 1e-7 relative perturbation of the initial weights moves
    them by ~0.1 within 4 steps), so the two runs' rounding differences would grow past any tolerance.
    In float64 within the round-off bound (see _roundoff_bound)."""
    out, refs, logs = two_process
    _scenario_ok(out, "simclr", logs)
    ddp = torch.load(out / "simclr.pt", weights_only=True)
    init = Trainer(_ddp_config("simclr", 2, temperature=0.5), None, device="cpu",
                   data=_fake_data()).setup().method.state_dict()
    one, _, amplification = refs["simclr"]
    bound = _compare_states(ddp, one, amplification)
    moved = _max_diff(one, init, _trained_keys(one))
    assert moved > 1e-3 and bound < 1e-3 * moved, (moved, bound)


def test_two_process_moco_shuffle_is_one_global_permutation(two_process):
    """The key encoder sees a permutation of the *global* batch: each process's keys, computed on its shard
    of the shuffled batch and un-shuffled, are the one-process keys of the same images with 2 BN groups and
    the same permutation; they differ from the per-process unshuffled keys (a within-process shuffle left
    them unchanged), and in eval mode they line up exactly with their own images."""
    out, refs, logs = two_process
    _scenario_ok(out, "shuffle", logs)
    ranks = [torch.load(out / f"shuffle.{r}.pt", weights_only=True) for r in range(2)]
    for r, res in enumerate(ranks):
        torch.testing.assert_close(res["shuffled"], refs["shuffle"][r::2], atol=1e-5, rtol=1e-4)
        assert float((res["shuffled"] - res["unshuffled"]).abs().max()) > 1e-2
        torch.testing.assert_close(res["eval_shuffled"], res["eval_unshuffled"], atol=1e-6, rtol=1e-5)


def test_two_process_nonfinite_loss_on_one_process_stops_both(two_process):
    """Only rank 0's loss becomes NaN (at step 2): both processes stop promptly at that step with the
    TrainingError (none is left waiting in the gradient all-reduce), and the process group is destroyed."""
    out, _, logs = two_process
    records = []
    for r in range(2):
        path = out / f"nan.{r}.json"
        assert path.is_file(), logs[r]
        records.append(json.loads(path.read_text()))
    assert [rec["training_error"] for rec in records] == [True, True], records  # not a gloo error or a hang
    for rec in records:
        assert "the loss became nan on process 0 of 2 at step 2" in rec["error"], rec
        assert rec["step"] == 2 and rec["seconds"] < 60 and rec["group_destroyed"], rec
    assert (out / "nan" / "metrics.nc").is_file()
    assert all(code == 0 for code, _ in logs), logs


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
    good = TINY.format(method="simsiam", train=512, epochs=1, batch=64, splits=1, knn_every=1, precision="auto")
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

    from stopgrad.ssl_models import save_checkpoint

    cfg = make_config("mocov2", train=TrainSpec(epochs=1, batch_size=64, bn_splits=8, progress=False))
    res = Trainer(cfg, tmp_path / "moco", device="cpu", data=cifar_small).run()
    ev = evaluate_run(cfg, tmp_path / "moco", device="cpu", data=cifar_small, linear=False)
    assert ev["knn_acc"] == pytest.approx(res.knn_last, abs=1e-12)
    assert (tmp_path / "moco" / "eval.json").is_file()
    # the monitor's best excludes the step-0 baseline here too (reported as knn_monitor_start)
    state = load_checkpoint(tmp_path / "moco" / "checkpoint.pt")
    state["knn"] = [[0, 0.99], [8, 0.25], [16, 0.2]]
    save_checkpoint(state, tmp_path / "moco" / "checkpoint.pt")
    ev = evaluate_run(cfg, tmp_path / "moco", device="cpu", data=cifar_small, linear=False)
    assert (ev["knn_monitor_best"], ev["knn_monitor_last"], ev["knn_monitor_start"]) == (0.25, 0.2, 0.99)


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


if __name__ == "__main__":  # the two paths' rounding gap on this CPU, float32 against float64
    import tempfile

    for precision in ("fp32", "fp64"):
        with tempfile.TemporaryDirectory() as tmp:
            out, refs, logs = _run_two_process(Path(tmp), precision)
            for name in ("moco", "simclr"):
                _scenario_ok(out, name, logs)
                one, _, amplification = refs[name]
                gap = _max_diff(torch.load(out / f"{name}.pt", weights_only=True), one, _trained_keys(one))
                bound = _roundoff_bound(amplification, 6, 32 * 32 * 32)  # meaningful in fp64 only
                print(f"{name:7s} {precision}: max |2-process - 1-process| = {gap:.3g}"
                      + (f"  (A = {amplification:.3g}, fp64 bound {bound:.3g})" if precision == "fp64" else ""))
