"""Registrations behind pairwise_mlp_scores, temporal_iou and span_nms: the fake kernels (for
torch.compile) of the compiled ops.

The compiled pairwise_mlp_scores autograd lives in C++ (csrc/autograd/vidvrd_ops.cpp). temporal_iou
and span_nms are not differentiable: the wrappers pass detached inputs.
"""
from __future__ import annotations

import torch

from .._loader import has_compiled_ops


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


if has_compiled_ops():  # fake kernels for ops that never loaded would crash the import
    torch.library.register_fake("pyfastlab::pairwise_mlp_scores_forward")(_pairwise_forward_fake)
    torch.library.register_fake("pyfastlab::pairwise_mlp_scores_backward")(_pairwise_backward_fake)
    torch.library.register_fake("pyfastlab::temporal_iou")(_temporal_iou_fake)
    torch.library.register_fake("pyfastlab::span_nms")(_span_nms_fake)


def op_for(name: str, backend: str):
    """The torch.ops entry of op `name` for a compiled ("cpu"/"cuda") or "triton" backend."""
    return getattr(torch.ops.pyfastlab, f"{name}_triton" if backend == "triton" else name)
