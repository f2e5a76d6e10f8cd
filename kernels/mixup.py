"""Triton kernels of the mixup ops pair_mix, mixed_logits_cross_entropy and uniformity_loss (spec
mixup.md 3 and 6).

Plain launch helpers, no op registration: ``pyfastlab.ops`` wraps them as
``pyfastlab::<op>_triton``. Semantics follow the CPU kernels (csrc/cpu/mixup*.cpp).

- pair_mix: one program per (row, D chunk), the mixed row formed from its two source rows with the
  row-level end rule. Backward: one program per row k gathers lam_k G_k and the (1 - lam_i) G_i of
  the rows i with partner k through an inverse CSR built on device by a stable sort (no atomics,
  fixed order), and reduces grad_lam_k = G_k . (x_k - x_{p_k}) in the same pass.
- mixed CE: one program per row, online log-sum-exp over column chunks (running max and rescaled
  sum). Backward in one pass without scratch: program k recomputes its own mixed row and those of
  the rows that chose it as partner (their partner row is z_k, already loaded).
- uniformity: forward over Gram tiles J >= I only (a < b masked on diagonal tiles), one (max, sum)
  per tile, merged in fp64 in tile order; backward row-owner (each row block loops over every
  column block and writes only its own rows). Dots in the input dtype with opmath accumulation
  (fp32 in full IEEE precision unless torch allows TF32).
Scalars the kernels need from tensors (lse, the upstream gradient) are read on device: no syncs.
An out-of-range partner or target is never read: its row gives NaN (loss, lse, mixed row, grad_lam)
and takes no part in another row's gradient.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from pyfastlab.ops._reduction import MEAN as _MEAN, NONE as _NONE
from ._common import INTERPRET as _INTERPRET
from ._common import bits, decode, opmath

__all__ = ["pair_mix_forward", "pair_mix_backward", "mixed_ce_forward", "mixed_ce_backward", "uniformity_forward",
           "uniformity_backward"]

_BLOCK = 1024 if _INTERPRET else 512      # columns per chunk of a row
_TILE = 32 if _INTERPRET else 64          # Gram tile rows/columns


def _lam_rows(lam, lam_scalar: float, n_rows: int, like: torch.Tensor) -> torch.Tensor:
    acc = opmath(like.dtype)
    if lam is None:
        return torch.full((n_rows,), lam_scalar, dtype=acc, device=like.device)
    return lam.to(acc).expand(n_rows).contiguous()


def _inverse_csr(partner: torch.Tensor):
    """(offsets [B + 1], rows [B]): rows i with partner k in ascending i at offsets[k]..offsets[k+1]."""
    n = partner.shape[0]
    key = torch.where((partner >= 0) & (partner < n), partner, n)  # out-of-range partners sort last
    rows = torch.sort(key, stable=True).indices
    offsets = torch.zeros(n + 1, dtype=torch.int64, device=partner.device)
    offsets[1:] = torch.cumsum(torch.bincount(key, minlength=n + 1)[:n], 0)
    return offsets, rows


def _grad_lam(per_row, lam, lam_grad: bool, like: torch.Tensor) -> torch.Tensor:
    if not lam_grad or lam is None:
        return like.new_empty((0,))
    if lam.dim() == 0:
        return per_row.double().sum().to(lam.dtype)
    return per_row.to(lam.dtype)


@triton.jit
def _mix(a, b, lam):
    """The row-level end rule of 3.1: exactly a at lam 1, b at lam 0."""
    mixed = lam * a + (1 - lam) * b
    return tl.where(lam == 1, a, tl.where(lam == 0, b, mixed))


# ---- pair_mix -------------------------------------------------------------------------------------

@triton.jit
def _pair_mix_fwd(x_ptr, p_ptr, lam_ptr, out_ptr, B, D, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    j = tl.load(p_ptr + i)
    ok = (j >= 0) & (j < B)
    j = tl.where(ok, j, i)
    lam = tl.load(lam_ptr + i)
    # grid-stride over the D chunks: grid axis 1 is capped at 65535 (see pair_mix_forward)
    for c0 in range(tl.program_id(1) * BLOCK, D, tl.num_programs(1) * BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        m = cols < D
        a = tl.load(x_ptr + i * D + cols, mask=m, other=0.0).to(lam.dtype)
        b = tl.load(x_ptr + j * D + cols, mask=m, other=0.0).to(lam.dtype)
        mixed = tl.where(ok, _mix(a, b, lam), float("nan"))
        tl.store(out_ptr + i * D + cols, mixed.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _pair_mix_bwd(g_ptr, x_ptr, p_ptr, lam_ptr, off_ptr, rows_ptr, gx_ptr, glam_ptr, D,
                  WANT_LAM: tl.constexpr, BLOCK: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)
    lk = tl.load(lam_ptr + k)
    pk = tl.load(p_ptr + k)
    ok = (pk >= 0) & (pk < tl.num_programs(0))
    pk = tl.where(ok, pk, k)
    start = tl.load(off_ptr + k)
    end = tl.load(off_ptr + k + 1)
    dot = tl.zeros((BLOCK,), dtype=lk.dtype)
    for c0 in range(0, D, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        m = cols < D
        gk = tl.load(g_ptr + k * D + cols, mask=m, other=0.0).to(lk.dtype)
        acc = lk * gk
        for j in range(start, end):
            i = tl.load(rows_ptr + j)
            li = tl.load(lam_ptr + i)
            acc += (1 - li) * tl.load(g_ptr + i * D + cols, mask=m, other=0.0).to(lk.dtype)
        tl.store(gx_ptr + k * D + cols, acc.to(gx_ptr.dtype.element_ty), mask=m)
        if WANT_LAM:
            xk = tl.load(x_ptr + k * D + cols, mask=m, other=0.0).to(lk.dtype)
            xp = tl.load(x_ptr + pk * D + cols, mask=m, other=0.0).to(lk.dtype)
            dot += gk * (xk - xp)
    if WANT_LAM:
        tl.store(glam_ptr + k, tl.where(ok, tl.sum(dot, axis=0), float("nan")))


def pair_mix_forward(x, partner, lam, lam_scalar):
    x = x.contiguous()
    B, D = x.shape
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    lam_rows = _lam_rows(lam, lam_scalar, B, x)
    # CUDA limits grid axis 1 to 65535: D > 65535 * _BLOCK would not launch without the cap
    _pair_mix_fwd[(B, min(triton.cdiv(D, _BLOCK), 65535))](x, partner.contiguous(), lam_rows, out, B, D,
                                                          BLOCK=_BLOCK)
    return out


def pair_mix_backward(grad, x, partner, lam, lam_scalar, lam_grad):
    x, grad, partner = x.contiguous(), grad.to(x.dtype).contiguous(), partner.contiguous()
    B, D = x.shape
    lam_rows = _lam_rows(lam, lam_scalar, B, x)
    grad_x = torch.empty_like(x)
    want = bool(lam_grad and lam is not None)
    per_row = torch.zeros(B, dtype=lam_rows.dtype, device=x.device)
    if B > 0:
        offsets, rows = _inverse_csr(partner)
        _pair_mix_bwd[(B,)](grad, x, partner, lam_rows, offsets, rows, grad_x, per_row, D, WANT_LAM=want,
                            BLOCK=_BLOCK)
    return grad_x, _grad_lam(per_row, lam, want, x)


# ---- mixed_logits_cross_entropy ------------------------------------------------------------------

@triton.jit
def _mce_fwd(z_ptr, p_ptr, lam_ptr, y_ptr, loss_ptr, lse_ptr, B, C, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    j = tl.load(p_ptr + i)
    y = tl.load(y_ptr + i)
    ok = (j >= 0) & (j < B) & (y >= 0) & (y < C)
    j = tl.where(ok, j, i)
    y = tl.where(ok, y, 0)
    lam = tl.load(lam_ptr + i)
    m = tl.full((), float("-inf"), lam.dtype)
    s = tl.zeros((), lam.dtype)
    bad = tl.zeros((), tl.int32)
    for c0 in range(0, C, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        cm = cols < C
        a = tl.load(z_ptr + i * C + cols, mask=cm, other=0.0).to(lam.dtype)
        b = tl.load(z_ptr + j * C + cols, mask=cm, other=0.0).to(lam.dtype)
        v = tl.where(cm, _mix(a, b, lam), float("-inf"))
        bad = tl.maximum(bad, tl.max((v != v).to(tl.int32), axis=0))
        new_m = tl.maximum(m, tl.max(v, axis=0))
        safe = tl.where(new_m == float("-inf"), 0.0, new_m)  # nothing to rescale while the max is -inf
        s = s * tl.exp(m - safe) + tl.sum(tl.exp(v - safe), axis=0)
        m = new_m
    zy = _mix(tl.load(z_ptr + i * C + y).to(lam.dtype), tl.load(z_ptr + j * C + y).to(lam.dtype), lam)
    finite = ok & (bad == 0) & (m > float("-inf")) & (m < float("inf"))
    tl.store(lse_ptr + i, tl.where(finite, m + tl.log(s), float("nan")))
    # (m - z_y) + log s: lse - z_y would round log s away once |m| >> log s (logits near 1e8)
    tl.store(loss_ptr + i, tl.where(finite, (m - zy) + tl.log(s), float("nan")))


@triton.jit
def _mce_bwd(z_ptr, p_ptr, lam_ptr, y_ptr, lse_ptr, w_ptr, off_ptr, rows_ptr, gz_ptr, glam_ptr, C,
             WANT_LAM: tl.constexpr, BLOCK: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)
    pk = tl.load(p_ptr + k)
    # an out-of-range index left lse_k NaN in the forward: the row's gradient is NaN, nothing is read
    pk = tl.where((pk >= 0) & (pk < tl.num_programs(0)), pk, k)
    lk = tl.load(lam_ptr + k)
    lse_k = tl.load(lse_ptr + k)
    wk = tl.load(w_ptr + k)
    yk = tl.load(y_ptr + k)
    start = tl.load(off_ptr + k)
    end = tl.load(off_ptr + k + 1)
    dot = tl.zeros((BLOCK,), dtype=lk.dtype)
    for c0 in range(0, C, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        cm = cols < C
        zk = tl.load(z_ptr + k * C + cols, mask=cm, other=0.0).to(lk.dtype)
        zp = tl.load(z_ptr + pk * C + cols, mask=cm, other=0.0).to(lk.dtype)
        dk = wk * (tl.exp(_mix(zk, zp, lk) - lse_k) - (cols == yk).to(lk.dtype))
        acc = lk * dk
        if WANT_LAM:
            dot += tl.where(cm, dk * (zk - zp), 0.0)
        for jj in range(start, end):  # rows i whose partner is k: their mixed row is mix(z_i, z_k)
            i = tl.load(rows_ptr + jj)
            li = tl.load(lam_ptr + i)
            zi = tl.load(z_ptr + i * C + cols, mask=cm, other=0.0).to(lk.dtype)
            di = tl.load(w_ptr + i) * (tl.exp(_mix(zi, zk, li) - tl.load(lse_ptr + i))
                                      - (cols == tl.load(y_ptr + i)).to(lk.dtype))
            acc += (1 - li) * di
        tl.store(gz_ptr + k * C + cols, acc.to(gz_ptr.dtype.element_ty), mask=cm)
    if WANT_LAM:
        tl.store(glam_ptr + k, tl.sum(dot, axis=0))


def mixed_ce_forward(logits, partner, lam, lam_scalar, target, reduction):
    z = logits.contiguous()
    B, C = z.shape
    if C == 0:
        raise ValueError("logits must have at least one class (C = 0)")
    lam_rows = _lam_rows(lam, lam_scalar, B, z)
    rows_loss = torch.empty(B, dtype=lam_rows.dtype, device=z.device)
    lse = torch.empty(B, dtype=lam_rows.dtype, device=z.device)
    if B > 0:
        _mce_fwd[(B,)](z, partner.contiguous(), lam_rows, target.contiguous(), rows_loss, lse, B, C,
                       BLOCK=_BLOCK)
    if reduction == _NONE:
        return rows_loss.to(z.dtype), lse
    total = rows_loss.double().sum()
    if reduction == _MEAN:
        total = total / B if B > 0 else torch.full((), math.nan, dtype=torch.float64, device=z.device)
    return total.to(z.dtype), lse


def mixed_ce_backward(grad_loss, logits, partner, lam, lam_scalar, target, lse, reduction, lam_grad):
    z = logits.contiguous()
    B, C = z.shape
    lam_rows = _lam_rows(lam, lam_scalar, B, z)
    w = grad_loss.to(lam_rows.dtype).reshape(-1).expand(B).contiguous()
    if reduction == _MEAN and B > 0:
        w = w / B
    grad_z = torch.empty_like(z)
    want = bool(lam_grad and lam is not None)
    per_row = torch.zeros(B, dtype=lam_rows.dtype, device=z.device)
    if B > 0:
        offsets, rows = _inverse_csr(partner.contiguous())
        _mce_bwd[(B,)](z, partner.contiguous(), lam_rows, target.contiguous(), lse.to(lam_rows.dtype).contiguous(), w,
                       offsets, rows, grad_z, per_row, C, WANT_LAM=want, BLOCK=_BLOCK)
    return grad_z, _grad_lam(per_row, lam, want, z)


# ---- uniformity_loss ------------------------------------------------------------------------------

@triton.jit
def _gram(xa, xb, ACC: tl.constexpr, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(xa, tl.trans(xb), input_precision="ieee", out_dtype=ACC)
    else:
        return tl.dot(xa, tl.trans(xb), out_dtype=ACC)


@triton.jit
def _squared_distance(g, na, nb):
    """n_a + n_b - 2 g; +inf where exactly one squared norm overflowed (not the NaN of inf - inf)."""
    one_inf = (na[:, None] == float("inf")) != (nb[None, :] == float("inf"))
    return tl.where(one_inf, float("inf"), na[:, None] + nb[None, :] - 2 * g)


@triton.jit
def _exponent(g, na, nb, t):
    return -t * tl.maximum(_squared_distance(g, na, nb), 0.0)


@triton.jit
def _uniformity_fwd(x_ptr, n_ptr, t_bits, max_ptr, sum_ptr, N, D, NB,
                    ACC: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    I = tl.program_id(0)
    J = tl.program_id(1)
    slot = I * NB + J
    if J >= I:
        t = decode(t_bits, ACC)
        a = I * BM + tl.arange(0, BM)
        b = J * BM + tl.arange(0, BM)
        d = tl.arange(0, BD)
        xa = tl.load(x_ptr + a[:, None].to(tl.int64) * D + d[None, :], mask=(a[:, None] < N) & (d[None, :] < D),
                     other=0.0)
        xb = tl.load(x_ptr + b[:, None].to(tl.int64) * D + d[None, :], mask=(b[:, None] < N) & (d[None, :] < D),
                     other=0.0)
        na = tl.load(n_ptr + a, mask=a < N, other=0.0)
        nb = tl.load(n_ptr + b, mask=b < N, other=0.0)
        g = _gram(xa, xb, ACC, IEEE)
        pair = (b[None, :] > a[:, None]) & (b[None, :] < N)
        raw = _squared_distance(g, na, nb)  # NaN is tested here: tl.maximum may drop it
        bad = tl.max(tl.max(((raw != raw) & pair).to(tl.int32), axis=1), axis=0)
        e = tl.where(pair, _exponent(g, na, nb, t), float("-inf"))
        m = tl.max(tl.max(e, axis=1), axis=0)
        safe = tl.where(m == float("-inf"), 0.0, m)
        s = tl.sum(tl.sum(tl.exp(e - safe), axis=1), axis=0)
        tl.store(max_ptr + slot, tl.where(bad > 0, float("nan"), m))
        tl.store(sum_ptr + slot, tl.where(bad > 0, float("nan"), s))
    else:
        tl.store(max_ptr + slot, tl.full((), float("-inf"), ACC))
        tl.store(sum_ptr + slot, tl.zeros((), ACC))


@triton.jit
def _uniformity_bwd(x_ptr, n_ptr, t_bits, lse_ptr, g_ptr, out_ptr, N, D,
                    ACC: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    I = tl.program_id(0)
    t = decode(t_bits, ACC)
    lse = tl.load(lse_ptr).to(ACC)
    gup = tl.load(g_ptr).to(ACC)
    a = I * BM + tl.arange(0, BM)
    d = tl.arange(0, BD)
    amask = (a[:, None] < N) & (d[None, :] < D)
    xa = tl.load(x_ptr + a[:, None].to(tl.int64) * D + d[None, :], mask=amask, other=0.0)
    na = tl.load(n_ptr + a, mask=a < N, other=0.0)
    acc = tl.zeros((BM, BD), dtype=ACC)
    r = tl.zeros((BM,), dtype=ACC)
    for j0 in range(0, N, BM):
        b = j0 + tl.arange(0, BM)
        xb = tl.load(x_ptr + b[:, None].to(tl.int64) * D + d[None, :], mask=(b[:, None] < N) & (d[None, :] < D),
                     other=0.0)
        nb = tl.load(n_ptr + b, mask=b < N, other=0.0)
        e = _exponent(_gram(xa, xb, ACC, IEEE), na, nb, t)
        keep = (b[None, :] != a[:, None]) & (b[None, :] < N)  # the diagonal is excluded by index
        p = tl.where(keep, tl.exp(tl.where(keep, e - lse, 0.0)), 0.0)
        r += tl.sum(p, axis=1)
        if IEEE:
            acc += tl.dot(p.to(xb.dtype), xb, input_precision="ieee", out_dtype=ACC)
        else:
            acc += tl.dot(p.to(xb.dtype), xb, out_dtype=ACC)
    grad = -2 * t * gup * (r[:, None] * xa.to(ACC) - acc)
    tl.store(out_ptr + a[:, None].to(tl.int64) * D + d[None, :], grad.to(out_ptr.dtype.element_ty), mask=amask)


def _uniformity_setup(x, t):
    x = x.contiguous()
    acc = opmath(x.dtype)
    if _INTERPRET and x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # no half arithmetic under the interpreter
    norms = x.to(acc).pow(2).sum(1).contiguous()
    ieee = x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    block_d = max(16, triton.next_power_of_2(max(x.shape[1], 1)))
    # A tile holds whole rows: past 1 KB per row (fp32 D > 256, fp64 D > 128) the backward's shared
    # memory exceeds a Hopper block's 227 KB (measured with ptxas for sm_90) and the launch fails.
    if not _INTERPRET and block_d * max(x.element_size(), 4) > 1024:
        raise ValueError(f"uniformity_loss: the Triton kernel keeps whole rows in shared memory and supports "
                         f"D <= {1024 // max(x.element_size(), 4)} for {x.dtype}, got D = {x.shape[1]}; "
                         f"use backend='cuda' or 'reference'")
    tl_acc = tl.float64 if acc == torch.float64 else tl.float32
    return x, norms, acc, tl_acc, ieee, block_d, bits(t, x.dtype)


def uniformity_forward(x, t):
    N, D = x.shape
    if N < 2:
        raise ValueError(f"uniformity_loss needs at least 2 rows, got N = {N}")
    orig_dtype = x.dtype
    x, norms, acc, tl_acc, ieee, block_d, t_bits = _uniformity_setup(x, t)
    nb = triton.cdiv(N, _TILE)
    tile_max = torch.empty(nb * nb, dtype=acc, device=x.device)
    tile_sum = torch.empty(nb * nb, dtype=acc, device=x.device)
    _uniformity_fwd[(nb, nb)](x, norms, t_bits, tile_max, tile_sum, N, D, nb, ACC=tl_acc, IEEE=ieee, BM=_TILE,
                              BD=block_d)
    # merge the tile partials in fp64, in tile order
    m64, s64 = tile_max.double(), tile_sum.double()
    M = m64.max()
    S = torch.where(s64 > 0, s64 * torch.exp(m64 - M), torch.zeros_like(s64)).sum()
    lse = M + torch.log(S)
    lse = torch.where(torch.isnan(m64).any() | torch.isnan(s64).any(), torch.full_like(lse, math.nan), lse)
    loss = (lse - math.log(N * (N - 1) / 2)).to(orig_dtype)
    return loss, lse.to(acc)


def uniformity_backward(grad, x, t, lse):
    N, D = x.shape
    orig_dtype = x.dtype
    x, norms, acc, tl_acc, ieee, block_d, t_bits = _uniformity_setup(x, t)
    out = torch.empty((N, D), dtype=acc, device=x.device)
    if D > 0:
        _uniformity_bwd[(triton.cdiv(N, _TILE),)](x, norms, t_bits, lse.to(acc).reshape(1), grad.to(acc).reshape(1),
                                                   out, N, D, ACC=tl_acc, IEEE=ieee, BM=_TILE, BD=block_d)
    return out.to(orig_dtype)
