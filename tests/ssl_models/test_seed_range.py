"""The training seed range [0, 2**63 - 1] is documented and honoured end to end (issue 14)."""

from __future__ import annotations

import pytest
import torch

from stopgrad.dynamics import SEED_MAX, ConfigError
from stopgrad.ssl_models import TrainSpec
from stopgrad.ssl_models.trainer import derived_seed


def test_training_seed_range_is_int64():
    assert TrainSpec(seed=SEED_MAX).seed == 2**63 - 1
    for bad in (-1, 2**63, 1.5):
        with pytest.raises(ConfigError, match="seed"):
            TrainSpec(seed=bad)


def test_derived_seeds_fit_torch_and_keep_old_streams():
    """Every derived seed of every valid seed is accepted by torch (it overflowed above ~9.2e12), and below
    that the streams are the ones older runs used (seed * 1_000_003 + salt), so old runs resume bitwise."""
    for seed in (0, 1, 9_223_372_036_000, 2**53 + 1, SEED_MAX):
        for salt in (1, 2, 7919 * 201):
            s = derived_seed(seed, salt)
            assert 0 <= s < 2**63
            torch.Generator().manual_seed(s)
    assert derived_seed(12345, 7919) == 12345 * 1_000_003 + 7919
    assert derived_seed(2**53, 1) != derived_seed(2**53 + 1, 1)
