"""Alignment and uniformity of embeddings (Wang & Isola, 2020; mixup.md 4.2). Rows are
L2-normalised first by default (a common slip is forgetting it). Lower is better for both."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops


def _f(x: Tensor, normalize: bool) -> Tensor:
    return F.normalize(x, dim=1, eps=1e-12) if normalize else x


def _pow(d2: Tensor, alpha: float) -> Tensor:
    """||.||^alpha from squared norms; gradient 0 at a zero difference for alpha < 2."""
    if alpha == 2:
        return d2
    safe = torch.where(d2 > 0, d2, torch.ones_like(d2))
    return torch.where(d2 > 0, safe.pow(alpha / 2), torch.zeros_like(d2))


def alignment(a, b, *, alpha=2.0, normalize=True) -> Tensor:
    """mean_i ||f(a_i) - f(b_i)||^alpha over positive pairs (a_i, b_i)."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"a and b must both be [N, D] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return _pow((_f(a, normalize) - _f(b, normalize)).pow(2).sum(1), alpha).mean()


def class_alignment(x, labels, *, alpha=2.0, normalize=True) -> Tensor:
    """Mean over ordered pairs a != b with equal labels of ||f_a - f_b||^alpha. alpha = 2 uses the
    centred O(N D) form sum_{a,b in c} ||f_a - f_b||^2 = 2 n_c sum_{a in c} ||f_a - mu_c||^2;
    other alpha: per-class pairwise. No pairs at all: NaN."""
    if x.dim() != 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"x must be [N, D] and labels [N], got {tuple(x.shape)} and {tuple(labels.shape)}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    f = _f(x, normalize)
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    n_pairs = (counts * (counts - 1)).sum().to(f.dtype)
    if alpha == 2:
        sums = torch.zeros(classes.shape[0], f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, inverse, f)
        mu = sums / counts[:, None].to(f.dtype)
        spread = torch.zeros(classes.shape[0], dtype=f.dtype, device=f.device).index_add_(
            0, inverse, (f - mu[inverse]).pow(2).sum(1))
        total = (2 * counts.to(f.dtype) * spread).sum()
    else:
        total = f.new_zeros(())
        for c in range(classes.shape[0]):
            rows = f[inverse == c]
            total = total + _pow(torch.cdist(rows, rows).pow(2), alpha).sum()
    return total / n_pairs  # no pairs: total is 0 as well, and 0 / 0 is the documented NaN


def uniformity(x, *, t=2.0, normalize=True) -> Tensor:
    """ops.uniformity_loss(f(x), t=t): in [-4t, 0] for unit rows (t = 2: [-8, 0])."""
    if x.dim() != 2:
        raise ValueError(f"x must be [N, D], got shape {tuple(x.shape)}")
    return ops.uniformity_loss(_f(x, normalize), t=t)
