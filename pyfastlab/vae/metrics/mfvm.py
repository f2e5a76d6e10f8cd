"""Multi-factor FactorVAE metric m-FVM_k (CFASL, arXiv 2401.08897; vae.md 4.4).

For k fixed factors: a vote draws k distinct factors uniformly, batch_size factor vectors that
share those k factors, and takes the k active dimensions with the smallest local / global
variance ratio (global variances over num_variance points, active when sqrt(v) >= prune). Votes
are grouped by the sorted factor tuple (key); score_k = mean over keys of (count of the key's most
frequent sorted dimension tuple / the key's votes). Fewer active dimensions than k → score 0.
"""
from __future__ import annotations

from math import comb
from typing import Callable, Optional, Sequence, Union

import torch

from ._protocol import MetricResult, check_data, generator, require, resolve
from ._votes import active_dims, fixed_groups, global_variance, normalised_local_variance


def _score_k(data, encode, k, params, variance, active, code, gen, encode_batch) -> tuple[float, int]:
    num_factors, num = len(data.factor_sizes), params["num_votes"]
    factors = torch.rand(num, num_factors, generator=gen).argsort(dim=1)[:, :k]      # k distinct, uniform
    fixed = torch.zeros(num, num_factors, dtype=torch.bool).scatter_(1, factors, True)
    classes = fixed_groups(data, num, params["batch_size"], fixed, gen)
    ratio = normalised_local_variance(data, encode, classes, variance, active, code, gen, encode_batch).cpu()
    # k smallest ratios (stable sort: ties → lower dimension); as sets, via bit masks
    dims = ratio.argsort(dim=1, stable=True)[:, :k]
    key = (torch.ones(num, 1, dtype=torch.long) << factors).sum(1)
    dim_set = (torch.ones(num, 1, dtype=torch.long) << dims).sum(1)
    pairs, counts = torch.unique(torch.stack([key, dim_set], dim=1), dim=0, return_counts=True)
    keys, key_index = torch.unique(pairs[:, 0], return_inverse=True)
    best = torch.zeros(keys.numel(), dtype=torch.long).scatter_reduce_(0, key_index, counts, "amax")
    totals = torch.zeros(keys.numel(), dtype=torch.long).index_add_(0, key_index, counts)
    return float((best.double() / totals.double()).mean()), int(keys.numel())


def multi_factor_vote_score(data, encode: Callable, k: Union[None, int, Sequence[int]] = None, *,
                            protocol: str = "dlib", code: str = "mean", seed: int = 0,
                            batch_size: Optional[int] = None, num_votes: Optional[int] = None,
                            num_variance: Optional[int] = None, prune: Optional[float] = None,
                            encode_batch: int = 1024) -> MetricResult:
    """m-FVM_k for one k or several (default: every k in 2..F-1); score = mean over the ks,
    details["per_k"] = {k: score_k}. Sizes from PROTOCOLS["mfvm"][protocol] unless overridden."""
    sizes = check_data(data)
    num_factors = len(sizes)
    ks = list(range(2, num_factors)) if k is None else ([k] if isinstance(k, int) else list(k))
    if not ks or any(not isinstance(x, int) or not 1 <= x <= num_factors for x in ks):
        raise ValueError(f"k must be ints in 1..{num_factors} (the number of factors), got {k!r}"
                         + (" (with fewer than 3 factors there is no default k: pass one)" if not ks else ""))
    params = resolve("mfvm", protocol, dict(batch_size=batch_size, num_votes=num_votes, num_variance=num_variance,
                                            prune=prune))
    require("multi_factor_vote_score", "batch_size", params["batch_size"], 2, "a within-group variance needs 2 codes")
    require("multi_factor_vote_score", "num_variance", params["num_variance"], 2, "a variance needs 2 codes")
    require("multi_factor_vote_score", "num_votes", params["num_votes"], max(comb(num_factors, x) for x in ks),
            "every factor tuple (key) should be voted on at least once on average")
    gen = generator(seed)
    variance = global_variance(data, encode, params["num_variance"], code, gen, encode_batch)
    active = active_dims(variance, params["prune"])
    if variance.numel() > 60:
        raise ValueError(f"multi_factor_vote_score supports up to 60 code dimensions, got {variance.numel()}")
    per_k, keys = {}, {}
    for x in ks:
        if int(active.sum()) < x:
            per_k[x], keys[x] = 0.0, 0
        else:
            per_k[x], keys[x] = _score_k(data, encode, x, params, variance, active, code, gen, encode_batch)
    params["k"] = ks
    score = sum(per_k.values()) / len(per_k)
    return MetricResult("mfvm", score, protocol, code, params,
                        {"per_k": per_k, "keys_seen": keys, "num_active_dims": int(active.sum())})
