"""Pure-PyTorch references of the mixup ops pair_mix, mixed_logits_cross_entropy and
uniformity_loss, written from mixup.md section 3: the oracles of the tests (float64 on upcast
inputs) and the eager baselines of the benchmarks.

They materialise what the kernels avoid on purpose (the gathered partner rows, the mixed logits,
every pairwise difference): this is the chain a user writes by hand.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _lam_rows(lam, n_rows: int, like: torch.Tensor) -> torch.Tensor:
    """lam as an opmath column [B, 1] (a number, a 0-dim tensor broadcast, or [B])."""
    if not isinstance(lam, torch.Tensor):
        return torch.full((n_rows, 1), float(lam), dtype=like.dtype, device=like.device)
    return lam.to(like.dtype).reshape(-1, 1).expand(n_rows, 1)


def pair_mix(x, partner, lam):
    """out[i] = lam[i] x[i] + (1 - lam[i]) x[partner[i]], exactly x[i] at lam = 1 and x[partner[i]]
    at lam = 0 (row-level end rule of 3.1); computed in opmath, returned in x.dtype."""
    xo = x.to(_opmath(x.dtype))
    lam_col = _lam_rows(lam, x.shape[0], xo)
    other = xo.index_select(0, partner)
    mixed = lam_col * xo + (1 - lam_col) * other
    ends = (lam_col == 1) | (lam_col == 0)
    out = torch.where(lam_col == 1, xo, torch.where(lam_col == 0, other, mixed))
    # The backward is the plain formula also at the ends (3.1): torch.where would give lam no
    # gradient there, so a zero-valued term carries d out / d lam = x - x[p] on those rows.
    diff = torch.nan_to_num((xo - other).detach(), nan=0.0, posinf=0.0, neginf=0.0)
    out = out + torch.where(ends, (lam_col - lam_col.detach()) * diff, 0.0)
    return out.to(x.dtype)


_REDUCTIONS = ("none", "mean", "sum")


def mixed_logits_cross_entropy(logits, partner, lam, target, reduction="mean"):
    """F.cross_entropy of the mixed logits pair_mix(logits, partner, lam) (opmath, logits.dtype out)."""
    z = logits.to(_opmath(logits.dtype))
    mixed = pair_mix(z, partner, lam)
    return F.cross_entropy(mixed, target, reduction=reduction).to(logits.dtype)


def uniformity_loss(x, t=2.0):
    """log of the mean over pairs a < b of exp(-t ||x_a - x_b||^2), from explicit pairwise
    differences (an [P, D] buffer: no pdist, whose gradient at a zero distance is undefined)."""
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity_loss needs at least 2 rows, got N = {n}")
    xo = x.to(_opmath(x.dtype))
    a, b = torch.triu_indices(n, n, offset=1, device=x.device)
    d2 = (xo[a] - xo[b]).pow(2).sum(-1)
    return (torch.logsumexp(-t * d2, 0) - math.log(n * (n - 1) / 2)).to(x.dtype)


def uniformity_loss_pdist(x, t=2.0):
    """The align_uniform formula, torch.log(torch.exp(-t * pdist(x)^2).mean()): the benchmark's
    eager baseline (it underflows to -inf for far-apart points, which the op does not)."""
    return torch.log(torch.exp(-t * torch.pdist(x).pow(2)).mean())
