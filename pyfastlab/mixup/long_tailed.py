"""Long-tailed subsets with the exponential profile of LDAM-DRW (Cao et al., 2019; mixup.md 4.3):
n_c = int(n_max * (1 / rho) ** (c / (C - 1))), class 0 the head. Test sets stay balanced."""
from __future__ import annotations

import numpy as np
import torch


def long_tailed_counts(n_max, num_classes, imbalance_factor) -> list[int]:
    if num_classes < 1 or n_max < 1:
        raise ValueError(f"n_max and num_classes must be >= 1, got {n_max} and {num_classes}")
    if not imbalance_factor >= 1:
        raise ValueError(f"imbalance_factor must be >= 1, got {imbalance_factor}")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * (1.0 / imbalance_factor) ** (c / (num_classes - 1))) for c in range(num_classes)]


def long_tailed_indices(labels, imbalance_factor, *, n_max=None, seed=0) -> torch.Tensor:
    """Indices of a long-tailed subset of `labels`: each class's indices shuffled by one
    numpy RandomState(seed), class by class in label order, keeping the first n_c (LDAM's subsets)."""
    y = torch.as_tensor(labels).cpu().numpy()
    num_classes = int(y.max()) + 1 if y.size else 0
    per_class = [np.flatnonzero(y == c) for c in range(num_classes)]
    if n_max is None:
        n_max = min(len(ix) for ix in per_class)
    counts = long_tailed_counts(n_max, num_classes, imbalance_factor)
    rng = np.random.RandomState(seed)
    chosen = []
    for c, (ix, n_c) in enumerate(zip(per_class, counts)):
        if n_c == 0 or n_c > len(ix):
            raise ValueError(f"class {c} needs {n_c} samples but has {len(ix)} (n_max={n_max}, "
                             f"imbalance_factor={imbalance_factor})")
        ix = ix.copy()
        rng.shuffle(ix)
        chosen.append(ix[:n_c])
    return torch.from_numpy(np.concatenate(chosen)).long()
