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


# ---------------------------------------------------------------------------------- optimizer, schedule
def test_lars_update_matches_formula():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([dict(params=[w], lars_exclude=False), dict(params=[b], lars_exclude=True, weight_decay=0.0)],
               lr=0.5, momentum=0.0, weight_decay=0.1, eta=0.02)
    w.grad = torch.tensor([0.6, -0.8])
    b.grad = torch.tensor([2.0])
    opt.step()
    g = torch.tensor([0.6, -0.8]) + 0.1 * torch.tensor([3.0, 4.0])
    trust = 0.02 * 5.0 / float(g.norm())
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 0.5 * trust * g)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))


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


def test_config_toml_round_trip(tmp_path):
    from stopgrad.cmd_train import load_train_config

    cfg = TrainConfig(method=MethodConfig(name="byol"), predictor=PredictorConfig(kind="linear", rule=RuleSpec("directcopy")),
                      train=TrainSpec(batch_size=64))
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    assert config_to_dict(load_train_config(path)) == config_to_dict(cfg)


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
