"""Mutual Information Gap (Chen et al. 2018; vae.md 4.4), disentanglement_lib's discrete form.

Each code dimension is cut into num_bins equal-width bins over its range (the maximum falls in the
last bin, a constant dimension is one bin) on numpy.histogram's edges, computed on the float64
codes: a value on an edge bins as in disentanglement_lib run on float64 codes. I[d, k] is the
plug-in mutual information (nats) of the binned dimension d and factor k; MIG = mean over factors
k with H_k > 0 of (largest - second largest I[., k]) / H_k, H_k the empirical factor entropy.
With more factor classes than bins a perfect code cannot reach 1: for known answers, set
num_bins >= the largest factor size.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._protocol import MetricResult, check_codes_classes, dense_labels, require, resolve


def discretize(codes: Tensor, num_bins: int) -> Tensor:
    """Bin index 0..num_bins-1 per entry: disentanglement_lib's np.digitize(x, np.histogram(x,
    num_bins)[1][:-1]) per column, shifted to start at 0. The edges are numpy's (NumPy >= 2)
    linspace in codes.dtype, lo + i * ((hi - lo) / num_bins), so a value exactly on an edge opens
    the bin numpy opens with it. A constant column is one bin (0)."""
    lo, hi = codes.min(dim=0).values, codes.max(dim=0).values
    step = (hi - lo) / num_bins
    index = torch.arange(num_bins, dtype=codes.dtype, device=codes.device)
    edges = index * step.unsqueeze(1) + lo.unsqueeze(1)                       # [d, num_bins]: no last edge
    bins = torch.searchsorted(edges, codes.t().contiguous(), right=True) - 1
    bins = bins.clamp_(0, num_bins - 1).t()
    return torch.where((hi > lo).unsqueeze(0), bins, torch.zeros_like(bins))   # constant column: one bin


def _entropy(p: Tensor, dim) -> Tensor:
    return -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(dim=dim)


def mutual_information_matrix(binned: Tensor, labels: Tensor, num_bins: int, sizes: list[int]) -> Tensor:
    """Plug-in MI (nats) `[d, F]` from one joint histogram over all (dimension, factor) pairs."""
    n, d = binned.shape
    f, k = labels.shape[1], max(sizes)
    pair = (torch.arange(d, device=binned.device).view(1, d, 1) * f
            + torch.arange(f, device=binned.device).view(1, 1, f))
    index = ((pair * num_bins + binned.unsqueeze(2)) * k + labels.unsqueeze(1)).flatten()
    joint = torch.bincount(index, minlength=d * f * num_bins * k).view(d, f, num_bins, k).double() / n
    h_bins = _entropy(joint.sum(3), dim=2)
    h_factor = _entropy(joint.sum(2), dim=2)
    return (h_bins + h_factor - _entropy(joint.flatten(2), dim=2)).clamp_min(0.0)


def mutual_information_gap(codes, classes, *, protocol: str = "dlib", num_points: Optional[int] = None,
                           num_bins: Optional[int] = None, code: str = "mean") -> MetricResult:
    """MIG of codes `[N, d]` against integer factor classes `[N, F]` (the first num_points rows).
    code only labels the result. details: mi `[d, F]`, entropy `[F]`, per-factor gaps."""
    codes, classes = check_codes_classes("mutual_information_gap", codes, classes)
    params = resolve("mig", protocol, dict(num_points=num_points, num_bins=num_bins))
    require("mutual_information_gap", "num_bins", params["num_bins"], 1, "codes are binned")
    require("mutual_information_gap", "codes rows", codes.shape[0], params["num_points"],
            f"protocol {protocol!r} uses num_points = {params['num_points']}; pass a smaller num_points to use fewer")
    if codes.shape[1] < 2:
        raise ValueError("mutual_information_gap needs at least 2 code dimensions (a gap between the top two)")
    codes, classes = codes[:params["num_points"]], classes[:params["num_points"]]
    labels, sizes = dense_labels(classes)
    mi = mutual_information_matrix(discretize(codes, params["num_bins"]), labels, params["num_bins"], sizes)
    entropy = _entropy(torch.nn.functional.one_hot(labels, max(sizes)).double().mean(0), dim=1)
    top = mi.topk(2, dim=0).values
    informative = entropy > 0
    gaps = torch.where(informative, (top[0] - top[1]) / entropy.clamp_min(1e-300), torch.zeros_like(entropy))
    score = float(gaps[informative].mean()) if bool(informative.any()) else 0.0
    return MetricResult("mig", score, protocol, code, params,
                        {"mi": mi.cpu(), "entropy": entropy.cpu(), "per_factor": gaps.cpu(),
                         "skipped_factors": (~informative).nonzero().flatten().tolist()})
