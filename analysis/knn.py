"""Weighted k-nearest-neighbour classifier (InstDisc / MoCo-demo protocol, reference/methods.md §5)."""

from __future__ import annotations

import torch

__all__ = ["knn_accuracy", "knn_predict"]


@torch.no_grad()
def knn_predict(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predict labels of ``query`` (M, d) from a feature ``bank`` (N, d) with labels (N,).

    Both are L2-normalised here; the top-k cosine neighbours vote with weight exp(sim / T).
    Ties in the vote go to the lower class index. Returns (M,) int64.
    """
    if query.ndim != 2 or bank.ndim != 2 or query.shape[1] != bank.shape[1]:
        raise ValueError(f"query {tuple(query.shape)} and bank {tuple(bank.shape)} must be (M, d) and (N, d)")
    if bank_labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels has shape {tuple(bank_labels.shape)}; expected ({bank.shape[0]},)")
    k = min(k, bank.shape[0])
    bank = torch.nn.functional.normalize(bank.float(), dim=1)
    labels = bank_labels.to(bank.device, torch.int64)
    preds = []
    for start in range(0, query.shape[0], chunk):
        q = torch.nn.functional.normalize(query[start : start + chunk].to(bank.device).float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Fraction of ``query`` whose weighted-kNN prediction equals ``query_labels``."""
    pred = knn_predict(query, bank, bank_labels, num_classes, k=k, temperature=temperature)
    return float((pred.cpu() == query_labels.cpu().to(torch.int64)).double().mean())
