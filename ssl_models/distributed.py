"""Multi-process helpers for DDP runs launched by torchrun (NCCL on GPUs, gloo on the CPU).

Every helper is a no-op in a single-process run, so methods call them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "barrier",
    "broadcast_",
    "gather_global",
    "gather_nograd",
    "gather_with_grad",
    "init_distributed",
    "is_main",
    "rank",
    "shutdown_distributed",
    "world_size",
]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(device: str = "auto") -> DistInfo:
    """Set up the process group when launched by torchrun (WORLD_SIZE > 1); pick this process's device.

    ``device``: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``. Under torchrun
    on CUDA each process takes ``cuda:LOCAL_RANK``. The backend is NCCL on CUDA and gloo on the CPU.
    """
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from .errors import TrainingError

            raise TrainingError(f"device {device!r} asked for, but CUDA is not available on this machine")
        if ws > 1:
            dev = torch.device("cuda", local)
        elif dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if ws > 1 and not _active():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank(), world_size(), local, dev)


def shutdown_distributed() -> None:
    if _active():
        dist.destroy_process_group()


def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from all processes along dim 0, in rank order; no gradient."""
    if not _active() or world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def gather_global(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from all processes in *global-batch order*; no gradient.

    The trainer gives process r the samples r, r + W, r + 2W, ... of each global batch, so row ``r + W*j``
    of the result is process r's row j: the global batch as a one-process run would hold it.
    """
    if not _active() or world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.stack(out, dim=1).reshape(-1, *x.shape[1:])


def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``x`` in place with process ``src``'s value (a no-op in one process); returns ``x``."""
    if _active() and world_size() > 1:
        dist.broadcast(x, src=src)
    return x


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`gather_nograd` but the gradient flows back to every process's own slice."""
    if not _active() or world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))
