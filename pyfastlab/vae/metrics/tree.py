"""A small CART classifier in torch, grown level by level with every node of a level evaluated at
once: DCI's fast built-in importance model (vae.md 4.4, `model="tree"`).

Candidate thresholds per feature are fixed up front: midpoints of consecutive sorted unique values
when there are at most 64 of them, else the 63 interior quantiles. A node splits on the (feature,
threshold) with the largest weighted Gini decrease (N_t G_t - N_L G_L - N_R G_R) / N, both children
keeping >= min_samples_leaf rows; it stays a leaf at max_depth, when pure, with fewer than
min_samples_split rows, or without a split that lowers the impurity. Feature importance = summed
decreases. Leaves predict their majority class (ties → lowest class). Not sklearn's tree: scores
from it are not comparable with disentanglement_lib's gradient-boosted ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MAX_UNIQUE = 64


def candidate_thresholds(x: Tensor) -> Tensor:
    """`[d, T]` sorted thresholds per feature, padded with +inf (T <= MAX_UNIQUE - 1)."""
    out = torch.full((x.shape[1], MAX_UNIQUE - 1), float("inf"), dtype=x.dtype)
    quantiles = torch.arange(1, MAX_UNIQUE, dtype=x.dtype) / MAX_UNIQUE
    for d in range(x.shape[1]):
        values = torch.unique(x[:, d])
        if values.numel() <= MAX_UNIQUE:
            thresholds = (values[:-1] + values[1:]) / 2
        else:
            thresholds = torch.unique(torch.quantile(x[:, d], quantiles))
        out[d, :thresholds.numel()] = thresholds
    return out


def _gini_times_n(counts: Tensor) -> tuple[Tensor, Tensor]:
    """(N * Gini, N) over the last (class) axis."""
    n = counts.sum(-1)
    return n - counts.square().sum(-1) / n.clamp_min(1), n


@dataclass
class Tree:
    feature: Tensor       # [nodes] split feature, -1 for leaves
    threshold: Tensor     # [nodes] go left when x <= threshold
    left: Tensor          # [nodes] child ids (right = left + 1)
    value: Tensor         # [nodes] majority class
    importances: Tensor   # [d] summed weighted Gini decreases
    max_depth: int

    def predict(self, x: Tensor) -> Tensor:
        node = torch.zeros(x.shape[0], dtype=torch.long)
        rows = torch.arange(x.shape[0])
        for _ in range(self.max_depth):
            feature = self.feature[node]
            split = feature >= 0
            go_left = x[rows, feature.clamp_min(0)] <= self.threshold[node]
            node = torch.where(split, self.left[node] + (~go_left).long(), node)
        return self.value[node]


def fit_tree(x: Tensor, y: Tensor, num_classes: int, *, max_depth: int = 8, min_samples_split: int = 10,
             min_samples_leaf: int = 5) -> Tree:
    """Fit on features x `[N, d]` (float) and labels y `[N]` in 0..num_classes-1."""
    x, y = x.double().cpu(), y.long().cpu()
    n, d = x.shape
    thresholds = candidate_thresholds(x)                              # [d, T]
    t = thresholds.shape[1]
    bins = torch.stack([torch.searchsorted(thresholds[j].contiguous(), x[:, j].contiguous()) for j in range(d)], 1)
    feature, threshold, left, value = [-1], [0.0], [0], [0]
    importances = torch.zeros(d, dtype=torch.float64)
    node_of = torch.zeros(n, dtype=torch.long)                       # current node per row, -1 when settled
    level = torch.tensor([0])                                         # node ids of this level
    for depth in range(max_depth + 1):
        rows = node_of >= 0
        local = torch.full((len(feature),), -1, dtype=torch.long)
        local[level] = torch.arange(level.numel())
        node_local = local[node_of[rows]]
        totals = torch.zeros(level.numel(), num_classes, dtype=torch.float64)
        totals.index_put_((node_local, y[rows]), torch.ones(int(rows.sum()), dtype=torch.float64), accumulate=True)
        majority = totals.argmax(1)
        for i, node in enumerate(level.tolist()):
            value[node] = int(majority[i])
        parent_g, parent_n = _gini_times_n(totals)
        can_split = (parent_n >= min_samples_split) & (parent_g > 1e-12) & (depth < max_depth)
        if not bool(can_split.any()):
            break
        # class counts per (node, feature, bin), cumulated over bins: left side of each threshold
        index = ((node_local.unsqueeze(1) * d + torch.arange(d)) * (t + 1) + bins[rows]) * num_classes
        index = (index + y[rows].unsqueeze(1)).flatten()
        counts = torch.bincount(index, minlength=level.numel() * d * (t + 1) * num_classes).double()
        left_counts = counts.view(level.numel(), d, t + 1, num_classes).cumsum(2)[:, :, :t]
        left_g, left_n = _gini_times_n(left_counts)
        right_g, right_n = _gini_times_n(totals.view(-1, 1, 1, num_classes) - left_counts)
        gain = parent_g.view(-1, 1, 1) - left_g - right_g
        valid = (left_n >= min_samples_leaf) & (right_n >= min_samples_leaf) & torch.isfinite(thresholds).unsqueeze(0)
        gain = torch.where(valid, gain, torch.full_like(gain, -1.0)).flatten(1)
        best_gain, best = gain.max(dim=1)                         # first maximum: lowest feature, threshold
        split = can_split & (best_gain > 1e-12)
        next_level = []
        new_node_of = node_of.clone()
        for i in split.nonzero().flatten().tolist():
            node, j, k = int(level[i]), int(best[i]) // t, int(best[i]) % t
            feature[node], threshold[node], left[node] = j, float(thresholds[j, k]), len(feature)
            importances[j] += float(best_gain[i]) / n
            for _ in range(2):
                feature.append(-1), threshold.append(0.0), left.append(0), value.append(int(majority[i]))
            next_level += [left[node], left[node] + 1]
            members = node_of == node
            new_node_of[members] = left[node] + (bins[members, j] > k).long()
        settled = rows.clone()
        settled[rows] = ~split[node_local]
        new_node_of[settled] = -1
        node_of = new_node_of
        if not next_level:
            break
        level = torch.tensor(next_level)
    return Tree(torch.tensor(feature), torch.tensor(threshold, dtype=torch.float64), torch.tensor(left),
                torch.tensor(value), importances, max_depth)
