"""Evaluation of a finished run folder (``stopgrad evaluate DIR``): kNN monitor and linear probe."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from stopgrad.analysis import atomic_path

from .augment import EvalTransform
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import TrainConfig
from .data import ImageData, load_image_data
from .distributed import init_distributed
from .errors import TrainingError
from .evaluation import extract_features, linear_probe
from .methods import build_method
from .precision import param_dtype

__all__ = ["evaluate_run"]


def evaluate_run(cfg: TrainConfig, out_dir, *, data_root=None, device: str = "auto", linear: bool = True,
                 data: ImageData | None = None) -> dict:
    """kNN accuracy (k, T from ``cfg.eval``) and, if ``linear``, the linear-probe accuracy of the run in
    ``out_dir`` (its checkpoint's online backbone). Writes and returns ``out_dir/eval.json``."""
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    if not ckpt_path.is_file():
        raise TrainingError(f"{out_dir}: no {CHECKPOINT_NAME}; is this a `stopgrad train` run folder?")
    dev = init_distributed(device).device
    state = load_checkpoint(ckpt_path)
    if data is None:
        data = load_image_data(cfg.data, data_root, seed=cfg.train.seed)
    dtype = param_dtype(cfg.train.precision)  # an fp64 run is evaluated in float64, as its kNN monitor was
    method = build_method(cfg).to(dtype=dtype)
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as exc:
        raise TrainingError(f"{ckpt_path}: does not match the run's config.toml ({str(exc).splitlines()[0]})") from None
    backbone = method.backbone.to(dev)
    size = cfg.augment.crop_size or min(data.image_size)
    transform = EvalTransform(size, data.mean, data.std, out_dtype=dtype)
    amp = torch.bfloat16 if dev.type == "cuda" else None
    t0 = time.perf_counter()
    ev = cfg.eval
    n_bank = ev.knn_bank_subset or data.bank_images.shape[0]
    bank = extract_features(backbone, data.bank_images, transform, ev.batch_size, dev, amp)
    test = extract_features(backbone, data.test_images, transform, ev.batch_size, dev, amp)
    from stopgrad.analysis import knn_accuracy

    knn = knn_accuracy(test, data.test_labels, bank[:n_bank], data.bank_labels[:n_bank].to(bank.device),
                       data.num_classes, k=ev.knn_k, temperature=ev.knn_temperature)
    result = {
        "run": str(out_dir), "step": int(state["step"]), "dataset": data.name, "data_source": data.source,
        "knn_acc": knn, "knn_k": ev.knn_k, "knn_temperature": ev.knn_temperature, "knn_bank": int(n_bank),
    }
    hist = [(int(s), float(a)) for s, a in state.get("knn", [])]
    knn_hist = [a for s, a in hist if s > 0]  # as the trainer: the step-0 baseline is not the best
    if knn_hist:
        result["knn_monitor_last"], result["knn_monitor_best"] = knn_hist[-1], max(knn_hist)
    start = [a for s, a in hist if s == 0]
    if start:
        result["knn_monitor_start"] = start[-1]
    if linear:
        result.update(linear_probe(backbone, data, ev, transform, dev, amp, seed=cfg.train.seed, features=(bank, test)))
    result["seconds"] = time.perf_counter() - t0
    with atomic_path(out_dir / "eval.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result
