"""Backbones: torchvision ResNets with the CIFAR or the ImageNet stem, and a small convnet for CPU tests."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from .config import EncoderConfig

__all__ = ["Encoder", "build_encoder"]

_RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}


class Encoder(nn.Module):
    """A backbone mapping images (B, 3, H, W) to features (B, feature_dim) (after global average pooling).

    Attributes:
        feature_dim: width of the output features (512 for ResNet-18/34, 2048 for ResNet-50).
        arch, stem: what was built.
    """

    def __init__(self, body: nn.Module, feature_dim: int, arch: str, stem: str):
        super().__init__()
        self.body = body
        self.feature_dim = int(feature_dim)
        self.arch, self.stem = arch, stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _resnet(arch: str, stem: str, zero_init_residual: bool) -> tuple[nn.Module, int]:
    net = _RESNETS[arch](weights=None, zero_init_residual=zero_init_residual)
    if stem == "cifar":
        # 3x3 stride-1 conv1 and no max-pool (SimCLR App. B.9, MoCo CIFAR demo, lightly's benchmark).
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def _convnet(width: int) -> tuple[nn.Module, int]:
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    w = width
    layers = block(3, w, 1) + block(w, 2 * w, 2) + block(2 * w, 4 * w, 2) + block(4 * w, 8 * w, 2)
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return body, 8 * w


def build_encoder(cfg: EncoderConfig) -> Encoder:
    """Build the backbone described by ``cfg`` (weights from torch's default init; no pretrained weights)."""
    if cfg.arch == "convnet":
        body, dim = _convnet(cfg.width)
    else:
        body, dim = _resnet(cfg.arch, cfg.stem, cfg.zero_init_residual)
    return Encoder(body, dim, cfg.arch, cfg.stem)
