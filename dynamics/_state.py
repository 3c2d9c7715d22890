"""Flat state vectors for the batched integrators: named blocks packed into (runs, n) rows."""

from __future__ import annotations

import math

import torch


class Layout:
    """Named blocks of given shapes laid out contiguously in one row of length ``size``."""

    def __init__(self, blocks: dict[str, tuple[int, ...]]):
        self.blocks = dict(blocks)
        self.slices = {}
        offset = 0
        for name, shape in self.blocks.items():
            n = math.prod(shape)
            self.slices[name] = (offset, offset + n)
            offset += n
        self.size = offset

    def __contains__(self, name: str) -> bool:
        return name in self.blocks

    def views(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views (A, *shape) into y (A, size); no copies."""
        A = y.shape[0]
        return {name: y[:, a:b].view(A, *self.blocks[name]) for name, (a, b) in self.slices.items()}

    def pack(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate blocks (A, *shape), in layout order, into (A, size)."""
        A = next(iter(parts.values())).shape[0]
        return torch.cat([parts[name].reshape(A, -1) for name in self.blocks], dim=1)
