"""Shared by the vote-based metrics (FactorVAE score, m-FVM_k): global code variances, active
dimensions, and groups of factor vectors that agree on chosen factors."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._protocol import encode_classes


def global_variance(data, encode: Callable, num: int, code: str, gen: torch.Generator, encode_batch: int) -> Tensor:
    """Per-dimension variance (ddof 1) of the codes of `num` random factor vectors, `[d]`."""
    codes = encode_classes(data, encode, data.sample_factors(num, gen), code, gen, encode_batch)
    return codes.var(dim=0, unbiased=True)


def active_dims(variance: Tensor, prune: float) -> Tensor:
    """Dimensions whose standard deviation reaches the pruning threshold (collapsed ones vote never)."""
    return variance.sqrt() >= prune


def fixed_groups(data, num: int, group: int, fixed: Tensor, gen: torch.Generator) -> Tensor:
    """`num` groups of `group` factor vectors `[num, group, F]`; in group i every factor with
    fixed[i, f] = True is copied from the group's first vector."""
    sizes = len(data.factor_sizes)
    classes = data.sample_factors(num * group, gen).reshape(num, group, sizes)
    return torch.where(fixed.unsqueeze(1), classes[:, :1, :], classes)


def normalised_local_variance(data, encode: Callable, classes: Tensor, variance: Tensor, active: Tensor, code: str,
                              gen: torch.Generator, encode_batch: int) -> Tensor:
    """Within-group variance (ddof 1) over global variance `[num, d]`; inactive dims are +inf."""
    num, group, _ = classes.shape
    codes = encode_classes(data, encode, classes.reshape(num * group, -1), code, gen, encode_batch)
    local = codes.reshape(num, group, -1).var(dim=1, unbiased=True)
    ratio = local / variance.clamp_min(torch.finfo(torch.float64).tiny)
    return ratio.masked_fill(~active.to(ratio.device), float("inf"))
