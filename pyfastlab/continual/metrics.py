"""Class-incremental metrics over an accuracy matrix a[t, j] = accuracy on task j after training
task t (continual.md 4.6); entries with j > t are ignored."""
from __future__ import annotations

import torch
from torch import Tensor


def _matrix(acc) -> Tensor:
    a = torch.as_tensor(acc, dtype=torch.float64)
    if a.dim() != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"acc must be a square [T, T] accuracy matrix, got shape {tuple(a.shape)}")
    return a


def final_average_accuracy(acc) -> float:
    """A = mean over tasks j of a[T-1, j]."""
    a = _matrix(acc)
    return float(a[-1].mean())


def forgetting(acc) -> float:
    """F = mean over j < T-1 of (max_{j <= t < T-1} a[t, j]) - a[T-1, j]; 0 for a single task."""
    a = _matrix(acc)
    n_tasks = a.shape[0]
    if n_tasks == 1:
        return 0.0
    drops = [float(a[j:n_tasks - 1, j].max() - a[-1, j]) for j in range(n_tasks - 1)]
    return sum(drops) / len(drops)
