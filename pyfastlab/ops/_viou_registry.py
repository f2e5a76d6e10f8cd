"""Registrations behind trajectory_viou: the Triton custom op, and the fake kernels (for
torch.compile) of the compiled and the Triton ops. Not differentiable in v1: no autograd."""
from __future__ import annotations

import torch
from torch import Tensor

from .._loader import has_compiled_ops


@torch.library.custom_op("pyfastlab::trajectory_viou_triton", mutates_args=())
def trajectory_viou_triton(boxes_a: Tensor, span_a: Tensor, boxes_b: Tensor, span_b: Tensor,
                           pixel_inclusive: bool) -> Tensor:
    from pyfastlab.kernels import vidvrd_viou  # importing triton is slow: on first call only

    return vidvrd_viou.trajectory_viou(boxes_a, span_a, boxes_b, span_b, pixel_inclusive)


def _fake(boxes_a, span_a, boxes_b, span_b, pixel_inclusive):
    return boxes_a.new_empty((boxes_a.shape[0], boxes_b.shape[0]))


torch.library.register_fake("pyfastlab::trajectory_viou_triton")(_fake)
if has_compiled_ops():  # fake kernels for ops that never loaded would crash the import
    torch.library.register_fake("pyfastlab::trajectory_viou")(_fake)


def op_for(backend: str):
    """The torch.ops entry of trajectory_viou for a compiled ("cpu"/"cuda") or "triton" backend."""
    return torch.ops.pyfastlab.trajectory_viou_triton if backend == "triton" else torch.ops.pyfastlab.trajectory_viou
