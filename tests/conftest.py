"""Shared fixtures: float64 CPU torch, and the offline data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _torch_defaults():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder with cifar10-jpeg.npz: $STOPGRAD_DATA, else ../shared/data beside the checkout."""
    root = Path(os.environ.get("STOPGRAD_DATA", REPO.parent / "shared" / "data"))
    if not (root / "cifar10-jpeg.npz").is_file():
        pytest.skip(f"offline CIFAR-10 not found under {root} (set STOPGRAD_DATA)")
    return root
