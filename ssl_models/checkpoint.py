"""Atomic checkpoints (``analysis.atomic_path``: a temporary file in the same folder, fsync, ``os.replace``).

A run killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
Checkpoints hold only tensors, numbers, strings, lists and dicts, so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from stopgrad.analysis import atomic_path

from .errors import TrainingError

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; a missing or corrupt file raises TrainingError."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise TrainingError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "method" not in state:
        raise TrainingError(f"{path}: not a stopgrad training checkpoint")
    return state
