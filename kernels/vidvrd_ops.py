"""Triton kernels of the vidvrd ops pairwise_mlp_scores, temporal_iou and span_nms (spec vidvrd.md
3.1-3.3 and 6).

Plain launch helpers, no op registration: ``pyfastlab.ops`` wraps them as
``pyfastlab::<op>_triton``. Semantics follow the CPU kernels (csrc/cpu/vidvrd_ops.cpp).

- pairwise forward: BN x BM output tiles looping over h in BH chunks ([BN, BM, BH] in registers,
  never [B, N, M, H] in memory). Backward: one atomic-free kernel, used for the rows of a (da and
  R = sum_j g relu(x)) and for the columns of b (db); dw = R summed over rows.
- temporal_iou: 2-D tiles, one output write.
- span_nms: one program per group walks its members in score order and tests each against the
  group's kept list BLOCK spans at a time (a sequential walk: each decision depends on the last).
Math in float32 (float64 for float64 inputs); half inputs are upcast before launch.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ._common import INTERPRET as _INTERPRET

__all__ = ["pairwise_forward", "pairwise_backward", "temporal_iou", "span_nms_keep"]

# BN * BM * BH <= 16 K (spec 6); the interpreter runs each block as numpy calls, so bigger blocks mean fewer.
_BN, _BM, _BH = 16, 16, 32
_BJ = 64 if _INTERPRET else 32
_TILE = 64


def _opmath(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()


@triton.jit
def _relu(x):
    return tl.where((x > 0) | (x != x), x, 0.0)


@triton.jit
def _pairwise_fwd(a_ptr, b_ptr, w_ptr, bias_ptr, s_ptr, N, M, H,
                  BN: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr):
    v = tl.program_id(2).to(tl.int64)
    i = tl.program_id(0) * BN + tl.arange(0, BN)
    j = tl.program_id(1) * BM + tl.arange(0, BM)
    a_row = a_ptr + (v * N + i.to(tl.int64)) * H
    b_row = b_ptr + (v * M + j.to(tl.int64)) * H
    acc = tl.zeros((BN, BM), dtype=tl.load(bias_ptr).dtype)
    for h0 in range(0, H, BH):
        h = h0 + tl.arange(0, BH)
        hm = h < H
        a = tl.load(a_row[:, None] + h[None, :], mask=(i[:, None] < N) & hm[None, :], other=0.0)
        b = tl.load(b_row[:, None] + h[None, :], mask=(j[:, None] < M) & hm[None, :], other=0.0)
        w = tl.load(w_ptr + h, mask=hm, other=0.0)
        x = a[:, None, :] + b[None, :, :]
        acc += tl.sum(w[None, None, :] * _relu(x), axis=2)
    out = acc + tl.load(bias_ptr)
    tl.store(s_ptr + (v * N + i[:, None].to(tl.int64)) * M + j[None, :], out, mask=(i[:, None] < N) & (j[None, :] < M))


@triton.jit
def _pairwise_bwd(x_ptr, y_ptr, g_ptr, w_ptr, dx_ptr, r_ptr, rows_per_batch, K, H,
                  g_row_stride, g_k_stride, g_batch_stride,
                  WANT_DX: tl.constexpr, WANT_R: tl.constexpr, BJ: tl.constexpr, BH: tl.constexpr):
    """Row `row` of x [R, H] against its K partners y[v, k, :]: acc_m = sum_k g 1[x + y > 0],
    acc_r = sum_k g relu(x + y), in k order."""
    row = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BH + tl.arange(0, BH)
    hm = h < H
    v = row // rows_per_batch
    r = row % rows_per_batch
    x = tl.load(x_ptr + row * H + h, mask=hm, other=0.0)
    acc_m = tl.zeros((BH,), dtype=x.dtype)
    acc_r = tl.zeros((BH,), dtype=x.dtype)
    for k0 in range(0, K, BJ):
        k = k0 + tl.arange(0, BJ)
        km = k < K
        y = tl.load(y_ptr + (v * K + k[:, None].to(tl.int64)) * H + h[None, :], mask=km[:, None] & hm[None, :],
                    other=0.0)
        g = tl.load(g_ptr + v * g_batch_stride + r * g_row_stride + k.to(tl.int64) * g_k_stride, mask=km, other=0.0)
        xs = x[None, :] + y
        on = xs > 0
        acc_m += tl.sum(tl.where(on, g[:, None], 0.0), axis=0)
        if WANT_R:
            acc_r += tl.sum(tl.where(on, g[:, None] * xs, tl.where(xs != xs, xs, 0.0)), axis=0)
    if WANT_DX:
        w = tl.load(w_ptr + h, mask=hm, other=0.0)
        tl.store(dx_ptr + row * H + h, w * acc_m, mask=hm)
    if WANT_R:
        tl.store(r_ptr + row * H + h, acc_r, mask=hm)


def pairwise_forward(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, bias: float) -> torch.Tensor:
    B, N, H = a.shape
    M = b.shape[1]
    a32, b32, w32 = _opmath(a), _opmath(b), _opmath(w)
    s = torch.empty((B, N, M), dtype=a32.dtype, device=a.device)
    if s.numel() == 0:
        return s.to(a.dtype)
    # a tensor, not a Python float: a float argument would reach the kernel as float32
    bias_t = torch.full((1,), bias, dtype=a32.dtype, device=a.device)
    grid = (triton.cdiv(N, _BN), triton.cdiv(M, _BM), B)
    _pairwise_fwd[grid](a32, b32, w32, bias_t, s, N, M, H, BN=_BN, BM=_BM, BH=_BH)
    return s.to(a.dtype)


def _backward_pass(x, y, g, w, rows_per_batch, K, strides, dx, r):
    n_rows, H = x.shape[0] * x.shape[1], x.shape[2]
    if n_rows == 0 or H == 0 or K == 0:
        return
    grid = (n_rows, triton.cdiv(H, _BH))
    _pairwise_bwd[grid](x, y, g, w, dx if dx is not None else x, r if r is not None else x, rows_per_batch, K, H,
                        *strides, WANT_DX=dx is not None, WANT_R=r is not None, BJ=_BJ, BH=_BH)


def pairwise_backward(grad, a, b, w, need_a: bool, need_b: bool, need_w: bool):
    B, N, H = a.shape
    M = b.shape[1]
    a32, b32, w32, g32 = _opmath(a), _opmath(b), _opmath(w), _opmath(grad)
    zeros = lambda shape, need: torch.zeros(shape if need else (0,), dtype=a32.dtype, device=a.device)
    ga, gb = zeros((B, N, H), need_a), zeros((B, M, H), need_b)
    r = zeros((B, N, H), need_w)
    if need_a or need_w:
        _backward_pass(a32, b32, g32, w32, N, M, (M, 1, N * M), ga if need_a else None, r if need_w else None)
    if need_b:
        _backward_pass(b32, a32, g32, w32, M, N, (1, M, N * M), gb, None)
    gw = r.reshape(B * N, H).sum(0) if need_w else zeros((0,), False)
    return ga.to(a.dtype), gb.to(b.dtype), gw.to(w.dtype)


@triton.jit
def _nan_max(x, y):
    return tl.where(x != x, x, tl.where(y != y, y, tl.where(x > y, x, y)))


@triton.jit
def _nan_min(x, y):
    return tl.where(x != x, x, tl.where(y != y, y, tl.where(x < y, x, y)))


@triton.jit
def _span_iou(s0, e0, s1, e1):
    """Spec 3.2 in exactly its order; integer spans give exact int64 terms and one fp64 division."""
    la = _nan_max(e0 - s0, 0)
    lb = _nan_max(e1 - s1, 0)
    inter = _nan_max(_nan_min(e0, e1) - _nan_max(s0, s1), 0)
    union = la + lb - inter
    if inter.dtype == tl.int64:
        inter = inter.to(tl.float64)
        union = union.to(tl.float64)
    return tl.where(union == 0, 0.0, inter / tl.where(union == 0, 1, union))


@triton.jit
def _tiou(a_ptr, b_ptr, out_ptr, P, Q, BP: tl.constexpr, BQ: tl.constexpr):
    p = tl.program_id(0) * BP + tl.arange(0, BP)
    q = tl.program_id(1) * BQ + tl.arange(0, BQ)
    pm, qm = p < P, q < Q
    s0 = tl.load(a_ptr + 2 * p, mask=pm, other=0)
    e0 = tl.load(a_ptr + 2 * p + 1, mask=pm, other=0)
    s1 = tl.load(b_ptr + 2 * q, mask=qm, other=0)
    e1 = tl.load(b_ptr + 2 * q + 1, mask=qm, other=0)
    iou = _span_iou(s0[:, None], e0[:, None], s1[None, :], e1[None, :])
    out = out_ptr + p[:, None].to(tl.int64) * Q + q[None, :]
    tl.store(out, iou.to(out_ptr.dtype.element_ty), mask=pm[:, None] & qm[None, :])


def temporal_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [P, 2], b [Q, 2] of one dtype."""
    integral = not a.dtype.is_floating_point
    out = torch.empty((a.shape[0], b.shape[0]), dtype=torch.float32 if integral else a.dtype, device=a.device)
    if out.numel() == 0:
        return out
    a, b = (a.long().contiguous(), b.long().contiguous()) if integral else (_opmath(a), _opmath(b))
    grid = (triton.cdiv(out.shape[0], _TILE), triton.cdiv(out.shape[1], _TILE))
    _tiou[grid](a, b, out, out.shape[0], out.shape[1], BP=_TILE, BQ=_TILE)
    return out


@triton.jit
def _nms_group(sb_ptr, se_ptr, is_start_ptr, end_ptr, thr_ptr, kb_ptr, ke_ptr, keep_ptr, max_keep,
               BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64)
    if tl.load(is_start_ptr + start):
        thr = tl.load(thr_ptr)
        end = tl.load(end_ptr + start)
        count = start * 0
        for c in range(start, end):
            cb = tl.load(sb_ptr + c)
            ce = tl.load(se_ptr + c)
            n_over = count * 0
            for t0 in range(0, count, BLOCK):
                t = t0 + tl.arange(0, BLOCK)
                tm = t < count
                kb = tl.load(kb_ptr + start + t, mask=tm, other=0)
                ke = tl.load(ke_ptr + start + t, mask=tm, other=0)
                iou = _span_iou(kb, ke, cb, ce)
                n_over += tl.sum((tm & (iou > thr)).to(tl.int64), axis=0)
            keep = (n_over == 0) & ((max_keep <= 0) | (count < max_keep))
            tl.store(kb_ptr + start + count, cb, mask=keep)
            tl.store(ke_ptr + start + count, ce, mask=keep)
            tl.store(keep_ptr + c, keep.to(tl.int8), mask=keep)
            count += keep.to(tl.int64)


def span_nms_keep(sb, se, is_start, end, iou_threshold: float, max_keep: int) -> torch.Tensor:
    """Keep flags (int8) of spans in group-then-score order: sb, se [M] begin and end, is_start [M]
    bool marks each group's first position, end [M] the position after its group."""
    M = sb.shape[0]
    keep = torch.zeros(M, dtype=torch.int8, device=sb.device)
    kb, ke = torch.empty_like(sb), torch.empty_like(se)
    thr = torch.full((1,), iou_threshold, dtype=sb.dtype, device=sb.device)
    _nms_group[(M,)](sb, se, is_start, end, thr, kb, ke, keep, max_keep, BLOCK=64)
    return keep
