"""Evaluation of a backbone: weighted kNN monitor and the offline linear probe on frozen features.

Protocols (stated in docs/ssl_models.md):

* kNN (InstDisc / MoCo demo, reference/methods.md §5): backbone features (after global pooling, before
  the projector) of the labelled train split (the bank) and of the test split, both under the test
  transform (no augmentation), BN in eval mode; L2-normalised; the k = 200 nearest bank features by
  cosine vote with weight exp(sim / T), T = 0.1 (:func:`stopgrad.analysis.knn_accuracy`).
* Linear probe: the same frozen features, standardised with the bank's mean and std; a linear softmax
  classifier trained with Adam (lr ``linear_lr``, cosine decay, weight decay ``linear_weight_decay``,
  batch ``linear_batch_size``) for ``linear_epochs`` epochs on the bank; the reported accuracy is the test
  accuracy after the last epoch (no selection on the test set).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stopgrad.analysis import knn_accuracy

from .augment import EvalTransform
from .config import EvalConfig
from .data import ImageData

__all__ = ["extract_features", "knn_monitor", "linear_probe"]


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    transform: EvalTransform,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Backbone features (N, D) in fp32 on ``device`` of uint8 ``images`` (N, 3, H, W), in eval mode."""
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = transform(images[start : start + batch_size].to(device, non_blocking=True))
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.bfloat16,
                                enabled=amp_dtype is not None):
                out.append(backbone(x).float())
    finally:
        backbone.train(was_training)
    return torch.cat(out)


def knn_monitor(
    backbone: nn.Module,
    data: ImageData,
    cfg: EvalConfig,
    transform: EvalTransform,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Weighted kNN test accuracy (fraction) of ``backbone`` with the bank = labelled train split."""
    n_bank = cfg.knn_bank_subset or data.bank_images.shape[0]
    bank = extract_features(backbone, data.bank_images[:n_bank], transform, cfg.batch_size, device, amp_dtype)
    query = extract_features(backbone, data.test_images, transform, cfg.batch_size, device, amp_dtype)
    return knn_accuracy(query, data.test_labels, bank, data.bank_labels[:n_bank].to(bank.device),
                        data.num_classes, k=cfg.knn_k, temperature=cfg.knn_temperature)


def linear_probe(
    backbone: nn.Module,
    data: ImageData,
    cfg: EvalConfig,
    transform: EvalTransform,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    seed: int = 0,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Train a linear classifier on frozen features; returns train/test accuracy after the last epoch.

    ``features``: precomputed (bank, test) features to skip the extraction.
    """
    device = torch.device(device)
    if features is None:
        xtr = extract_features(backbone, data.bank_images, transform, cfg.batch_size, device, amp_dtype)
        xte = extract_features(backbone, data.test_images, transform, cfg.batch_size, device, amp_dtype)
    else:
        xtr, xte = (f.to(device).float() for f in features)
    ytr = data.bank_labels.to(device)
    yte = data.test_labels.to(device)
    keep = ytr >= 0
    xtr, ytr = xtr[keep], ytr[keep]
    mean, std = xtr.mean(dim=0), xtr.std(dim=0).clamp(min=1e-6)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    g = torch.Generator(device="cpu").manual_seed(seed)
    clf = nn.Linear(xtr.shape[1], data.num_classes).to(device)
    with torch.no_grad():
        w = torch.empty(clf.weight.shape).uniform_(-1, 1, generator=g) / math.sqrt(xtr.shape[1])
        clf.weight.copy_(w)
        clf.bias.zero_()
    opt = torch.optim.Adam(clf.parameters(), lr=cfg.linear_lr, weight_decay=cfg.linear_weight_decay)
    n = xtr.shape[0]
    bs = min(cfg.linear_batch_size, n)
    steps = cfg.linear_epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    for _ in range(cfg.linear_epochs):
        order = torch.randperm(n, generator=g).to(device)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            loss = F.cross_entropy(clf(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        train_acc = float((clf(xtr).argmax(1) == ytr).double().mean())
        test_acc = float((clf(xte).argmax(1) == yte).double().mean())
    return {"linear_train_acc": train_acc, "linear_test_acc": test_acc, "linear_epochs": cfg.linear_epochs,
            "feature_dim": int(xtr.shape[1]), "train_images": int(n), "test_images": int(xte.shape[0])}
