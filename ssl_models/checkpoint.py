"""Atomic, checksummed checkpoints (``analysis.atomic_path``: a temporary file in the same folder, fsync,
``os.replace``).

A run killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
The file is a torch file holding ``{"format": CHECKPOINT_FORMAT, "sha256": ..., "payload": uint8 tensor}``,
where the payload is the ``torch.save`` serialisation of the state (stored as raw bytes in the file) and
``sha256`` its digest: a truncated or
bit-flipped file is refused on load (one line naming the file), never used. Checkpoints hold only
tensors, numbers, strings, lists and dicts, so they load with ``torch.load(weights_only=True)``.
A checkpoint is finite by construction: the trainer writes none whose state holds a NaN or an infinity,
and :func:`load_checkpoint` refuses one whose model state does.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from stopgrad.analysis import atomic_path

from .errors import TrainingError

__all__ = ["CHECKPOINT_NAME", "CHECKPOINT_FORMAT", "first_nonfinite", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
#: the outer format's tag (the payload's own layout is ``state["format"]``)
CHECKPOINT_FORMAT = "stopgrad-checkpoint-sha256"


def first_nonfinite(tensors) -> tuple[str, float] | None:
    """The first ``(name, value)`` of (name, tensor) pairs whose floating tensor holds a NaN or an
    infinity (value: its first non-finite entry), or None when all are finite. One synchronisation."""
    named = [(n, t) for n, t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    if not named:
        return None
    ok = torch.stack([torch.isfinite(t).all() for _, t in named])
    if bool(ok.all()):
        return None
    name, t = named[int((~ok).nonzero()[0])]
    flat = t.detach().flatten()
    return name, float(flat[~torch.isfinite(flat)][0])


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically with the sha256 of its serialisation; returns the path."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                    "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`. A missing, truncated or corrupt file (its
    checksum does not match), or one whose model state is not finite, raises TrainingError."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint there")
    try:
        outer = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""  # torch's first sentence
        raise TrainingError(f"{path}: unreadable checkpoint, truncated or corrupt "
                            f"({type(exc).__name__}{': ' + first if first else ''})") from None
    if isinstance(outer, dict) and outer.get("format") == CHECKPOINT_FORMAT:
        payload = outer.get("payload")
        payload = payload.numpy().tobytes() if isinstance(payload, torch.Tensor) and payload.dtype == torch.uint8 else b""
        if hashlib.sha256(payload).hexdigest() != outer.get("sha256"):
            raise TrainingError(f"{path}: corrupt checkpoint (its sha256 checksum does not match the content); "
                                "it was not used")
        try:
            state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
        except Exception as exc:  # a matching checksum over an unreadable payload: written by another tool
            raise TrainingError(f"{path}: unreadable checkpoint payload ({type(exc).__name__})") from None
    else:
        state = outer  # written before checksums were stored (no check possible)
    if not isinstance(state, dict) or "method" not in state:
        raise TrainingError(f"{path}: not a stopgrad training checkpoint")
    bad = first_nonfinite(state["method"].items()) if isinstance(state["method"], dict) else None
    if bad is not None:
        raise TrainingError(f"{path}: the checkpoint's {bad[0]} holds {bad[1]}; a non-finite checkpoint is not used")
    return state
