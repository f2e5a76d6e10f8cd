"""Triton kernel of kd_loss (spec distill.md 3.7 and 6.3).

A plain launch helper, no op registration: ``pyfastlab.ops`` wraps it as
``pyfastlab::kd_loss_forward_triton``. Semantics and outputs follow the CPU kernel
(csrc/cpu/kd_kernels_impl.h): per-row loss, validity, and the gradient of each row's loss for a
row upstream of 1, which the backward scales.

One program per row, in column blocks: pass 1 runs an online (max, sum) for the three softmax
streams s/T, t/T and s (and picks s_y); pass 2 recomputes the exponentials, accumulates the KL
numerator sum e^a (a - b) and writes the gradient. For C up to one block both passes read the
same block (the re-read is served from L1/L2). Math in float32 (float64 for float64 inputs).
Float scalars reach the kernel as the bit patterns of their opmath value (a Python float would
be passed as float32, inexact for float64 inputs).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl

from pyfastlab.ops._reduction import MEAN as _BATCHMEAN, NONE as _NONE
from ._common import INTERPRET as _INTERPRET, bits as _bits, decode as _decode, opmath as _opmath

__all__ = ["kd_loss_forward", "LOOP_BLOCK"]

# Column block: the interpreter runs each block as numpy calls, so bigger blocks mean fewer.
LOOP_BLOCK = 16384 if _INTERPRET else 4096


@triton.jit
def _online(M, S, x):
    """One block of an online (max, sum of exp(x - max)); no rescale while the max is -inf.
    tl.max drops NaN on the GPU, so NaN (and +inf, via inf - inf) reaches S instead."""
    Mn = tl.maximum(M, tl.max(x, 0))
    Ms = tl.where(Mn == float("-inf"), 0.0, Mn)
    S = S * tl.exp(M - Ms) + tl.sum(tl.exp(x - Ms), 0)
    return Mn, S


@triton.jit(do_not_specialize=["ignore_index", "inv_t_bits", "soft_t2_bits", "soft_t_bits", "hard_bits"])
def _kd_fwd(s_ptr, t_ptr, y_ptr, loss_ptr, valid_ptr, g_ptr, C, ignore_index,
            inv_t_bits, soft_t2_bits, soft_t_bits, hard_bits,
            HAS_TARGET: tl.constexpr, USE_SOFT: tl.constexpr, USE_HARD: tl.constexpr,
            WANT_GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * C
    inv_t = _decode(inv_t_bits, ACC)
    if HAS_TARGET:
        y = tl.load(y_ptr + row)
        valid = y != ignore_index
        bad_index = valid & ((y < 0) | (y >= C))  # never read: the row gives NaN
    else:
        y = -1
        valid = row >= 0
        bad_index = row < 0

    # Pass 1: (max, sum) of s/T (q), t/T (p) and s (r); s_y.
    Mq = tl.full((), float("-inf"), ACC)
    Mt = tl.full((), float("-inf"), ACC)
    Mr = tl.full((), float("-inf"), ACC)
    Sq = tl.zeros((), ACC)
    St = tl.zeros((), ACC)
    Sr = tl.zeros((), ACC)
    sy = tl.zeros((), ACC)
    if valid & (bad_index == 0):  # ignored rows are never read
        for start in range(0, C, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            cmask = cols < C
            s = tl.load(s_ptr + base + cols, mask=cmask, other=float("-inf")).to(ACC)
            if USE_SOFT:
                t = tl.load(t_ptr + base + cols, mask=cmask, other=float("-inf")).to(ACC)
                Mq, Sq = _online(Mq, Sq, s * inv_t)
                Mt, St = _online(Mt, St, t * inv_t)
            Mr, Sr = _online(Mr, Sr, s)
            if USE_HARD:
                sy += tl.sum(tl.where(cols == y, s, 0.0), 0)

    # All -inf (student, or teacher under the soft term): zero. NaN / +inf: NaN. Dead wins.
    dead = (Mr == float("-inf")) & (Sr == Sr)
    bad = (Sr != Sr) | (Mr != Mr)
    if USE_SOFT:
        dead = dead | ((Mt == float("-inf")) & (St == St))
        bad = bad | (St != St) | (Mt != Mt) | (Sq != Sq)
    bad = bad | bad_index
    zero = ((valid == 0) | dead) & (bad_index == 0)
    live = (zero | bad) == 0
    Mq = tl.where(zero | bad, 0.0, Mq)
    Mt = tl.where(zero | bad, 0.0, Mt)
    Mr = tl.where(zero | bad, 0.0, Mr)

    # Pass 2: KL numerator and the gradient row.
    soft_t = _decode(soft_t_bits, ACC)
    hard = _decode(hard_bits, ACC)
    K = tl.zeros((), ACC)
    for start in range(0, C, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        cmask = cols < C
        g = tl.zeros((BLOCK,), ACC)
        if live:
            s = tl.load(s_ptr + base + cols, mask=cmask, other=0.0).to(ACC)
            if USE_SOFT:
                t = tl.load(t_ptr + base + cols, mask=cmask, other=0.0).to(ACC)
                a = t * inv_t - Mt
                b = s * inv_t - Mq
                et = tl.where(cmask, tl.exp(a), 0.0)
                eq = tl.where(cmask, tl.exp(b), 0.0)
                # e^a = 0 (teacher -inf) contributes 0, not 0 * inf
                K += tl.sum(tl.where(et > 0.0, et * (a - b), 0.0), 0)
                g += soft_t * (eq / Sq - et / St)
            if USE_HARD:
                er = tl.exp(s - Mr)
                g += hard * (er / Sr - tl.where(cols == y, 1.0, 0.0))
        if WANT_GRAD:
            g = tl.where(bad & (zero == 0), float("nan"), g)
            tl.store(g_ptr + base + cols, g, mask=cmask)

    loss = tl.zeros((), ACC)
    if USE_SOFT:
        loss += _decode(soft_t2_bits, ACC) * (K / St - tl.log(St) + tl.log(Sq))
    if USE_HARD:
        loss += hard * ((Mr - sy) + tl.log(Sr))  # Mr + log Sr - sy loses log Sr once |Mr| >> 1
    loss = tl.where(zero, 0.0, tl.where(bad, float("nan"), loss))
    tl.store(loss_ptr + row, loss)
    tl.store(valid_ptr + row, valid.to(tl.uint8))


def kd_loss_forward(student: torch.Tensor, teacher: torch.Tensor, target: Optional[torch.Tensor],
                    temperature: float, soft_weight: float, hard_weight: float, ignore_index: int,
                    reduction: int, compute_grad: bool):
    """-> (loss, grad, valid, n_valid); see the schema in csrc/registration.cpp. Nothing waits
    on the device: N_valid and the reduction stay tensors."""
    N, C = student.shape
    dtype, dev = student.dtype, student.device
    op_dtype = _opmath(dtype)
    row_loss = torch.empty(N, dtype=op_dtype, device=dev)
    valid = torch.empty(N, dtype=torch.bool, device=dev)
    grad = torch.empty((N, C) if compute_grad else (0,), dtype=dtype, device=dev)
    s = student.contiguous()
    t = teacher.contiguous() if soft_weight != 0 else s
    y = target.contiguous() if target is not None else row_loss
    if N > 0:
        acc = tl.float64 if op_dtype == torch.float64 else tl.float32
        scalars = (_bits(1.0 / temperature, dtype), _bits(soft_weight * temperature**2, dtype),
                   _bits(soft_weight * temperature, dtype), _bits(hard_weight, dtype))
        block = min(triton.next_power_of_2(C), LOOP_BLOCK)
        with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
            _kd_fwd[(N,)](s, t, y, row_loss, valid.view(torch.uint8), grad if compute_grad else row_loss, C,
                          int(ignore_index), *scalars, HAS_TARGET=target is not None, USE_SOFT=soft_weight != 0,
                          USE_HARD=hard_weight != 0, WANT_GRAD=bool(compute_grad), ACC=acc, BLOCK=block,
                          num_warps=4 if block <= 1024 else 8)
    if target is None:
        n_valid = torch.full((), N, dtype=torch.int64, device=dev)
    else:
        n_valid = (target != ignore_index).sum()
    if reduction == _NONE:
        loss = row_loss.to(dtype)
    else:
        total = row_loss.sum()
        if reduction == _BATCHMEAN:
            total = total / n_valid.clamp(min=1)
        loss = total.to(dtype)
    return loss, grad, valid, n_valid
