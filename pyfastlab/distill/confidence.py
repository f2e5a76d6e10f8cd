"""Confidence-distribution utilities (MDT studies how KD from dumb teachers reshapes them)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..ops._checks import check_tensor


class ConfidenceStats(NamedTuple):
    confidence: Tensor                 # [N] max softmax probability
    entropy: Tensor                    # [N] predictive entropy (nats)
    bin_edges: Tensor                  # [bins + 1] equal-width edges over [0, 1]
    histogram: Tensor                  # [bins] counts of confidence per bin
    mean_confidence: float
    mean_entropy: float
    histogram_correct: Optional[Tensor] = None    # [bins], with target
    histogram_incorrect: Optional[Tensor] = None  # [bins], with target
    accuracy: Optional[float] = None
    ece: Optional[float] = None        # expected calibration error, with target


def confidence_bins(confidence: Tensor, bins: int) -> Tensor:
    """Bin b holds confidences in (b/bins, (b+1)/bins]; 0 goes to bin 0."""
    return (torch.ceil(confidence * bins).long() - 1).clamp_(0, bins - 1)


@torch.no_grad()
def confidence_stats(logits: Tensor, target: Optional[Tensor] = None, bins: int = 15) -> ConfidenceStats:
    """Per-sample max-softmax confidence and entropy of logits [N, C], their histogram (split by
    correct / incorrect when `target` [N] is given), means, accuracy and
    ECE = sum_b (|B_b| / N) |acc_b - conf_b| over `bins` equal-width confidence bins."""
    check_tensor("logits", logits, floating=True, dim=2)
    if logits.shape[1] == 0:
        raise ValueError("logits must have at least one class (C > 0)")
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    log_p = torch.log_softmax(logits.double(), dim=1)
    p = log_p.exp()
    confidence, predicted = p.max(1)
    entropy = -(p * log_p).nan_to_num(0.0).sum(1)  # 0 * log 0 = 0
    index = confidence_bins(confidence, bins)
    histogram = torch.bincount(index, minlength=bins)
    n = logits.shape[0]
    mean = lambda t: float(t.mean()) if n else float("nan")  # noqa: E731
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    if target is None:
        return ConfidenceStats(confidence, entropy, edges, histogram, mean(confidence), mean(entropy))
    check_tensor("target", target, dtypes=(torch.int32, torch.int64), dim=1, device=logits.device)
    if target.shape[0] != n:
        raise ValueError(f"target must have the N = {n} rows of logits, got {target.shape[0]}")
    correct = predicted == target
    hist_correct = torch.bincount(index[correct], minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64, device=logits.device).index_add_(0, index, confidence)
    ece = ((hist_correct.double() - conf_sum).abs().sum() / max(n, 1)).item() if n else float("nan")
    return ConfidenceStats(confidence, entropy, edges, histogram, mean(confidence), mean(entropy),
                           hist_correct, histogram - hist_correct, mean(correct.double()), ece)
