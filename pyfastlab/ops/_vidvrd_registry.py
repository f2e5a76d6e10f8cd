"""Registrations behind pairwise_mlp_scores, temporal_iou and span_nms: the Triton custom ops and
the pairwise autograd, and the fake kernels (for torch.compile) of the compiled and the Triton ops.

The compiled pairwise_mlp_scores autograd lives in C++ (csrc/autograd/vidvrd_ops.cpp); the Triton
op's below follows the same rule: save the inputs only, recompute the relu mask in the backward op,
return only the gradients asked for. temporal_iou and span_nms are not differentiable: the
wrappers pass detached inputs.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._loader import has_compiled_ops


@torch.library.custom_op("pyfastlab::pairwise_mlp_scores_forward_triton", mutates_args=())
def pairwise_mlp_scores_forward_triton(a: Tensor, b: Tensor, w: Tensor, bias: float) -> Tensor:
    from pyfastlab.kernels import vidvrd_ops  # importing triton is slow: on first call only

    return vidvrd_ops.pairwise_forward(a, b, w, bias)


@torch.library.custom_op("pyfastlab::pairwise_mlp_scores_backward_triton", mutates_args=())
def pairwise_mlp_scores_backward_triton(grad: Tensor, a: Tensor, b: Tensor, w: Tensor, need_a: bool, need_b: bool,
                                        need_w: bool) -> tuple[Tensor, Tensor, Tensor]:
    from pyfastlab.kernels import vidvrd_ops

    return vidvrd_ops.pairwise_backward(grad, a, b, w, need_a, need_b, need_w)


@torch.library.custom_op("pyfastlab::temporal_iou_triton", mutates_args=())
def temporal_iou_triton(a: Tensor, b: Tensor) -> Tensor:
    from pyfastlab.kernels import vidvrd_ops

    return vidvrd_ops.temporal_iou(a, b)


def _group_order(scores: Tensor, groups: Optional[Tensor]):
    """pi (stable, score descending, NaN as -inf), the group-then-score order of the spans, each
    position's group start flag and the position after its group: all on device, no sync."""
    key = scores.double().masked_fill(torch.isnan(scores), -math.inf)
    pi = torch.sort(key, descending=True, stable=True).indices
    n = pi.shape[0]
    positions = torch.arange(n, device=pi.device)
    if groups is None:
        by_group, is_start = pi, positions == 0
    else:
        g_sorted, order = torch.sort(groups[pi], stable=True)
        by_group = pi[order]
        is_start = torch.cat([torch.ones(1, dtype=torch.bool, device=pi.device), g_sorted[1:] != g_sorted[:-1]])
    starts = torch.where(is_start, positions, n)
    after = torch.cat([starts.flip(0).cummin(0).values.flip(0)[1:], positions.new_full((1,), n)])
    return pi, by_group, is_start, after


@torch.library.custom_op("pyfastlab::span_nms_triton", mutates_args=())
def span_nms_triton(spans: Tensor, scores: Tensor, iou_threshold: float, groups: Optional[Tensor],
                    max_keep: int) -> Tensor:
    from pyfastlab.kernels import vidvrd_ops

    if spans.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=spans.device)
    pi, by_group, is_start, after = _group_order(scores, groups)
    ordered = spans[by_group]
    keep = vidvrd_ops.span_nms_keep(ordered[:, 0].contiguous(), ordered[:, 1].contiguous(), is_start, after,
                                    iou_threshold, max_keep)
    kept = torch.zeros_like(keep, dtype=torch.bool).index_put_((by_group,), keep.bool())
    return pi[kept[pi]]  # one count read: the output size is data-dependent


def _pairwise_forward_fake(a, b, w, bias):
    return a.new_empty((a.shape[0], a.shape[1], b.shape[1]))


def _pairwise_backward_fake(grad, a, b, w, need_a, need_b, need_w):
    return (a.new_empty(a.shape if need_a else (0,)), b.new_empty(b.shape if need_b else (0,)),
            w.new_empty(w.shape if need_w else (0,)))


def _temporal_iou_fake(a, b):
    dtype = a.dtype if a.dtype.is_floating_point else torch.float32
    return a.new_empty((a.shape[0], b.shape[0]), dtype=dtype)


def _span_nms_fake(spans, scores, iou_threshold, groups, max_keep):
    # The number of kept spans is data-dependent: an unbacked size.
    n_kept = torch.library.get_ctx().new_dynamic_size()
    return spans.new_empty((n_kept,), dtype=torch.int64)


def _setup_context(ctx, inputs, output):
    a, b, w, _ = inputs
    ctx.save_for_backward(a, b, w)


def _backward(ctx, grad):
    need_a, need_b, need_w = ctx.needs_input_grad[:3]
    if grad is None or not (need_a or need_b or need_w):
        return None, None, None, None
    a, b, w = ctx.saved_tensors
    ga, gb, gw = torch.ops.pyfastlab.pairwise_mlp_scores_backward_triton(grad, a, b, w, need_a, need_b, need_w)
    return (ga if need_a else None), (gb if need_b else None), (gw if need_w else None), None


torch.library.register_fake("pyfastlab::pairwise_mlp_scores_forward_triton")(_pairwise_forward_fake)
torch.library.register_fake("pyfastlab::pairwise_mlp_scores_backward_triton")(_pairwise_backward_fake)
torch.library.register_fake("pyfastlab::temporal_iou_triton")(_temporal_iou_fake)
torch.library.register_fake("pyfastlab::span_nms_triton")(_span_nms_fake)
torch.library.register_autograd("pyfastlab::pairwise_mlp_scores_forward_triton", _backward,
                                setup_context=_setup_context)
if has_compiled_ops():  # fake kernels for ops that never loaded would crash the import
    torch.library.register_fake("pyfastlab::pairwise_mlp_scores_forward")(_pairwise_forward_fake)
    torch.library.register_fake("pyfastlab::pairwise_mlp_scores_backward")(_pairwise_backward_fake)
    torch.library.register_fake("pyfastlab::temporal_iou")(_temporal_iou_fake)
    torch.library.register_fake("pyfastlab::span_nms")(_span_nms_fake)


def op_for(name: str, backend: str):
    """The torch.ops entry of op `name` for a compiled ("cpu"/"cuda") or "triton" backend."""
    return getattr(torch.ops.pyfastlab, f"{name}_triton" if backend == "triton" else name)
