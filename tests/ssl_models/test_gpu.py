"""The CUDA paths (marked ``gpu``: bf16, channels_last, compile, background probes) and torch.compile on the
CPU (marked ``slow``: compiling takes about a minute on 2 cores)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from stopgrad.ssl_models import AugmentConfig, GPUAugment, Trainer, TrainSpec, synthetic_data

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_cuda_augmentation_equals_cpu(cifar):
    x = cifar.train_images[:256]
    aug = GPUAugment(AugmentConfig(blur_p=0.5, solarize_p=0.2), (32, 32), cifar.mean, cifar.std)
    p = aug.sample(256, torch.Generator().manual_seed(0))
    ref = aug.apply(x, p)
    moved = type(p)(**{k: getattr(p, k).cuda() for k in p.__dataclass_fields__})
    out = aug.apply(x.cuda(), moved).cpu()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    # sampling on a CUDA generator works and is seeded
    g1, g2 = torch.Generator(device="cuda").manual_seed(3), torch.Generator(device="cuda").manual_seed(3)
    assert torch.equal(aug(x.cuda(), g1), aug(x.cuda(), g2))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("name", ["simsiam", "byol-gsg", "mocov2"])
def test_cuda_training_bf16_compile_probes_resume(name, make_config, cifar_small, tmp_path):
    cfg = make_config(name, train=TrainSpec(epochs=2, batch_size=64, compile=True, progress=False,
                                            checkpoint_every=1, max_steps=10))
    res = Trainer(cfg, tmp_path / name, device="cuda", data=cifar_small).run()
    assert res.status == "max_steps" and math.isfinite(res.final_loss) and res.device.startswith("cuda")
    tr = Trainer(cfg, tmp_path / name, device="cuda", data=cifar_small, resume=True)
    tr.setup()
    assert tr.amp_dtype == torch.bfloat16 and tr.channels_last and tr.probe.background
    assert tr.step == 10
    longer = type(cfg)(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                          "train": TrainSpec(epochs=2, batch_size=64, compile=True, progress=False,
                                             checkpoint_every=1, max_steps=0)})
    res2 = Trainer(longer, tmp_path / name, device="cuda", data=cifar_small, resume=True).run()
    assert res2.status == "finished" and res2.steps == 16 and res2.knn_last is not None


@pytest.mark.slow
def test_compiled_networks_and_augmentation_match_eager_on_cpu(make_config):
    data = synthetic_data(256, 10, 32)
    cfg = make_config("byol")
    eager = Trainer(cfg, None, device="cpu", data=data).setup()
    comp = Trainer(cfg, None, device="cpu", data=data).setup()
    for net in comp.method.networks():
        net.compile()
    comp.augment.compile()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the augmentation must not fall back to eager
        for i in range(3):
            idx = eager.epoch_order(0)[64 * i : 64 * (i + 1)]
            a = float(eager.train_step(idx)["loss"].detach())
            b = float(comp.train_step(idx)["loss"].detach())
            assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    for (k, v), w in zip(eager.method.state_dict().items(), comp.method.state_dict().values()):
        if torch.is_tensor(v) and v.is_floating_point():
            assert float((v - w).abs().max()) <= 1e-4 * max(1.0, float(v.abs().max())), (k, float((v - w).abs().max()))
