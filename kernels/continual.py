"""Triton kernels of the continual ops (general masked softmax / cross-entropy, PGD step).

Plain launch helpers, no op registration: ``pyfastlab.ops`` wraps them as ``pyfastlab::<op>_triton``.
Semantics, outputs and edge cases follow the CPU kernels (csrc/cpu/continual_kernels_impl.h); the
math is in spec continual.md sections 3 and 6.

Layout of the work: one program per row (a tile of rows when C is small), the row held in registers
when C <= ``MAX_FUSED_C`` (``MAX_FUSED_C_F64`` for float64 inputs, whose registers run out
sooner); beyond that a looped variant (online max/sum, then a second sweep writing
the output). Math in float32 for fp16/bf16/fp32 inputs and float64 for fp64 inputs ("opmath"). The
only torch work around the kernels is O(N): the count of rows with a valid active target (needed
before the kernel writes the mean's gradient), the bad-index count and the final reduction; nothing
synchronises with the host.

Float scalars reach the kernels as integer bit patterns of their opmath value (Triton would pass a
Python float as float32, which is not exact for float64 inputs); the kernels bitcast them back.

Under ``TRITON_INTERPRET=1`` (set before triton is imported) the same helpers run on CPU tensors.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from pyfastlab.ops._reduction import MEAN as _MEAN, NONE as _NONE
from ._common import INTERPRET as _INTERPRET, bits as _bits, decode as _decode, opmath as _opmath

__all__ = [
    "masked_cross_entropy",
    "masked_cross_entropy_backward_",
    "masked_softmax",
    "masked_softmax_backward",
    "pgd_linf_step_",
    "MAX_FUSED_C",
    "MAX_FUSED_C_F64",
]

# Rows up to this many classes are held in registers (one sweep); longer rows loop.
MAX_FUSED_C = 32768
MAX_FUSED_C_F64 = 8192
# Under TRITON_INTERPRET=1 every program runs as numpy calls in Python: bigger blocks there mean
# fewer programs (same code paths; the looped kernels still take several blocks at C > 32768).
# Column block of the looped kernels.
LOOP_BLOCK = 16384 if _INTERPRET else 4096
# Elements per program in the fused kernels when several short rows share a program.
TILE_ELEMS = 65536 if _INTERPRET else 2048
# Elements per program of the PGD step.
PGD_BLOCK = 65536 if _INTERPRET else 2048

# How a kernel finds the mask row of row i (GMODE).
_G_ALL, _G_TABLE, _G_ROW, _G_FIRST = 0, 1, 2, 3


# ------------------------------------------------------------------------------------------------
# jit helpers
# ------------------------------------------------------------------------------------------------
@triton.jit
def _row_group(grp_ptr, rows, rmask, G, GMODE: tl.constexpr):
    """Mask-table row of each row: -1 = all active; an out-of-range row_group also reads -1
    (never out of bounds), and ok = False flags it."""
    if GMODE == 1:
        g = tl.load(grp_ptr + rows, mask=rmask, other=-1).to(tl.int64)
        ok = (g >= -1) & (g < G)
        g = tl.where(ok, g, -1)
    elif GMODE == 2:
        g = rows
        ok = rows >= 0
    elif GMODE == 3:
        g = rows * 0
        ok = rows >= 0
    else:
        g = rows * 0 - 1
        ok = rows >= 0
    return g, ok


@triton.jit
def _load_v(z_ptr, z_stride, act_ptr, g, rows, cols, rmask, cmask, C, m, d,
            GMODE: tl.constexpr, DETACH: tl.constexpr, ACC: tl.constexpr):
    """Masked row tile v ([R, B], opmath; -inf outside the tile) and the active mask a."""
    inb = rmask[:, None] & cmask[None, :]
    z = tl.load(z_ptr + rows[:, None] * z_stride + cols[None, :], mask=inb, other=float("-inf")).to(ACC)
    if GMODE != 0:
        # -1 rows skip the load (other = active); lanes outside the row stay z = -inf.
        a = tl.load(act_ptr + g[:, None] * C + cols[None, :], mask=inb & (g[:, None] >= 0), other=1) != 0
        if DETACH:
            v = tl.where(a, z, z + d)
        else:
            v = tl.where(a, z, m)
    else:
        a = cols[None, :] >= 0
        v = z
    return v, a


@triton.jit
def _row_stats(v):
    """Per row of the tile: max M, shift Ms (0 when M = -inf), e = exp(v - Ms), S = sum e, dead.

    tl.max drops NaN on the GPU (fmax), so NaN propagates through S instead: a NaN entry makes S
    NaN, and a row counts as dead (every v = -inf) only when M = -inf and S is not NaN."""
    M = tl.max(v, 1)
    Ms = tl.where(M == float("-inf"), 0.0, M)
    e = tl.exp(v - Ms[:, None])
    S = tl.sum(e, 1)
    dead = (M == float("-inf")) & (S == S)
    return M, Ms, e, S, dead


@triton.jit
def _online_update(M, S, v):
    """One block of the online max / sum: no rescale while the running max is -inf (S is 0 then);
    NaN entries make S NaN (see _row_stats)."""
    Mn = tl.maximum(M, tl.max(v, 1))
    Ms = tl.where(Mn == float("-inf"), 0.0, Mn)
    S = S * tl.exp(M - Ms) + tl.sum(tl.exp(v - Ms[:, None]), 1)
    return Mn, S


@triton.jit
def _apply_scale(x, a, sn, so, DETACH: tl.constexpr):
    """x times its gradient multiplier: s_n (active), s_o (detach-masked), 0 (const-masked). A zero
    multiplier selects 0 rather than multiplying: a stopped gradient stays 0 in a NaN row."""
    if DETACH:
        masked = tl.where(so == 0.0, 0.0, x * so)
    else:
        masked = 0.0
    return tl.where(a, tl.where(sn == 0.0, 0.0, x * sn), masked)


# ------------------------------------------------------------------------------------------------
# masked cross-entropy forward (+ gradient for upstream 1)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _ce_store_rows(l, valid, dead, rows, rmask, w_ptr, loss_ptr, out_ptr, counted_ptr,
                   HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """Stores each row's loss, weighted loss and counted flag (0, 0, False when not counted);
    returns (counted, w)."""
    counted = valid & (dead == 0) & rmask
    if HAS_WEIGHT:
        w = tl.load(w_ptr + rows, mask=rmask, other=0.0).to(ACC)
    else:
        w = tl.zeros_like(l) + 1.0
    tl.store(loss_ptr + rows, tl.where(counted, l, 0.0), mask=rmask)
    tl.store(out_ptr + rows, tl.where(counted, w * l, 0.0), mask=rmask)
    tl.store(counted_ptr + rows, counted.to(tl.uint8), mask=rmask)
    return counted, w


@triton.jit
def _grad_coef(w, coef_ptr, IS_MEAN: tl.constexpr, ACC: tl.constexpr):
    """The gradient's row coefficient: w_i, over n_pre for the mean (read on device)."""
    if IS_MEAN:
        return w * tl.load(coef_ptr).to(ACC)
    else:
        return w


@triton.jit(do_not_specialize=["m_bits", "d_bits", "so_bits", "sn_bits"])
def _ce_fwd_fused(z_ptr, z_stride, y_ptr, valid_ptr, grp_ptr, act_ptr, w_ptr, coef_ptr,
                  loss_ptr, out_ptr, counted_ptr, g_ptr,
                  N, C, G, m_bits, d_bits, so_bits, sn_bits,
                  GMODE: tl.constexpr, DETACH: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                  IS_MEAN: tl.constexpr, WANT_GRAD: tl.constexpr, ACC: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = rows < N
    cols = tl.arange(0, BLOCK)
    cmask = cols < C
    m = _decode(m_bits, ACC)
    d = _decode(d_bits, ACC)

    g, _ok = _row_group(grp_ptr, rows, rmask, G, GMODE)
    valid = tl.load(valid_ptr + rows, mask=rmask, other=0) != 0
    y = tl.load(y_ptr + rows, mask=rmask, other=-1)
    v, a = _load_v(z_ptr, z_stride, act_ptr, g, rows, cols, rmask, cmask, C, m, d, GMODE, DETACH, ACC)

    M, Ms, e, S, dead = _row_stats(v)
    is_y = cols[None, :] == y[:, None]
    zy = tl.sum(tl.where(is_y, v, 0.0), 1)
    ey = tl.sum(tl.where(is_y, e, 0.0), 1)
    l = (M - zy) + tl.log(S)  # M + log S - zy rounds log S away once |M| >> log S
    counted, w = _ce_store_rows(l, valid, dead, rows, rmask, w_ptr, loss_ptr, out_ptr, counted_ptr, HAS_WEIGHT, ACC)

    if WANT_GRAD:
        so = _decode(so_bits, ACC)
        sn = _decode(sn_bits, ACC)
        coef = _grad_coef(w, coef_ptr, IS_MEAN, ACC)
        inv = coef / S
        gr = _apply_scale(e * inv[:, None], a, sn, so, DETACH)
        # p_y - 1 in opmath before rounding (no cancellation in reduced precision).
        gy = tl.where(sn == 0.0, 0.0, (ey / S - 1.0) * coef * sn)
        gr = tl.where(is_y, gy[:, None], gr)
        gr = tl.where(counted[:, None], gr, 0.0)
        tl.store(g_ptr + rows[:, None] * C + cols[None, :], gr,
                 mask=rmask[:, None] & cmask[None, :])


@triton.jit(do_not_specialize=["m_bits", "d_bits", "so_bits", "sn_bits"])
def _ce_fwd_looped(z_ptr, z_stride, y_ptr, valid_ptr, grp_ptr, act_ptr, w_ptr, coef_ptr,
                   loss_ptr, out_ptr, counted_ptr, g_ptr,
                   N, C, G, m_bits, d_bits, so_bits, sn_bits,
                   GMODE: tl.constexpr, DETACH: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                   IS_MEAN: tl.constexpr, WANT_GRAD: tl.constexpr, ACC: tl.constexpr,
                   BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) + tl.arange(0, 1)
    rmask = rows < N
    m = _decode(m_bits, ACC)
    d = _decode(d_bits, ACC)
    g, _ok = _row_group(grp_ptr, rows, rmask, G, GMODE)
    valid = tl.load(valid_ptr + rows, mask=rmask, other=0) != 0
    y = tl.load(y_ptr + rows, mask=rmask, other=-1)

    # Pass 1: online max / sum (no rescale while the running max is -inf), target logit.
    M = tl.full([1], float("-inf"), ACC)
    S = tl.zeros([1], ACC)
    zy = tl.zeros([1], ACC)
    if tl.max(valid.to(tl.int32), 0) != 0:  # rows not counted are never read
        for start in range(0, C, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            cmask = cols < C
            v, a = _load_v(z_ptr, z_stride, act_ptr, g, rows, cols, rmask, cmask, C, m, d, GMODE, DETACH, ACC)
            M, S = _online_update(M, S, v)
            zy += tl.sum(tl.where(cols[None, :] == y[:, None], v, 0.0), 1)

    Ms = tl.where(M == float("-inf"), 0.0, M)
    dead = (M == float("-inf")) & (S == S)
    l = (M - zy) + tl.log(S)
    counted, w = _ce_store_rows(l, valid, dead, rows, rmask, w_ptr, loss_ptr, out_ptr, counted_ptr, HAS_WEIGHT, ACC)

    if WANT_GRAD:
        so = _decode(so_bits, ACC)
        sn = _decode(sn_bits, ACC)
        coef = _grad_coef(w, coef_ptr, IS_MEAN, ACC)
        inv = coef / S
        gy = tl.where(sn == 0.0, 0.0, (tl.exp(zy - Ms) / S - 1.0) * coef * sn)
        # Pass 2: the gradient row.
        for start in range(0, C, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            cmask = cols < C
            v, a = _load_v(z_ptr, z_stride, act_ptr, g, rows, cols, rmask, cmask, C, m, d, GMODE, DETACH, ACC)
            gr = _apply_scale(tl.exp(v - Ms[:, None]) * inv[:, None], a, sn, so, DETACH)
            gr = tl.where(cols[None, :] == y[:, None], gy[:, None], gr)
            gr = tl.where(counted[:, None], gr, 0.0)
            tl.store(g_ptr + rows[:, None] * C + cols[None, :], gr, mask=rmask[:, None] & cmask[None, :])


# ------------------------------------------------------------------------------------------------
# gradient buffer scaling (backward of the cross-entropy)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _ce_bwd_scale(g_ptr, counted_ptr, s_ptr, N, C,
                  PER_ROW: tl.constexpr, ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = rows < N
    if PER_ROW:
        s = tl.load(s_ptr + rows, mask=rmask, other=1.0).to(ACC)
    else:
        s = tl.load(s_ptr + rows * 0).to(ACC)
    cnt = tl.load(counted_ptr + rows, mask=rmask, other=0) != 0
    # Rows not counted stay 0 (select, not multiply: even for a NaN upstream); s == 1 is a no-op.
    todo = rmask & cnt & (s != 1.0)
    if tl.max(todo.to(tl.int32), 0) != 0:
        for start in range(0, C, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            msk = todo[:, None] & (cols < C)[None, :]
            ptrs = g_ptr + rows[:, None] * C + cols[None, :]
            gv = tl.load(ptrs, mask=msk, other=0.0).to(ACC)
            tl.store(ptrs, gv * s[:, None], mask=msk)


# ------------------------------------------------------------------------------------------------
# masked softmax forward / backward
# ------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["m_bits", "d_bits"])
def _softmax_fwd_fused(z_ptr, z_stride, grp_ptr, act_ptr, o_ptr, N, C, G, m_bits, d_bits,
                       GMODE: tl.constexpr, DETACH: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr,
                       ROWS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = rows < N
    cols = tl.arange(0, BLOCK)
    cmask = cols < C
    m = _decode(m_bits, ACC)
    d = _decode(d_bits, ACC)
    g, ok = _row_group(grp_ptr, rows, rmask, G, GMODE)
    v, a = _load_v(z_ptr, z_stride, act_ptr, g, rows, cols, rmask, cmask, C, m, d, GMODE, DETACH, ACC)
    M, Ms, e, S, dead = _row_stats(v)
    dead = dead | (ok == 0)  # a bad row_group drops the row: output as a dead row
    if LOG:
        o = v - (Ms + tl.log(S))[:, None]
        o = tl.where(dead[:, None], float("-inf"), o)
    else:
        o = e * (1.0 / S)[:, None]
        o = tl.where(dead[:, None], 0.0, o)
    tl.store(o_ptr + rows[:, None] * C + cols[None, :], o, mask=rmask[:, None] & cmask[None, :])


@triton.jit(do_not_specialize=["m_bits", "d_bits"])
def _softmax_fwd_looped(z_ptr, z_stride, grp_ptr, act_ptr, o_ptr, N, C, G, m_bits, d_bits,
                        GMODE: tl.constexpr, DETACH: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr,
                        BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) + tl.arange(0, 1)
    rmask = rows < N
    m = _decode(m_bits, ACC)
    d = _decode(d_bits, ACC)
    g, ok = _row_group(grp_ptr, rows, rmask, G, GMODE)
    M = tl.full([1], float("-inf"), ACC)
    S = tl.zeros([1], ACC)
    for start in range(0, C, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        cmask = cols < C
        v, a = _load_v(z_ptr, z_stride, act_ptr, g, rows, cols, rmask, cmask, C, m, d, GMODE, DETACH, ACC)
        M, S = _online_update(M, S, v)
    Ms = tl.where(M == float("-inf"), 0.0, M)
    dead = ((M == float("-inf")) & (S == S)) | (ok == 0)
    lse = Ms + tl.log(S)
    inv = 1.0 / S
    for start in range(0, C, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        cmask = cols < C
        v, a = _load_v(z_ptr, z_stride, act_ptr, g, rows, cols, rmask, cmask, C, m, d, GMODE, DETACH, ACC)
        if LOG:
            o = tl.where(dead[:, None], float("-inf"), v - lse[:, None])
        else:
            o = tl.where(dead[:, None], 0.0, tl.exp(v - Ms[:, None]) * inv[:, None])
        tl.store(o_ptr + rows[:, None] * C + cols[None, :], o, mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _softmax_bwd_stats(y_ptr, gb_ptr, rows, cols, rmask, cmask, C, LOG: tl.constexpr, ACC: tl.constexpr):
    """Tile of (y, gbar) and its partial (max of y ignoring NaN, dot)."""
    inb = rmask[:, None] & cmask[None, :]
    offs = rows[:, None] * C + cols[None, :]
    y = tl.load(y_ptr + offs, mask=inb, other=0.0).to(ACC)
    gb = tl.load(gb_ptr + offs, mask=inb, other=0.0).to(ACC)
    if LOG:
        # ymax starts at -inf (a dead log row is all -inf); dot = sum_j gbar_j.
        ymax = tl.max(tl.where(inb & (y == y), y, float("-inf")), 1)
        dot = tl.sum(gb, 1)
    else:
        # ymax starts at 0 (a dead row is all 0); dot = sum_j gbar_j y_j.
        ymax = tl.max(tl.where(inb & (y == y), y, 0.0), 1)
        dot = tl.sum(gb * y, 1)
    return y, gb, ymax, dot


@triton.jit
def _softmax_bwd_tile(y, gb, dot, a, sn, so, DETACH: tl.constexpr, LOG: tl.constexpr):
    if LOG:
        return _apply_scale(gb - tl.exp(y) * dot[:, None], a, sn, so, DETACH)
    else:
        return _apply_scale(y * (gb - dot[:, None]), a, sn, so, DETACH)


@triton.jit(do_not_specialize=["so_bits", "sn_bits"])
def _softmax_bwd_fused(gb_ptr, y_ptr, grp_ptr, act_ptr, dz_ptr, N, C, G, so_bits, sn_bits,
                       GMODE: tl.constexpr, DETACH: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr,
                       ROWS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = rows < N
    cols = tl.arange(0, BLOCK)
    cmask = cols < C
    so = _decode(so_bits, ACC)
    sn = _decode(sn_bits, ACC)
    g, _ok = _row_group(grp_ptr, rows, rmask, G, GMODE)
    y, gb, ymax, dot = _softmax_bwd_stats(y_ptr, gb_ptr, rows, cols, rmask, cmask, C, LOG, ACC)
    if LOG:
        dead = ymax == float("-inf")
    else:
        dead = ymax == 0.0
    inb = rmask[:, None] & cmask[None, :]
    if GMODE != 0:
        a = tl.load(act_ptr + g[:, None] * C + cols[None, :], mask=inb & (g[:, None] >= 0), other=1) != 0
    else:
        a = cols[None, :] >= 0
    dz = _softmax_bwd_tile(y, gb, dot, a, sn, so, DETACH, LOG)
    dz = tl.where(dead[:, None], 0.0, dz)
    tl.store(dz_ptr + rows[:, None] * C + cols[None, :], dz, mask=inb)


@triton.jit(do_not_specialize=["so_bits", "sn_bits"])
def _softmax_bwd_looped(gb_ptr, y_ptr, grp_ptr, act_ptr, dz_ptr, N, C, G, so_bits, sn_bits,
                        GMODE: tl.constexpr, DETACH: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr,
                        BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) + tl.arange(0, 1)
    rmask = rows < N
    so = _decode(so_bits, ACC)
    sn = _decode(sn_bits, ACC)
    g, _ok = _row_group(grp_ptr, rows, rmask, G, GMODE)
    if LOG:
        ymax = tl.full([1], float("-inf"), ACC)
    else:
        ymax = tl.zeros([1], ACC)
    dot = tl.zeros([1], ACC)
    for start in range(0, C, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        cmask = cols < C
        y, gb, bmax, bdot = _softmax_bwd_stats(y_ptr, gb_ptr, rows, cols, rmask, cmask, C, LOG, ACC)
        ymax = tl.maximum(ymax, bmax)
        dot += bdot
    if LOG:
        dead = ymax == float("-inf")
    else:
        dead = ymax == 0.0
    for start in range(0, C, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        cmask = cols < C
        inb = rmask[:, None] & cmask[None, :]
        y, gb, bmax, bdot = _softmax_bwd_stats(y_ptr, gb_ptr, rows, cols, rmask, cmask, C, LOG, ACC)
        if GMODE != 0:
            a = tl.load(act_ptr + g[:, None] * C + cols[None, :], mask=inb & (g[:, None] >= 0), other=1) != 0
        else:
            a = cols[None, :] >= 0
        dz = _softmax_bwd_tile(y, gb, dot, a, sn, so, DETACH, LOG)
        dz = tl.where(dead[:, None], 0.0, dz)
        tl.store(dz_ptr + rows[:, None] * C + cols[None, :], dz, mask=inb)


# ------------------------------------------------------------------------------------------------
# PGD L-inf step
# ------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["a_bits", "e_bits", "lo_bits", "hi_bits"])
def _pgd_step(x_ptr, g_ptr, x0_ptr, n, a_bits, e_bits, lo_bits, hi_bits,
              ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    msk = offs < n
    x = tl.load(x_ptr + offs, mask=msk, other=0.0).to(ACC)
    gr = tl.load(g_ptr + offs, mask=msk, other=0.0).to(ACC)
    x0 = tl.load(x0_ptr + offs, mask=msk, other=0.0).to(ACC)
    a = _decode(a_bits, ACC)
    e = _decode(e_bits, ACC)
    lo = _decode(lo_bits, ACC)
    hi = _decode(hi_bits, ACC)
    # sign(g) with sign(0) = 0 and sign(NaN) = NaN.
    s = tl.where(gr > 0, 1.0, 0.0) - tl.where(gr < 0, 1.0, 0.0)
    s = tl.where(gr != gr, gr, s).to(ACC)
    t = x + a * s
    # NaN-propagating max / min (the order of torch.maximum / torch.minimum).
    b = x0 - e
    u = tl.where((t != t) | (b != b), t + b, tl.where(t > b, t, b))
    b = x0 + e
    u = tl.where((u != u) | (b != b), u + b, tl.where(u < b, u, b))
    # clamp to [lo, hi] (std::min(std::max(u, lo), hi)); NaN stays NaN.
    r = tl.where(u < lo, lo, u)
    r = tl.where(hi < r, hi, r)
    r = tl.where(u != u, u, r)
    tl.store(x_ptr + offs, r.to(x_ptr.dtype.element_ty), mask=msk)


# ------------------------------------------------------------------------------------------------
# launch helpers
# ------------------------------------------------------------------------------------------------
def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _device(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _rows_major(t: torch.Tensor) -> torch.Tensor:
    """t with unit column stride (row stride free); copies only when needed."""
    return t if t.stride(1) == 1 or t.size(1) == 1 else t.contiguous()


def _max_fused(dtype: torch.dtype) -> int:
    """Longest row kept in registers: float64 math spills beyond 8192 columns on sm_90."""
    return MAX_FUSED_C_F64 if dtype == torch.float64 else MAX_FUSED_C


def _fused_config(N: int, C: int, dtype: torch.dtype) -> Tuple[int, int, int]:
    """(ROWS, BLOCK, num_warps) of the fused kernels: about 8 fp32 (4 fp64) values per thread."""
    block = triton.next_power_of_2(C)
    rows = max(1, min(TILE_ELEMS // block, triton.next_power_of_2(max(N, 1))))
    acc_bytes = 8 if dtype == torch.float64 else 4
    warps = min(32, max(4, rows * block * acc_bytes // 1024))
    return rows, block, warps


def _mask_args(active: Optional[torch.Tensor], row_group: Optional[torch.Tensor], N: int,
               like: torch.Tensor):
    """(GMODE, grp, act, G) for the kernels; pointer placeholders are 'like' when unused."""
    if active is None:
        return _G_ALL, like, like, 0
    act = active.contiguous().view(torch.uint8)
    G = active.size(0)
    if row_group is not None:
        return _G_TABLE, row_group.contiguous(), act, G
    return (_G_FIRST if G == 1 else _G_ROW), like, act, G


def _ce_prepass(target, active, row_group, C: int, ignore_index: int):
    """O(N) device pass: valid rows (target not ignored, in range, active; row_group in range),
    their count n_pre, and the count of rows with a bad target or row_group."""
    N = target.size(0)
    ign = target == ignore_index
    y_ok = (target >= 0) & (target < C)
    valid = y_ok & ~ign
    bad = ~(ign | y_ok)
    if active is not None:
        G = active.size(0)
        yi = torch.where(y_ok, target, 0)
        if row_group is not None:
            g_ok = (row_group >= -1) & (row_group < G)
            use = g_ok & (row_group >= 0)
            gi = torch.where(use, row_group, 0)
            a_y = active[gi, yi] | ~use
            valid = valid & g_ok & a_y
            bad = bad | ~g_ok
        else:
            if G == 1:
                a_y = active[0].index_select(0, yi)
            else:
                a_y = active[torch.arange(N, device=target.device), yi]
            valid = valid & a_y
    n_pre = valid.sum()
    return valid, n_pre, bad.sum()


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, active: Optional[torch.Tensor],
                         row_group: Optional[torch.Tensor], weight: Optional[torch.Tensor], mode: int,
                         mask_value: float, offset: float, old_grad_scale: float, new_grad_scale: float,
                         ignore_index: int, reduction: int, compute_grad: bool):
    """-> (loss, row_loss, grad, counted, counts); see the schema in csrc/registration.cpp."""
    N, C = logits.shape
    dtype, dev = logits.dtype, logits.device
    op_dtype = _opmath(dtype)
    target = target.contiguous()
    valid, n_pre, bad = _ce_prepass(target, active, row_group, C, ignore_index)

    row_loss = torch.empty(N, dtype=op_dtype, device=dev)
    row_out = torch.empty(N, dtype=op_dtype, device=dev)
    counted = torch.empty(N, dtype=torch.bool, device=dev)
    grad = torch.empty((N, C) if compute_grad else (0,), dtype=dtype, device=dev)
    is_mean = reduction == _MEAN
    if N > 0:
        z = _rows_major(logits)
        gmode, grp, act, G = _mask_args(active, row_group, N, target)
        w = weight.to(op_dtype).contiguous() if weight is not None else row_out
        coef = ((1.0 / n_pre.clamp(min=1).to(torch.float64)).to(op_dtype).reshape(1)
                if (is_mean and compute_grad) else row_out)
        scal = (_bits(mask_value, dtype), _bits(offset, dtype), _bits(old_grad_scale, dtype),
                _bits(new_grad_scale, dtype))
        flags = dict(GMODE=gmode, DETACH=mode == 1, HAS_WEIGHT=weight is not None, IS_MEAN=is_mean,
                     WANT_GRAD=bool(compute_grad), ACC=_acc(dtype))
        args = (z, z.stride(0), target, valid.view(torch.uint8), grp, act, w, coef,
                row_loss, row_out, counted.view(torch.uint8), grad if compute_grad else row_out,
                N, C, G, *scal)
        with _device(logits):
            if C <= _max_fused(dtype):
                rows, block, warps = _fused_config(N, C, dtype)
                _ce_fwd_fused[(triton.cdiv(N, rows),)](*args, **flags, ROWS=rows, BLOCK=block,
                                                       num_warps=warps)
            else:
                _ce_fwd_looped[(N,)](*args, **flags, BLOCK=LOOP_BLOCK, num_warps=8)
        n = counted.sum()
    else:
        n = torch.zeros((), dtype=torch.int64, device=dev)
    counts = torch.stack([n_pre.to(torch.int64), n.to(torch.int64), bad.to(torch.int64)])

    if reduction == _NONE:
        loss = row_out.to(dtype)
    else:
        total = row_out.sum()
        if is_mean:
            total = total / n.clamp(min=1)
        loss = total.to(dtype)
    return loss, row_loss, grad, counted, counts


def masked_cross_entropy_backward_(grad_loss: torch.Tensor, grad: torch.Tensor, counted: torch.Tensor,
                                   counts: torch.Tensor, reduction: int) -> None:
    """Scales the counted rows of the saved gradient buffer in place by the upstream gradient:
    gbar_i (none), gbar (sum), gbar * max(n_pre, 1) / max(n, 1) (mean). A no-op where that is 1."""
    if grad.numel() == 0:
        return
    if grad.dim() != 2 or not grad.is_contiguous():
        raise ValueError("masked_cross_entropy_backward_: grad buffer must be a contiguous [N, C] tensor")
    N, C = grad.shape
    op_dtype = _opmath(grad.dtype)
    if reduction == _NONE:
        if grad_loss.numel() != N:
            raise ValueError(f"masked_cross_entropy_backward_: grad_loss must have N={N} elements "
                             "for reduction='none'")
        s = grad_loss.reshape(N).to(op_dtype).contiguous()
    else:
        s = grad_loss.reshape(1).to(torch.float64)
        if reduction == _MEAN:
            c = counts.to(torch.float64).clamp(min=1)
            s = s * (c[0] / c[1])
        s = s.to(op_dtype)
    per_row = reduction == _NONE and N != 1
    if C <= _max_fused(grad.dtype):
        rows, block, warps = _fused_config(N, C, grad.dtype)
    else:
        rows, block, warps = 1, LOOP_BLOCK, 8
    with _device(grad):
        _ce_bwd_scale[(triton.cdiv(N, rows),)](grad, counted.contiguous().view(torch.uint8), s, N, C,
                                               PER_ROW=per_row, ACC=_acc(grad.dtype), ROWS=rows,
                                               BLOCK=block, num_warps=warps)


def masked_softmax(logits: torch.Tensor, active: Optional[torch.Tensor], row_group: Optional[torch.Tensor],
                   mode: int, mask_value: float, offset: float, log: bool) -> torch.Tensor:
    """softmax(v) (log=True: log_softmax(v)) row-wise; rows whose every v is -inf: all 0 (log: -inf).
    A row whose row_group is out of range is dropped the same way (the CPU raises)."""
    N, C = logits.shape
    dtype = logits.dtype
    out = torch.empty((N, C), dtype=dtype, device=logits.device)
    if N == 0:
        return out
    z = _rows_major(logits)
    gmode, grp, act, G = _mask_args(active, row_group, N, out)
    args = (z, z.stride(0), grp, act, out, N, C, G, _bits(mask_value, dtype), _bits(offset, dtype))
    flags = dict(GMODE=gmode, DETACH=mode == 1, LOG=bool(log), ACC=_acc(dtype))
    with _device(logits):
        if C <= _max_fused(dtype):
            rows, block, warps = _fused_config(N, C, dtype)
            _softmax_fwd_fused[(triton.cdiv(N, rows),)](*args, **flags, ROWS=rows, BLOCK=block,
                                                        num_warps=warps)
        else:
            _softmax_fwd_looped[(N,)](*args, **flags, BLOCK=LOOP_BLOCK, num_warps=8)
    return out


def masked_softmax_backward(grad_out: torch.Tensor, out: torch.Tensor, active: Optional[torch.Tensor],
                            row_group: Optional[torch.Tensor], mode: int, old_grad_scale: float,
                            new_grad_scale: float, log: bool) -> torch.Tensor:
    """dz from the saved output (p = out, or exp(out) for log); dead rows get 0."""
    N, C = out.shape
    dtype = out.dtype
    y = out.contiguous()
    gb = grad_out.to(dtype).contiguous()
    dz = torch.empty((N, C), dtype=dtype, device=out.device)
    if N == 0:
        return dz
    gmode, grp, act, G = _mask_args(active, row_group, N, dz)
    args = (gb, y, grp, act, dz, N, C, G, _bits(old_grad_scale, dtype), _bits(new_grad_scale, dtype))
    flags = dict(GMODE=gmode, DETACH=mode == 1, LOG=bool(log), ACC=_acc(dtype))
    with _device(out):
        if C <= _max_fused(dtype):
            rows, block, warps = _fused_config(N, C, dtype)
            _softmax_bwd_fused[(triton.cdiv(N, rows),)](*args, **flags, ROWS=rows, BLOCK=block,
                                                        num_warps=warps)
        else:
            _softmax_bwd_looped[(N,)](*args, **flags, BLOCK=LOOP_BLOCK, num_warps=8)
    return dz


def pgd_linf_step_(x_adv: torch.Tensor, grad: torch.Tensor, x_clean: torch.Tensor, eps: float,
                   step_size: float, lo: float, hi: float) -> None:
    """x_adv <- clamp(clamp(x_adv + step_size * sign(grad), x_clean - eps, x_clean + eps), lo, hi),
    in place, any strides (a non-contiguous x_adv is stepped on a contiguous copy, then copied back)."""
    n = x_adv.numel()
    if n == 0:
        return
    dtype = x_adv.dtype
    x = x_adv if x_adv.is_contiguous() else x_adv.contiguous()
    g = grad.contiguous()
    x0 = x_clean.contiguous()
    with _device(x_adv):
        _pgd_step[(triton.cdiv(n, PGD_BLOCK),)](x, g, x0, n, _bits(step_size, dtype), _bits(eps, dtype),
                                                _bits(lo, dtype), _bits(hi, dtype), ACC=_acc(dtype),
                                                BLOCK=PGD_BLOCK, num_warps=8)
    if x is not x_adv:
        x_adv.copy_(x)
