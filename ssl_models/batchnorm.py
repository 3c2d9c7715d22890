"""Split ("ghost") batch normalisation: statistics over groups of the batch.

MoCo's CIFAR demo simulates the per-GPU BatchNorm of an 8-GPU run on one GPU with 8 splits (shuffle-BN
has no effect otherwise). The groups are interleaved, sample n in group n mod splits, which is also how
a ``splits``-process DDP run shards each global batch here (rank r takes samples r, r + W, ...); so a
one-process run with ``splits = W`` normalises exactly like a W-process run with plain BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from .precision import at_least_fp32

__all__ = ["SplitBatchNorm", "convert_split_batchnorm"]


class SplitBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over ``num_splits`` interleaved groups of the batch, for inputs (N, C) or (N, C, ...).

    In training, each group is normalised with its own batch statistics (computed in fp32); the running
    statistics are updated with the mean over groups of each group's mean and unbiased variance. In eval
    it is an ordinary BatchNorm. Parameters and buffers have the same names as nn.BatchNorm*d.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits = {num_splits}: must be >= 1")
        self.num_splits = int(num_splits)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of shape (N, C, ...); got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        use_batch = self.training or not self.track_running_stats
        if not use_batch or self.num_splits == 1:
            return super().forward(x)
        n, c = x.shape[0], x.shape[1]
        s = self.num_splits
        if n % s:
            raise ValueError(f"batch of {n} does not split into {s} BatchNorm groups")
        xf = at_least_fp32(x).reshape(n // s, s, c, -1)  # sample n -> (n // s, n % s)
        dims = (0, 3)
        mean = xf.mean(dim=dims, keepdim=True)  # (1, s, c, 1)
        var = xf.var(dim=dims, unbiased=False, keepdim=True)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.to(xf.dtype).view(1, 1, c, 1) + self.bias.to(xf.dtype).view(1, 1, c, 1)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                count = xf.shape[0] * xf.shape[3]
                unbiased = var * (count / max(count - 1, 1))
                self.running_mean.mul_(1 - m).add_(mean.mean(dim=(0, 1)).flatten(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.mean(dim=(0, 1)).flatten(), alpha=m)
        y = y.reshape(x.shape).to(x.dtype)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return y


def convert_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in ``module`` by a SplitBatchNorm (in place; returns ``module``, or
    the new module when ``module`` itself is a BatchNorm).

    Like ``nn.SyncBatchNorm.convert_sync_batchnorm``, the new module takes over the original's
    Parameter and buffer *objects* (not copies), so ``requires_grad`` (a frozen momentum encoder stays
    frozen), optimizer references and the device are kept.
    """
    if num_splits == 1:
        return module
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        new = SplitBatchNorm(
            module.num_features, num_splits, eps=module.eps, momentum=module.momentum,
            affine=module.affine, track_running_stats=module.track_running_stats,
        )
        if module.affine:
            new.weight = module.weight
            new.bias = module.bias
        if module.track_running_stats:
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_split_batchnorm(child, num_splits))
    return module
