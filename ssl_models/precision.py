"""Floating-point precision of a training run (``train.precision``).

* ``auto``: bf16 autocast on CUDA, fp32 on the CPU; ``bf16``: bf16 autocast; ``fp32``: fp32 throughout.
* ``fp64``: every parameter, buffer (BatchNorm running statistics, MoCo's queue), augmented view, loss
  and all_gather buffer is float64. Meant for the CPU: reference runs and the tests that compare two
  computational paths of one training run (one process against two), where float32 rounding, amplified
  by a sensitive net, would hide whether the paths agree. About 2x slower than fp32 on the CPU.

The losses, SplitBatchNorm, GSG's distances and MoCo's keys compute "in at least fp32"
(:func:`at_least_fp32`): bf16 activations are upcast, float64 ones are kept.
"""

from __future__ import annotations

import torch

__all__ = ["PRECISIONS", "at_least_fp32", "param_dtype"]

#: the allowed values of ``train.precision``
PRECISIONS = ("auto", "bf16", "fp32", "fp64")


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32, unless it is already float64 (then unchanged)."""
    return x if x.dtype == torch.float64 else x.float()


def param_dtype(precision: str) -> torch.dtype:
    """The dtype of the parameters, buffers and augmented views for ``train.precision``."""
    return torch.float64 if precision == "fp64" else torch.float32
