"""Public vidvrd ops: pairwise_mlp_scores (all-pairs one-hidden-layer MLP scores), temporal_iou
(P x Q IoU of half-open spans) and span_nms (grouped greedy 1-D NMS).

The math is vidvrd.md sections 3.1-3.3. Each call validates its arguments, promotes dtypes, picks a
backend ("auto": the compiled CPU kernel for CPU tensors; CUDA, else Triton, else the reference for
CUDA tensors) and dispatches to torch.ops.pyfastlab.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..reference import vidvrd_ops as reference
from . import _backends
from ._checks import check_float, check_int, check_tensor
from ._vidvrd_registry import op_for

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SPAN_DTYPES = _FLOATS + (torch.int32, torch.int64)


def pairwise_mlp_scores(a, b, w, bias=0.0, *, backend="auto") -> Tensor:
    """s[v, i, j] = sum_h w[h] * relu(a[v, i, h] + b[v, j, h]) + bias for a [B, N, H], b [B, M, H],
    w [H]; returns [B, N, M] in a's dtype without materialising [B, N, M, H]. Differentiable in a,
    b and w (relu'(0) = 0); bias is a float without gradient."""
    check_tensor("a", a, dtypes=_FLOATS, dim=3)
    check_tensor("b", b, dtypes=(a.dtype,), dim=3, device=a.device)
    check_tensor("w", w, dtypes=(a.dtype,), dim=1, device=a.device)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"b must have the batch size B = {a.shape[0]} of a, got shape {tuple(b.shape)}")
    if b.shape[2] != a.shape[2]:
        raise ValueError(f"b must have the hidden size H = {a.shape[2]} of a, got shape {tuple(b.shape)}")
    if w.shape[0] != a.shape[2]:
        raise ValueError(f"w must be [H = {a.shape[2]}], got shape {tuple(w.shape)}")
    bias = check_float("bias", bias)
    chosen = _backends.resolve(backend, a.device)
    if chosen == "reference":
        return reference.pairwise_mlp_scores(a, b, w, bias)
    return op_for("pairwise_mlp_scores_forward", chosen)(a, b, w, bias)


def _check_spans(name, x, device=None):
    check_tensor(name, x, dtypes=_SPAN_DTYPES, dim=2, device=device)
    if x.shape[1] != 2:
        raise ValueError(f"{name} must be [n, 2] spans [begin, end), got shape {tuple(x.shape)}")


def temporal_iou(a, b, *, backend="auto") -> Tensor:
    """[P, Q] IoU of the half-open spans a [P, 2] and b [Q, 2] (float or int, promoted as torch does;
    float32 output for ints). Touching, inverted (end < begin) and empty spans give 0; NaN
    propagates. Not differentiable: the output never requires grad."""
    _check_spans("a", a)
    _check_spans("b", b, a.device)
    chosen = _backends.resolve(backend, a.device)
    if chosen == "reference":
        return reference.temporal_iou(a.detach(), b.detach())
    dtype = torch.promote_types(a.dtype, b.dtype)
    return op_for("temporal_iou", chosen)(a.detach().to(dtype), b.detach().to(dtype))


def _nms_spans(spans: Tensor) -> Tensor:
    """The dtype span_nms computes IoU in: fp32 for fp32/half spans, fp64 for fp64/int spans."""
    if spans.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return spans.detach().float()
    return spans.detach().double()


def span_nms(spans, scores, iou_threshold, *, groups=None, max_keep=-1, backend="auto") -> Tensor:
    """Greedy 1-D NMS run independently within each group: int64 indices of the kept spans, by
    descending score (ties: lower index first; NaN scores rank last). A span is dropped when a kept
    span of its group has IoU > iou_threshold with it, or when max_keep > 0 spans of its group are
    already kept."""
    _check_spans("spans", spans)
    if spans.device.type == "meta":
        raise ValueError("spans is on the meta device: span_nms keeps a data-dependent number of spans, which a "
                         "meta tensor cannot say")
    n = spans.shape[0]
    check_tensor("scores", scores, dtypes=_FLOATS, dim=1, device=spans.device)
    if scores.shape[0] != n:
        raise ValueError(f"scores must be [M = {n}] (one per span), got shape {tuple(scores.shape)}")
    if groups is not None:
        check_tensor("groups", groups, dtypes=(torch.int64,), dim=1, device=spans.device)
        if groups.shape[0] != n:
            raise ValueError(f"groups must be [M = {n}] (one per span), got shape {tuple(groups.shape)}")
    iou_threshold = check_float("iou_threshold", iou_threshold)
    max_keep = check_int("max_keep", max_keep)
    chosen = _backends.resolve(backend, spans.device)
    if chosen == "reference":
        return reference.span_nms(spans, scores, iou_threshold, groups=groups, max_keep=max_keep)
    return op_for("span_nms", chosen)(_nms_spans(spans), scores.detach(), iou_threshold,
                                      None if groups is None else groups.detach(), max_keep)
