"""Public vidvrd op trajectory_viou: the voluminal IoU of every pair of box trajectories.

The math is vidvrd.md section 3.4. The call validates its arguments, brings the boxes to the
kernel dtype (float64 for float64 or integer boxes, so integer pixels stay exact; float32
otherwise), picks a backend and dispatches to torch.ops.pyfastlab. Not differentiable in v1.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..reference import vidvrd_viou as reference
from . import _backends
from ._checks import check_bool, check_tensor
from ._viou_registry import op_for

_BOX_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64,
               torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_side(name_boxes, boxes, name_span, span, letter, device):
    check_tensor(name_boxes, boxes, dtypes=_BOX_DTYPES, dim=3, device=device)
    if boxes.shape[2] != 4:
        raise ValueError(f"{name_boxes} must be [{letter}, T, 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    check_tensor(name_span, span, dtypes=(torch.int64,), dim=2, device=device)
    if tuple(span.shape) != (boxes.shape[0], 2):
        raise ValueError(f"{name_span} must be [{letter}={boxes.shape[0]}, 2] ([begin, end) per trajectory of "
                         f"{name_boxes}), got shape {tuple(span.shape)}")


def trajectory_viou(boxes_a, span_a, boxes_b, span_b, *, pixel_inclusive=True, backend="auto") -> Tensor:
    """[P, Q] voluminal IoU of trajectories boxes_a [P, T, 4] on spans span_a int64 [P, 2] =
    [begin, end) and boxes_b [Q, T, 4] on span_b [Q, 2], on one shared timeline of T frames.

    vIoU = I / ((V + W) - I), I the sum of per-frame intersections over the frames both spans cover,
    V and W the trajectories' volumes over their own spans (0 when the union is empty; NaN stays NaN).
    Spans are clamped to [0, T]; boxes outside a span are never read. pixel_inclusive=True uses the
    VidVRD evaluator's areas (x2 - x1 + 1) * (y2 - y1 + 1). Output float64 if either box tensor is
    float64, else float32; the math is float64 on every backend.
    """
    check_tensor("boxes_a", boxes_a, dtypes=_BOX_DTYPES)
    device = boxes_a.device
    _check_side("boxes_a", boxes_a, "span_a", span_a, "P", device)
    _check_side("boxes_b", boxes_b, "span_b", span_b, "Q", device)
    if boxes_b.shape[1] != boxes_a.shape[1]:
        raise ValueError(f"boxes_b has T = {boxes_b.shape[1]} frames but boxes_a has T = {boxes_a.shape[1]} "
                         "(both must be on one shared timeline)")
    check_bool("pixel_inclusive", pixel_inclusive)
    chosen = _backends.resolve(backend, device)
    if chosen == "reference":
        return reference.trajectory_viou(boxes_a, span_a, boxes_b, span_b, pixel_inclusive=pixel_inclusive)
    out_double = torch.float64 in (boxes_a.dtype, boxes_b.dtype)
    # Integer pixels above 2^24 are not exact in float32: they go in as float64.
    exact = out_double or not (boxes_a.is_floating_point() and boxes_b.is_floating_point())
    kernel_dtype = torch.float64 if exact else torch.float32
    out = op_for(chosen)(boxes_a.to(kernel_dtype), span_a, boxes_b.to(kernel_dtype), span_b, pixel_inclusive)
    return out.to(torch.float64 if out_double else torch.float32)
