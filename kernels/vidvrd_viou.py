"""Triton kernel of trajectory_viou (spec vidvrd.md 3.4 and 6).

A plain launch helper, no op registration: ``pyfastlab.ops`` wraps it as
``pyfastlab::trajectory_viou_triton``. Semantics follow the CPU kernel (csrc/cpu/vidvrd_viou.cpp):
volumes once per trajectory, then one program per BP x BQ tile of pairs that walks the frames from
the tile's first overlapping frame to its last, with per-pair masks. Frames outside a pair's
overlap are selected away (never multiplied by a mask), so NaN boxes there never reach a sum.
All math in float64, summed in frame order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pyfastlab.reference.vidvrd_viou import clamp_spans

__all__ = ["trajectory_viou"]

_BLOCK = 64
_BP, _BQ = 32, 32
_NAN = tl.PropagateNan.ALL


@triton.jit
def _volumes(box_ptr, begin_ptr, end_ptr, vol_ptr, n, T, delta, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < n
    b0 = tl.load(begin_ptr + idx, mask=valid, other=T)
    b1 = tl.load(end_ptr + idx, mask=valid, other=0)
    acc = tl.zeros((BLOCK,), tl.float64)
    for t in range(tl.min(b0, 0), tl.max(b1, 0)):
        inside = valid & (t >= b0) & (t < b1)
        base = box_ptr + (idx * T + t) * 4
        x1 = tl.load(base, mask=inside, other=0).to(tl.float64)
        y1 = tl.load(base + 1, mask=inside, other=0).to(tl.float64)
        x2 = tl.load(base + 2, mask=inside, other=0).to(tl.float64)
        y2 = tl.load(base + 3, mask=inside, other=0).to(tl.float64)
        acc += tl.where(inside, (x2 - x1 + delta) * (y2 - y1 + delta), 0.0)
    tl.store(vol_ptr + idx, acc, mask=valid)


@triton.jit
def _pairs(a_ptr, a0_ptr, a1_ptr, va_ptr, b_ptr, b0_ptr, b1_ptr, vb_ptr, out_ptr, P, Q, T, delta,
           BP: tl.constexpr, BQ: tl.constexpr):
    p = tl.program_id(0).to(tl.int64) * BP + tl.arange(0, BP)
    q = tl.program_id(1).to(tl.int64) * BQ + tl.arange(0, BQ)
    pm, qm = p < P, q < Q
    a0 = tl.load(a0_ptr + p, mask=pm, other=T)
    a1 = tl.load(a1_ptr + p, mask=pm, other=0)
    b0 = tl.load(b0_ptr + q, mask=qm, other=T)
    b1 = tl.load(b1_ptr + q, mask=qm, other=0)
    lo = tl.maximum(a0[:, None], b0[None, :])
    hi = tl.minimum(a1[:, None], b1[None, :])
    overlap = lo < hi
    t_lo = tl.min(tl.min(tl.where(overlap, lo, T), 1), 0)
    t_hi = tl.max(tl.max(tl.where(overlap, hi, 0), 1), 0)
    acc = tl.zeros((BP, BQ), tl.float64)
    for t in range(t_lo, t_hi):
        a_in = pm & (t >= a0) & (t < a1)
        b_in = qm & (t >= b0) & (t < b1)
        ab = a_ptr + (p * T + t) * 4
        bb = b_ptr + (q * T + t) * 4
        ax1 = tl.load(ab, mask=a_in, other=0).to(tl.float64)[:, None]
        ay1 = tl.load(ab + 1, mask=a_in, other=0).to(tl.float64)[:, None]
        ax2 = tl.load(ab + 2, mask=a_in, other=0).to(tl.float64)[:, None]
        ay2 = tl.load(ab + 3, mask=a_in, other=0).to(tl.float64)[:, None]
        bx1 = tl.load(bb, mask=b_in, other=0).to(tl.float64)[None, :]
        by1 = tl.load(bb + 1, mask=b_in, other=0).to(tl.float64)[None, :]
        bx2 = tl.load(bb + 2, mask=b_in, other=0).to(tl.float64)[None, :]
        by2 = tl.load(bb + 3, mask=b_in, other=0).to(tl.float64)[None, :]
        w = tl.minimum(ax2, bx2, propagate_nan=_NAN) - tl.maximum(ax1, bx1, propagate_nan=_NAN) + delta
        h = tl.minimum(ay2, by2, propagate_nan=_NAN) - tl.maximum(ay1, by1, propagate_nan=_NAN) + delta
        w = tl.where(w < 0, 0.0, w)
        h = tl.where(h < 0, 0.0, h)
        acc += tl.where((t >= lo) & (t < hi), w * h, 0.0)
    va = tl.load(va_ptr + p, mask=pm, other=0)
    vb = tl.load(vb_ptr + q, mask=qm, other=0)
    uni = (va[:, None] + vb[None, :]) - acc
    ok = uni > 0
    res = tl.where(ok, acc / tl.where(ok, uni, 1.0), tl.where(uni != uni, uni, 0.0))
    tl.store(out_ptr + p[:, None] * Q + q[None, :], res.to(out_ptr.dtype.element_ty), mask=pm[:, None] & qm[None, :])


def _prepare(boxes, span, T, delta):
    begin, end = clamp_spans(span, T)
    begin, end = begin.contiguous(), end.contiguous()
    vol = torch.empty(boxes.shape[0], dtype=torch.float64, device=boxes.device)
    if boxes.shape[0] > 0:
        _volumes[(triton.cdiv(boxes.shape[0], _BLOCK),)](boxes, begin, end, vol, boxes.shape[0], T, delta,
                                                          BLOCK=_BLOCK)
    return begin, end, vol


def trajectory_viou(boxes_a, span_a, boxes_b, span_b, pixel_inclusive: bool):
    """[P, Q] vIoU in the boxes' dtype (float32 or float64, one dtype for both)."""
    P, T, Q = boxes_a.shape[0], boxes_a.shape[1], boxes_b.shape[0]
    out = torch.empty(P, Q, dtype=boxes_a.dtype, device=boxes_a.device)
    if P == 0 or Q == 0:
        return out
    delta = 1.0 if pixel_inclusive else 0.0
    a, b = boxes_a.contiguous(), boxes_b.contiguous()
    a0, a1, va = _prepare(a, span_a, T, delta)
    b0, b1, vb = _prepare(b, span_b, T, delta)
    grid = (triton.cdiv(P, _BP), triton.cdiv(Q, _BQ))
    _pairs[grid](a, a0, a1, va, b, b0, b1, vb, out, P, Q, T, delta, BP=_BP, BQ=_BQ)
    return out
