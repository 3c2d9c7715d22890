"""Shared fixtures: the offline CIFAR-10 copy, small configs, one torch thread (the machine is shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from stopgrad.ssl_models import (
    DataConfig,
    EncoderConfig,
    EvalConfig,
    MethodConfig,
    PredictorConfig,
    ProbeConfig,
    ProjectorConfig,
    TrainConfig,
    TrainSpec,
    load_cifar10_npz,
)

REPO = Path(__file__).resolve().parents[2]


def _npz_folder() -> Path | None:
    for cand in (os.environ.get("STOPGRAD_DATA", ""), REPO.parent / "shared" / "data", REPO / ".gpu",
                 "/work/shared/data"):
        if cand and (Path(cand) / "cifar10-jpeg.npz").is_file():
            return Path(cand)
    return None


@pytest.fixture(autouse=True)
def _one_thread():
    """Deterministic, and fast on a loaded 2-core machine (2 threads oversubscribe it badly)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _npz_folder()
    if root is None:
        pytest.skip("cifar10-jpeg.npz not found (set STOPGRAD_DATA to the folder holding it)")
    return root


@pytest.fixture(scope="session")
def cifar(data_root):
    """All of CIFAR-10 (JPEG copy), decoded once (cached in the user cache folder)."""
    return load_cifar10_npz(data_root / "cifar10-jpeg.npz")


@pytest.fixture(scope="session")
def cifar_small(cifar):
    """The first 512 training and 256 test images."""
    from dataclasses import replace

    return replace(cifar, train_images=cifar.train_images[:512], train_labels=cifar.train_labels[:512],
                   test_images=cifar.test_images[:256], test_labels=cifar.test_labels[:256],
                   bank_images=None, bank_labels=None)


def tiny_config(name: str = "simsiam", **over) -> TrainConfig:
    """A small convnet config for CPU tests (override any table by passing a dataclass)."""
    proj = dict(hidden_dim=128, out_dim=64)
    pred = dict(kind="mlp", hidden_dim=16)
    method = name
    meth = dict(name=method)
    if method in ("byol",):
        proj = dict(hidden_dim=128, out_dim=32, last_bn=False, last_bias=True)
        pred = dict(kind="mlp", hidden_dim=128)
    if method in ("simclr", "mocov2"):
        proj = dict(hidden_dim=128, out_dim=32, last_bn=False, last_bias=True)
        pred = dict(kind="none")
    if method == "mocov2":
        meth.update(queue_size=256, momentum_schedule="constant", temperature=0.2)
    if method == "simclr":
        meth.update(temperature=0.5)
    if method == "byol-gsg":
        meth.update(momentum_schedule="constant")
    table = dict(
        method=MethodConfig(**meth),
        encoder=EncoderConfig(arch="convnet", width=8),
        projector=ProjectorConfig(**proj),
        predictor=PredictorConfig(**pred),
        data=DataConfig(name="cifar10", train_subset=512, test_subset=256),
        train=TrainSpec(epochs=2, batch_size=64, progress=False, checkpoint_every=1, log_every=4),
        probe=ProbeConfig(every=4),
        eval=EvalConfig(knn_every=1, knn_k=20, linear_epochs=5),
    )
    table.update(over)
    return TrainConfig(**table)


@pytest.fixture
def make_config():
    """The factory :func:`tiny_config` (tests cannot import conftest under --import-mode=importlib)."""
    return tiny_config
