"""Pure-PyTorch references of the vidvrd ops pairwise_mlp_scores, temporal_iou and span_nms,
written from vidvrd.md sections 3.1-3.3: the oracles of the tests (float64 on upcast inputs) and the
eager baselines of the benchmarks.

pairwise_mlp_scores materialises [B, N, M, H] here on purpose: it is the chain a user writes by hand.
"""
from __future__ import annotations

import math

import torch


def pairwise_mlp_scores(a, b, w, bias=0.0):
    """s[v, i, j] = bias + sum_h w[h] * relu(a[v, i, h] + b[v, j, h]); half inputs add in fp32."""
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    x = a.to(acc)[:, :, None, :] + b.to(acc)[:, None, :, :]
    return ((w.to(acc) * torch.relu(x)).sum(-1) + bias).to(a.dtype)


def _promoted(a, b):
    dtype = torch.promote_types(a.dtype, b.dtype)
    return dtype, not dtype.is_floating_point


def temporal_iou(a, b):
    """[P, Q] IoU of half-open spans, evaluated in the spec's order; ints exactly in int64 with one
    fp64 division (float32 output), half in fp32."""
    dtype, integral = _promoted(a, b)
    if integral:
        a, b, out = a.long(), b.long(), torch.float32
    else:
        out = dtype
        comp = torch.float64 if dtype == torch.float64 else torch.float32
        a, b = a.to(comp), b.to(comp)
    s0, e0 = a[:, 0, None], a[:, 1, None]
    s1, e1 = b[None, :, 0], b[None, :, 1]
    la = torch.clamp(e0 - s0, min=0)
    lb = torch.clamp(e1 - s1, min=0)
    inter = torch.clamp(torch.minimum(e0, e1) - torch.maximum(s0, s1), min=0)
    union = la + lb - inter
    if integral:
        inter, union = inter.double(), union.double()
    iou = torch.where(union == 0, torch.zeros((), dtype=inter.dtype), inter / union)
    return iou.to(out)


def _iou_dtype(spans):
    return torch.float32 if spans.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float64


def span_nms(spans, scores, iou_threshold, *, groups=None, max_keep=-1):
    """The greedy oracle of spec 3.3: stable score order (NaN as -inf, ties to the lower index), then
    per group keep a span iff under the cap and no kept span has IoU > iou_threshold with it."""
    m = spans.shape[0]
    device = spans.device
    spans = spans.detach().cpu().to(_iou_dtype(spans))
    key = torch.nan_to_num(scores.detach().cpu().double(), nan=-math.inf)
    order = torch.sort(key, descending=True, stable=True).indices.tolist()
    group = [0] * m if groups is None else groups.cpu().tolist()
    kept_by_group: dict[int, list[int]] = {}
    out = []
    thr = torch.tensor(iou_threshold, dtype=spans.dtype)
    for c in order:
        kept = kept_by_group.setdefault(group[c], [])
        if max_keep > 0 and len(kept) >= max_keep:
            continue
        if kept:
            ious = temporal_iou(spans[kept], spans[c:c + 1])[:, 0]
            if bool((ious > thr).any()):
                continue
        kept.append(c)
        out.append(c)
    return torch.tensor(out, dtype=torch.int64, device=device)
