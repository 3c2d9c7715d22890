"""Projector and predictor heads: configurable MLPs, the bias-free linear predictor and its symmetric form."""

from __future__ import annotations

import torch
from torch import nn

from .config import PredictorConfig, ProjectorConfig

__all__ = [
    "LinearPredictor",
    "MLPHead",
    "SymmetricLinearPredictor",
    "build_predictor",
    "build_projector",
]


class MLPHead(nn.Sequential):
    """Linear layers of widths ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Hidden layers: Linear (bias only without BN) -> BatchNorm1d (if hidden_bn) -> ReLU. The last layer:
    Linear (bias if ``last_bias``) -> BatchNorm1d (if ``last_bn``, affine if ``last_bn_affine``).
    Input (B, dims[0]), output (B, dims[-1]).
    """

    def __init__(
        self,
        dims: list[int],
        hidden_bn: bool = True,
        last_bn: bool = False,
        last_bn_affine: bool = True,
        last_bias: bool = True,
    ):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            if last:
                layers.append(nn.Linear(a, b, bias=last_bias and not last_bn))
                if last_bn:
                    layers.append(nn.BatchNorm1d(b, affine=last_bn_affine))
            else:
                layers.append(nn.Linear(a, b, bias=not hidden_bn))
                if hidden_bn:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.in_dim, self.out_dim = int(dims[0]), int(dims[-1])


class LinearPredictor(nn.Module):
    """Bias-free linear predictor p = W_p z with W_p (d, d) (the theory's predictor).

    ``matrix()`` returns W_p; ``set_matrix(W)`` overwrites it (used by DirectPred-family rules).
    """

    symmetric = False

    def __init__(self, dim: int, init: str = "default"):
        super().__init__()
        self.dim = int(dim)
        self.weight = nn.Parameter(torch.empty(dim, dim))
        if init == "identity":
            nn.init.eye_(self.weight)
        else:  # nn.Linear's default init
            nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def matrix(self) -> torch.Tensor:
        return self.weight

    @torch.no_grad()
    def set_matrix(self, W: torch.Tensor) -> None:
        self.weight.copy_(W.to(self.weight.dtype))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(z, self.matrix())


class SymmetricLinearPredictor(LinearPredictor):
    """Symmetric linear predictor W_p = (A + A^T)/2 with a free parameter A (Assumption 3 of the theory)."""

    symmetric = True

    def matrix(self) -> torch.Tensor:
        return 0.5 * (self.weight + self.weight.T)

    @torch.no_grad()
    def set_matrix(self, W: torch.Tensor) -> None:
        self.weight.copy_((0.5 * (W + W.mT)).to(self.weight.dtype))


def build_projector(cfg: ProjectorConfig, in_dim: int) -> MLPHead:
    """The projector: ``cfg.layers`` Linear layers from the backbone's ``in_dim`` to ``cfg.out_dim``."""
    dims = [in_dim] + [cfg.hidden_dim] * (cfg.layers - 1) + [cfg.out_dim]
    return MLPHead(dims, cfg.hidden_bn, cfg.last_bn, cfg.last_bn_affine, cfg.last_bias)


def build_predictor(cfg: PredictorConfig, dim: int) -> nn.Module:
    """The predictor d -> d for ``cfg.kind`` (``none`` gives nn.Identity)."""
    if cfg.kind == "mlp":
        return MLPHead([dim, cfg.hidden_dim, dim], hidden_bn=cfg.hidden_bn, last_bn=False, last_bias=cfg.bias)
    if cfg.kind == "linear":
        return LinearPredictor(dim, cfg.init)
    if cfg.kind == "symmetric":
        return SymmetricLinearPredictor(dim, cfg.init)
    return nn.Identity()
