"""Building blocks against closed forms and brute-force loops: split BN, losses, queue, LARS, schedules,
encoders, heads, configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stopgrad.dynamics import ConfigError, RuleSpec
from stopgrad.ssl_models import (
    LARS,
    EncoderConfig,
    LinearPredictor,
    LRSchedule,
    MethodConfig,
    MoCoV2,
    OptimConfig,
    PredictorConfig,
    ProjectorConfig,
    SplitBatchNorm,
    SymmetricLinearPredictor,
    TrainConfig,
    TrainSpec,
    build_encoder,
    build_optimizer,
    build_predictor,
    build_projector,
    config_to_dict,
    config_to_toml,
    convert_split_batchnorm,
    info_nce,
    negative_cosine,
    nt_xent,
)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------- split BN
@pytest.mark.parametrize("shape", [(8, 3, 4, 5), (12, 6)])
def test_split_batchnorm_equals_batchnorm_per_group(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    bn = nn.BatchNorm2d(shape[1]) if len(shape) == 4 else nn.BatchNorm1d(shape[1])
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    s = 2 if len(shape) == 4 else 3
    split = convert_split_batchnorm(nn.Sequential(bn), s)[0]
    assert isinstance(split, SplitBatchNorm)
    y = split(x)
    means, vars_ = [], []
    for g in range(s):
        xg = x[g::s]
        ref = F.batch_norm(xg, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        torch.testing.assert_close(y[g::s], ref, atol=1e-5, rtol=1e-5)
        dims = [0] + list(range(2, x.dim()))
        means.append(xg.mean(dims))
        vars_.append(xg.var(dims, unbiased=True))
    torch.testing.assert_close(split.running_mean, 0.1 * torch.stack(means).mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(split.running_var, 0.9 + 0.1 * torch.stack(vars_).mean(0), atol=1e-6, rtol=1e-5)
    split.eval()
    torch.testing.assert_close(split(x), F.batch_norm(x, split.running_mean, split.running_var, bn.weight,
                                                      bn.bias, training=False, eps=bn.eps))


def test_split_batchnorm_conversion_keeps_parameters_and_frozen_targets():
    """The conversion reuses the Parameter and buffer objects (as SyncBatchNorm.convert_sync_batchnorm),
    so a frozen momentum encoder stays frozen (a trainable copy broke DDP on its second step)."""
    from stopgrad.ssl_models.momentum import make_target

    online = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))
    target = make_target(online)
    old = [dict(target[i].named_parameters()) for i in (1, 4)]
    bufs = [target[1].running_mean, target[4].running_var]
    convert_split_batchnorm(target, 2)
    assert isinstance(target[1], SplitBatchNorm) and isinstance(target[4], SplitBatchNorm)
    assert all(not p.requires_grad for p in target.parameters())
    for i, o in zip((1, 4), old):
        for k, v in target[i].named_parameters():
            assert v is o[k], (i, k)
    assert target[1].running_mean is bufs[0] and target[4].running_var is bufs[1]
    convert_split_batchnorm(online, 2)
    assert all(p.requires_grad for p in online.parameters())


@pytest.mark.parametrize("name", ["mocov2", "byol", "byol-gsg"])
@pytest.mark.parametrize("splits, world, device", [(2, 1, "cpu"), (1, 2, "cuda")])
def test_momentum_encoders_stay_frozen_after_batchnorm_conversion(name, splits, world, device):
    """The trainer's BN conversion (SplitBatchNorm, or SyncBatchNorm for a multi-process CUDA run) leaves
    no trainable parameter in the target; MoCo's key encoder keeps per-process BN (shuffle-BN)."""
    from stopgrad.ssl_models import build_method
    from stopgrad.ssl_models.trainer import convert_batchnorm

    meth = {"mocov2": dict(queue_size=16), "byol": {}, "byol-gsg": {}}[name]
    pred = PredictorConfig(kind="none") if name == "mocov2" else PredictorConfig(hidden_dim=8)
    cfg = TrainConfig(method=MethodConfig(name=name, **meth), encoder=EncoderConfig(arch="convnet", width=4),
                      projector=ProjectorConfig(hidden_dim=8, out_dim=4), predictor=pred,
                      train=TrainSpec(batch_size=8, bn_splits=splits))
    method = convert_batchnorm(build_method(cfg), cfg, world, device)
    assert sum(p.numel() for p in method.target.parameters()) > 0
    assert all(not p.requires_grad for p in method.target.parameters())
    trainable = {id(p) for ps in method.param_groups().values() for p in ps}
    assert not trainable & {id(p) for p in method.target.parameters()}
    if device == "cuda":
        has_sync = [any(isinstance(m, nn.SyncBatchNorm) for m in net.modules()) for net in (method.online, method.target)]
        assert has_sync == [True, name != "mocov2"]
    else:
        assert any(isinstance(m, SplitBatchNorm) for m in method.target.modules())


def test_split_batchnorm_channels_last_and_gradients():
    torch.manual_seed(1)
    x = torch.randn(8, 4, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    x2 = x.detach().contiguous().requires_grad_(True)
    a, b = SplitBatchNorm(4, 4), SplitBatchNorm(4, 4)
    ya, yb = a(x), b(x2)
    assert ya.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ya, yb)
    (ya * torch.arange(ya.numel()).view_as(ya)).sum().backward()
    (yb * torch.arange(yb.numel()).view_as(yb)).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- losses
def test_negative_cosine_fp32_under_autocast():
    p = torch.randn(16, 8)
    z = torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = negative_cosine(p.bfloat16(), z.bfloat16())
    assert v.dtype == torch.float32
    ref = -F.cosine_similarity(p.bfloat16().float(), z.bfloat16().float()).mean()
    torch.testing.assert_close(v, ref)
    assert float(negative_cosine(p, p)) == pytest.approx(-1.0)


def test_nt_xent_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    T = 0.3
    u = F.normalize(torch.cat([z1, z2]), dim=1).double()
    n = 6
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        num = math.exp(float(u[i] @ u[pos]) / T)
        den = sum(math.exp(float(u[i] @ u[j]) / T) for j in range(2 * n) if j != i)
        total += -math.log(num / den)
    assert float(nt_xent(z1, z2, T)) == pytest.approx(total / (2 * n), rel=1e-5)


def test_info_nce_matches_a_loop():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    queue = F.normalize(torch.randn(3, 7, generator=g), dim=0)
    T = 0.2
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    total = 0.0
    for i in range(4):
        pos = math.exp(float(qn[i] @ kn[i]) / T)
        neg = sum(math.exp(float(qn[i] @ queue[:, j]) / T) for j in range(7))
        total += -math.log(pos / (pos + neg))
    assert float(info_nce(q, k, queue, T)) == pytest.approx(total / 4, rel=1e-5)


def test_moco_queue_wraps_around():
    cfg = TrainConfig(method=MethodConfig(name="mocov2", queue_size=5), encoder=EncoderConfig(arch="convnet", width=4),
                      projector=ProjectorConfig(hidden_dim=8, out_dim=3), predictor=PredictorConfig(kind="none"))
    m = MoCoV2(cfg)
    keys = [F.normalize(torch.randn(3, 3), dim=1) for _ in range(2)]
    m.enqueue(keys[0])
    m.enqueue(keys[1])
    assert int(m.queue_ptr) == 1
    # slots 0..2 got the first keys, 3, 4 and then 0 the second ones
    torch.testing.assert_close(m.queue[:, 1:3].T, keys[0][1:])
    torch.testing.assert_close(m.queue[:, 3:5].T, keys[1][:2])
    torch.testing.assert_close(m.queue[:, 0], keys[1][2])


def _tiny_moco(splits: int, shuffle: bool = True) -> MoCoV2:
    cfg = TrainConfig(method=MethodConfig(name="mocov2", queue_size=16, shuffle_bn=shuffle),
                      encoder=EncoderConfig(arch="convnet", width=4),
                      projector=ProjectorConfig(hidden_dim=16, out_dim=8), predictor=PredictorConfig(kind="none"))
    torch.manual_seed(0)
    m = MoCoV2(cfg)
    convert_split_batchnorm(m, splits)
    m.generator = torch.Generator().manual_seed(7)
    return m


@pytest.mark.parametrize("splits", [1, 4])
def test_moco_shuffle_bn_changes_keys_only_with_grouped_batchnorm(splits):
    """methods.md §6 item 9: batch shuffling changes the keys only when BN statistics are per group.
    With 4 SplitBatchNorm groups the keys differ from the unshuffled encoding and equal a brute-force
    encode(x[perm]) -> un-shuffle; with plain BN in one process they are the unshuffled keys."""
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    shuffled = _tiny_moco(splits, shuffle=True).keys(x)
    plain = _tiny_moco(splits, shuffle=False).keys(x)
    m = _tiny_moco(splits)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        k = m.target(x[perm])
    brute = torch.empty_like(k)
    for pos, image in enumerate(perm.tolist()):
        brute[image] = k[pos]
    torch.testing.assert_close(shuffled, F.normalize(brute, dim=1), atol=1e-6, rtol=1e-5)
    diff = float((shuffled - plain).abs().max())
    if splits == 1:
        assert diff < 1e-5
    else:
        assert diff > 1e-2
    m.eval()  # eval-mode BN: no interaction between samples, so the un-shuffled keys line up exactly
    with torch.no_grad():
        torch.testing.assert_close(m.keys(x), F.normalize(m.target(x), dim=1), atol=1e-6, rtol=1e-5)


def test_method_defaults_are_per_method():
    """Unset [method] keys take the method's own defaults (SimCLR T 0.5, MoCo v2 T 0.2 with a fixed 0.99,
    BYOL 0.99 -> 1 cosine, BYOL-GSG a fixed 0.99); explicit values win; the resolved values round-trip."""
    simclr, moco = MethodConfig(name="simclr"), MethodConfig(name="mocov2")
    byol, gsg = MethodConfig(name="byol"), MethodConfig(name="byol-gsg")
    assert simclr.temperature == 0.5
    assert (moco.temperature, moco.momentum, moco.momentum_schedule) == (0.2, 0.99, "constant")
    assert (byol.momentum, byol.momentum_final, byol.momentum_schedule) == (0.99, 1.0, "cosine")
    assert (gsg.momentum, gsg.momentum_schedule) == (0.99, "constant")
    assert MethodConfig(name="mocov2", temperature=0.1).temperature == 0.1
    assert MethodConfig(name="byol", momentum_schedule="constant").momentum_schedule == "constant"
    cfg = TrainConfig(method=moco, predictor=PredictorConfig(kind="none"))
    assert config_to_dict(cfg)["method"]["temperature"] == 0.2
    assert MethodConfig(name="byol").loss_scale == 1.0
    with pytest.raises(ConfigError, match="loss_scale = 0"):
        MethodConfig(loss_scale=0)
    assert not MethodConfig(name="simsiam-gsg").reverse  # GSG (closest pair) unless asked for
    assert MethodConfig(name="byol-gsg", reverse=True).reverse


def test_bn_splits_must_divide_each_process_batch(monkeypatch):
    """batch 64 over 2 processes: 32 per process, which 32 groups cannot split into pairs (64 / 32 = 2
    passes the one-process check); refused before any process group is set up."""
    from stopgrad.ssl_models import Trainer, synthetic_data

    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(var, raising=False)
    cfg = TrainConfig(encoder=EncoderConfig(arch="convnet", width=4), projector=ProjectorConfig(hidden_dim=8, out_dim=4),
                      predictor=PredictorConfig(hidden_dim=4), train=TrainSpec(batch_size=64, bn_splits=32))
    with pytest.raises(ConfigError, match=r"train.bn_splits = 32: must divide each process's batch \(32 ="):
        Trainer(cfg, None, device="cpu", data=synthetic_data(64, 2, 8)).setup()
    assert not torch.distributed.is_initialized()


# ---------------------------------------------------------------------------------- optimizer, schedule
def _apex_larc_sgd_step(params, groups, lr, momentum, eta, clip, eps=1e-8):
    """The reference: apex's ``LARC.step`` (apex/parallel/LARC.py) wrapped around torch SGD, written out.

    For each adapted parameter with ||w|| != 0 and ||g|| != 0: adaptive_lr = eta ||w|| / (||g|| + ||w|| wd
    + eps) (clip: min(adaptive_lr / lr, 1)); g += wd w; g *= adaptive_lr; then SGD with weight decay 0.
    solo-learn's LARS computes the same update."""
    for p, (wd, exclude) in zip(params, groups):
        if exclude:
            continue
        pn, gn = float(p.detach().norm()), float(p.grad.norm())
        if pn != 0 and gn != 0:
            adaptive = eta * pn / (gn + pn * wd + eps)
            if clip:
                adaptive = min(adaptive / lr, 1.0)
            p.grad += wd * p.detach()
            p.grad *= adaptive


@pytest.mark.parametrize("clip", [False, True])
def test_lars_matches_apex_larc(clip):
    """Three steps with momentum: our LARS against apex LARC + torch SGD, on a weight (adapted, wd), a
    bias (excluded) and a zero weight (||w|| = 0: plain SGD step without weight decay in both)."""
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(4, 3, generator=g), torch.randn(3, generator=g), torch.zeros(2, 2)]
    wd, lr, eta, mom = 0.3, 0.5, 0.02, 0.9
    ours = [nn.Parameter(t.clone()) for t in init]
    ref = [nn.Parameter(t.clone()) for t in init]
    opt = LARS([dict(params=[ours[0]], lars_exclude=False), dict(params=[ours[1]], lars_exclude=True, weight_decay=0.0),
                dict(params=[ours[2]], lars_exclude=False)], lr=lr, momentum=mom, weight_decay=wd, eta=eta, clip=clip)
    sgd = torch.optim.SGD(ref, lr=lr, momentum=mom, weight_decay=0.0)
    for step in range(3):
        grads = [torch.randn(t.shape, generator=g) for t in init]
        for p, q, gr in zip(ours, ref, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        with torch.no_grad():
            _apex_larc_sgd_step(ref, [(wd, False), (0.0, True), (wd, False)], lr, mom, eta, clip)
        sgd.step()
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-5, msg=f"step {step}")
    # the weight-decay term is in the trust ratio's denominator: not eta ||w|| / ||g + wd w||
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARS([dict(params=[w], lars_exclude=False)], lr=1.0, momentum=0.0, weight_decay=0.1, eta=0.02)
    w.grad = torch.tensor([0.6, -0.8])
    opt.step()
    d = torch.tensor([0.6, -0.8]) + 0.1 * torch.tensor([3.0, 4.0])
    trust = 0.02 * 5.0 / (1.0 + 0.1 * 5.0 + 1e-8)
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - trust * d)


def test_predictor_decay_flow_is_not_scaled_by_the_lr_ratio():
    """theory.md §1.2: the flow's predictor decay is -eta W_p, not -alpha_p eta W_p. With zero gradients
    and no momentum, one SGD step shrinks W_p by lr * alpha_p * wd ("coupled", PyTorch) or by lr * wd
    ("flow"), at every step of the schedule and with a fixed predictor lr."""
    wd, lr, ratio = 0.01, 0.2, 10.0
    for decay, fix in (("coupled", False), ("flow", False), ("flow", True)):
        cfg = OptimConfig(lr=lr, momentum=0.0, weight_decay=wd, predictor_lr_ratio=ratio, predictor_decay=decay,
                          fix_predictor_lr=fix)
        trunk, pred = nn.Parameter(torch.ones(3, 3)), nn.Parameter(torch.ones(3, 3))
        opt = build_optimizer(cfg, {"trunk": [trunk], "predictor": [pred]}, lr=lr)
        sched = LRSchedule(cfg, total_steps=10, steps_per_epoch=5, trunk_lr=lr)
        for step in (0, 4):  # the peak and a step down the cosine (the fixed predictor lr keeps its peak)
            trunk_lr = sched.apply(opt, step)
            t0, p0 = float(trunk.detach()[0, 0]), float(pred.detach()[0, 0])
            trunk.grad, pred.grad = torch.zeros(3, 3), torch.zeros(3, 3)
            opt.step()
            assert float(trunk.detach()[0, 0]) == pytest.approx(t0 * (1 - trunk_lr * wd), rel=1e-6)
            pred_lr = lr * ratio if fix else trunk_lr * ratio
            per_step = trunk_lr * wd if decay == "flow" else pred_lr * wd
            assert float(pred.detach()[0, 0]) == pytest.approx(p0 * (1 - per_step), rel=1e-6), (decay, fix, step)
    with pytest.raises(ConfigError, match="optim.predictor_decay|predictor_decay = 'flow'"):
        OptimConfig(name="lars", predictor_decay="flow")


def test_schedule_warmup_cosine_and_predictor_groups():
    cfg = OptimConfig(lr=0.1, warmup_epochs=1, min_lr=0.0, predictor_lr_ratio=10.0, fix_predictor_lr=True,
                      weight_decay=1e-4, predictor_weight_decay=0.0)
    trunk = [nn.Parameter(torch.zeros(2, 2))]
    pred = [nn.Parameter(torch.zeros(2, 2))]
    opt = build_optimizer(cfg, {"trunk": trunk, "predictor": pred}, lr=0.2)
    sched = LRSchedule(cfg, total_steps=110, steps_per_epoch=10, trunk_lr=0.2)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["trunk"]["weight_decay"] == 1e-4 and groups["predictor"]["weight_decay"] == 0.0
    assert sched.apply(opt, 0) == pytest.approx(0.02)  # warm-up: (0 + 1) / 10
    assert sched.apply(opt, 9) == pytest.approx(0.2)
    assert sched.apply(opt, 60) == pytest.approx(0.1)  # half-way through the cosine
    assert sched.apply(opt, 110) == pytest.approx(0.0, abs=1e-12)
    assert groups["predictor"]["lr"] == pytest.approx(2.0)  # fixed at ratio * peak
    cfg2 = OptimConfig(lr=0.1, predictor_lr_ratio=0.5, name="lars")
    opt2 = build_optimizer(cfg2, {"trunk": trunk + [nn.Parameter(torch.zeros(3))], "predictor": pred}, lr=0.2)
    excluded = [g for g in opt2.param_groups if g["lars_exclude"]]
    assert len(excluded) == 1 and excluded[0]["weight_decay"] == 0.0 and excluded[0]["params"][0].ndim == 1
    assert [g["lr"] for g in opt2.param_groups if g["name"] == "predictor"] == [pytest.approx(0.1)]


# ------------------------------------------------------------------------------------ encoders and heads
def test_resnet_stems_and_feature_dims():
    e = build_encoder(EncoderConfig(arch="resnet18", stem="cifar"))
    body = e.body
    assert body.conv1.kernel_size == (3, 3) and body.conv1.stride == (1, 1) and isinstance(body.maxpool, nn.Identity)
    assert e.feature_dim == 512 and isinstance(body.fc, nn.Identity)
    with torch.no_grad():
        assert e.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    i = build_encoder(EncoderConfig(arch="resnet18", stem="imagenet"))
    assert i.body.conv1.kernel_size == (7, 7) and isinstance(i.body.maxpool, nn.MaxPool2d)
    assert build_encoder(EncoderConfig(arch="resnet34")).feature_dim == 512
    assert build_encoder(EncoderConfig(arch="resnet50")).feature_dim == 2048
    assert build_encoder(EncoderConfig(arch="convnet", width=8)).feature_dim == 64


def test_simsiam_cifar_heads():
    proj = build_projector(ProjectorConfig(), 512)
    kinds = [type(m).__name__ for m in proj]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert proj[0].bias is None and proj[3].bias is None and proj[3].out_features == 2048
    assert proj[4].affine is False
    pred = build_predictor(PredictorConfig(), 2048)
    assert [type(m).__name__ for m in pred] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (pred[0].in_features, pred[0].out_features, pred[3].out_features) == (2048, 512, 2048)
    byol = build_projector(ProjectorConfig(hidden_dim=4096, out_dim=256, last_bn=False, last_bias=True), 512)
    assert [type(m).__name__ for m in byol] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert byol[3].bias is not None and byol[3].out_features == 256


def test_linear_and_symmetric_predictors():
    lin = build_predictor(PredictorConfig(kind="linear", init="identity"), 5)
    assert isinstance(lin, LinearPredictor) and list(dict(lin.named_parameters())) == ["weight"]
    z = torch.randn(3, 5)
    torch.testing.assert_close(lin(z), z)
    sym = build_predictor(PredictorConfig(kind="symmetric"), 5)
    assert isinstance(sym, SymmetricLinearPredictor)
    W = sym.matrix()
    assert torch.equal(W, W.T)
    torch.testing.assert_close(sym(z), z @ W.T)
    (sym(z) ** 2).sum().backward()
    assert sym.weight.grad is not None and float(sym.weight.grad.abs().sum()) > 0
    A = torch.randn(5, 5)
    sym.set_matrix(A)
    torch.testing.assert_close(sym.matrix(), 0.5 * (A + A.T))


# ----------------------------------------------------------------------------------------------- configs
def test_every_shipped_config_loads():
    from stopgrad.cmd_train import load_train_config

    names = sorted(p.name for p in (REPO / "configs").glob("*.toml"))
    expected = {"train-tiny.toml", "simsiam-cifar10.toml", "byol-cifar10.toml", "simsiam-gsg-cifar10.toml",
                "byol-gsg-cifar10.toml", "directpred-cifar10.toml", "directcopy-cifar10.toml",
                "simclr-cifar10.toml", "mocov2-cifar10.toml"}
    assert expected <= set(names)
    for name in expected:
        cfg = load_train_config(REPO / "configs" / name)
        assert isinstance(cfg, TrainConfig)
    simsiam = load_train_config(REPO / "configs" / "simsiam-cifar10.toml")
    assert simsiam.effective_lr == pytest.approx(0.06) and simsiam.train.batch_size == 512
    assert simsiam.projector.layers == 2 and simsiam.projector.out_dim == 2048 and simsiam.optim.weight_decay == 5e-4
    moco = load_train_config(REPO / "configs" / "mocov2-cifar10.toml")
    assert moco.train.bn_splits == 8 and moco.method.queue_size == 4096
    assert (moco.projector.hidden_dim, moco.projector.out_dim, moco.projector.hidden_bn) == (512, 128, False)
    assert (moco.method.momentum, moco.method.momentum_schedule, moco.method.temperature) == (0.99, "constant", 0.1)
    simclr = load_train_config(REPO / "configs" / "simclr-cifar10.toml")
    assert (simclr.projector.hidden_dim, simclr.projector.out_dim, simclr.method.temperature) == (512, 128, 0.5)
    byol = load_train_config(REPO / "configs" / "byol-cifar10.toml")  # lightly's recipe, as its comment says
    assert (byol.projector.hidden_dim, byol.projector.out_dim, byol.predictor.hidden_dim) == (1024, 256, 1024)
    assert (byol.method.momentum, byol.method.momentum_schedule) == (0.99, "constant")
    assert "lightly" in (REPO / "configs" / "byol-cifar10.toml").read_text().splitlines()[0]
    for name in ("directpred", "directcopy"):  # luckmatters: sum_views -2 cos, 128-d linear predictor
        dp = load_train_config(REPO / "configs" / f"{name}-cifar10.toml")
        assert dp.method.loss_scale == 4.0 and dp.projector.out_dim == 128 and dp.predictor.kind == "linear"
        assert dp.method.momentum_schedule == "constant" and dp.method.momentum == 0.996
        # the authors' main.py builds a plain SGD and no scheduler: the learning rate stays constant
        assert (dp.optim.schedule, dp.optim.warmup_epochs) == ("constant", 0.0)


def test_config_toml_round_trip(tmp_path):
    from stopgrad.cmd_train import load_train_config

    cfg = TrainConfig(method=MethodConfig(name="byol"), predictor=PredictorConfig(kind="linear", rule=RuleSpec("directcopy")),
                      train=TrainSpec(batch_size=64))
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    assert config_to_dict(load_train_config(path)) == config_to_dict(cfg)


def test_removed_fuse_views_key(tmp_path):
    """train.fuse_views was documented but never read: it is gone; false (what older run folders'
    config.toml hold) still loads, true is refused."""
    from stopgrad.cmd_train import load_train_config

    path = tmp_path / "c.toml"
    path.write_text("[train]\nbatch_size = 64\nfuse_views = false\n")
    assert load_train_config(path).train.batch_size == 64
    assert not hasattr(TrainSpec(), "fuse_views")
    path.write_text("[train]\nfuse_views = true\n")
    with pytest.raises(ConfigError, match="train.fuse_views = True: was removed"):
        load_train_config(path)


@pytest.mark.parametrize(
    "table, rule",
    [
        ({"method": {"name": "simsiamm"}}, "method.name = 'simsiamm': must be one of"),
        ({"projector": {"out_dim": 0}}, "projector.out_dim = 0: must lie in [1, 65536]"),
        ({"predictor": {"hidden_dim": -4}}, "predictor.hidden_dim = -4"),
        ({"predictor": {"kind": "mlp", "rule": {"name": "directpred"}}}, "predictor.kind = 'mlp': a predictor rule"),
        ({"method": {"name": "simclr"}}, "predictor.kind = 'mlp': simclr has no predictor"),
        ({"method": {"name": "byol", "stop_gradient": False}}, "method.stop_gradient = False"),
        ({"train": {"batch_size": 64, "bn_splits": 48}}, "train.bn_splits = 48"),
        ({"optim": {"lr": -1}}, "optim.lr = -1"),
        ({"train": {"epochz": 3}}, "train.epochz = 3: unknown key"),
        ({"method": {"name": "simsiam", "reverse": True}}, "method.reverse = True: reverse GSG needs method name"),
        ({"method": {"name": "simsiam-gsg", "reverse": "yes"}}, "method.reverse = 'yes'"),
    ],
)
def test_bad_configs_name_the_key(table, rule, tmp_path):
    import tomllib

    from stopgrad.cmd_train import load_train_config

    path = tmp_path / "bad.toml"
    lines = []
    for name, vals in table.items():
        sub = {k: v for k, v in vals.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines += [f"{k} = {repr(v).lower() if isinstance(v, bool) else repr(v)}".replace("'", '"')
                  for k, v in vals.items() if not isinstance(v, dict)]
        for s, svals in sub.items():
            lines.append(f"[{name}.{s}]")
            lines += [f'{k} = "{v}"' for k, v in svals.items()]
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())
    with pytest.raises(ConfigError) as err:
        load_train_config(path)
    assert rule in str(err.value) and "\n" not in str(err.value)
