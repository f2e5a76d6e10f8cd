"""Split digits: scikit-learn's bundled 8x8 digits as a class-incremental stream (continual.md 4.6)."""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor


class Task(NamedTuple):
    classes: tuple[int, ...]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def _digits(seed: int) -> tuple[Tensor, Tensor, bool]:
    """(x in [0, 1] [1797, 64], y, is_real). Without scikit-learn: a synthetic 64-d stand-in."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        warnings.warn("scikit-learn is not installed: split_digits uses a SYNTHETIC 64-d stand-in "
                      "(pip install 'pyfastlab[demo]' for the real digits)", stacklevel=3)
        gen = torch.Generator().manual_seed(seed)
        prototypes = torch.rand(10, 64, generator=gen)
        y = torch.arange(10).repeat_interleave(180)
        x = (prototypes[y] + 0.35 * torch.randn(y.shape[0], 64, generator=gen)).clamp(0, 1)
        return x, y, False
    bunch = load_digits()
    return torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0, torch.as_tensor(bunch.target).long(), True


def split_digits(n_tasks: int = 5, test_fraction: float = 0.3, seed: int = 0) -> list[Task]:
    """The digits split per class into train/test (round(test_fraction * n_c) test images per
    class, chosen with `seed`), then into n_tasks tasks of consecutive classes: (0, 1), ..., (8, 9)."""
    if not isinstance(n_tasks, int) or not 1 <= n_tasks <= 10 or 10 % n_tasks:
        raise ValueError(f"n_tasks must divide the 10 classes (1, 2, 5 or 10), got {n_tasks!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    x, y, _ = _digits(seed)
    gen = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_test = round(test_fraction * idx.numel())
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    per_task = 10 // n_tasks
    tasks = []
    for t in range(n_tasks):
        classes = tuple(range(t * per_task, (t + 1) * per_task))
        tr = torch.cat([train_idx[c] for c in classes])
        te = torch.cat([test_idx[c] for c in classes])
        tasks.append(Task(classes, x[tr], y[tr], x[te], y[te]))
    return tasks
