"""Triton kernels of the CKA ops (linear_cka, cka_matrix; spec distill.md 3.1-3.6, 6.3).

Plain launch helpers, no op registration: ``pyfastlab.ops`` wraps them as ``pyfastlab::<op>_triton``.
Outputs and edge cases follow the CPU kernels (csrc/cpu/cka.cpp).

Layout of the work (the simpler of the two designs of 6.3, stated here): a centring kernel writes
Xc in opmath with exact column means (centre first); the n x n Grams and every other GEMM are
torch matmuls (cuBLAS on a GPU); a reduction kernel, one program per problem, applies the
projection C(.) tile by tile, accumulates <U,V>, ||U||^2 and ||V||^2 in a fixed tile order
(deterministic) and, when the backward needs them, sweeps again to write the normalised Grams.
The backward forms M = coef (P - c Q) with an elementwise kernel, then one bmm with Xc. The biased
feature form (p, q small against n) is the same centring kernel plus torch matmuls and norms.

Under ``TRITON_INTERPRET=1`` (set before triton is imported) the same helpers run on CPU tensors;
half-precision inputs are upcast first there (the interpreter has no bf16 arithmetic).
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ._common import INTERPRET as _INTERPRET, opmath as _opmath

__all__ = ["linear_cka_forward", "linear_cka_backward", "cka_matrix_forward", "cka_matrix_backward"]

# Interpreted programs are numpy calls: bigger tiles mean fewer of them.
BLOCK_D = 256 if _INTERPRET else 64
BLOCK_ROWS = 256 if _INTERPRET else 32
TILE = 128 if _INTERPRET else 64
ELEMWISE_BLOCK = 65536 if _INTERPRET else 1024


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def use_gram_form(n: int, p: int, q: int, debiased: bool) -> bool:
    return debiased or n * (p + q) <= p * p + q * q + p * q


@triton.jit
def _centre_kernel(x_ptr, out_ptr, n, d, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """Columns [pid_d * BLOCK_D, ...) of problem pid_b: column means of x - x_0 over all n rows, then
    Xc (shifted by the first row: a constant column is exactly 0 at any magnitude)."""
    pid_b, pid_d = tl.program_id(0).to(tl.int64), tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < d
    base = pid_b * n * d
    first = tl.load(x_ptr + base + cols, mask=col_ok, other=0.0).to(ACC)
    total = tl.zeros([BLOCK_D], dtype=ACC)
    for r0 in range(0, n, BLOCK_ROWS):
        rows = r0 + tl.arange(0, BLOCK_ROWS)
        ok = (rows[:, None] < n) & col_ok[None, :]
        offs = base + rows[:, None].to(tl.int64) * d + cols[None, :]
        shifted = tl.load(x_ptr + offs, mask=ok, other=0.0).to(ACC) - first[None, :]
        total += tl.sum(tl.where(ok, shifted, 0.0), axis=0)
    mean = total / n
    for r0 in range(0, n, BLOCK_ROWS):
        rows = r0 + tl.arange(0, BLOCK_ROWS)
        ok = (rows[:, None] < n) & col_ok[None, :]
        offs = base + rows[:, None].to(tl.int64) * d + cols[None, :]
        xc = (tl.load(x_ptr + offs, mask=ok, other=0.0).to(ACC) - first[None, :]) - mean[None, :]
        tl.store(out_ptr + offs, xc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _diag_sum(k_ptr, n, ACC: tl.constexpr, TILE: tl.constexpr):
    """S = sum_i Kc_ii of one problem (k_ptr at its start)."""
    total = tl.zeros([TILE], dtype=ACC)
    for i0 in range(0, n, TILE):
        i = i0 + tl.arange(0, TILE)
        total += tl.load(k_ptr + i.to(tl.int64) * (n + 1), mask=i < n, other=0.0).to(ACC)
    return tl.sum(total, axis=0)


@triton.jit
def _projected_tile(k_ptr, rows, cols, n, total, DEBIASED: tl.constexpr, ACC: tl.constexpr):
    """Tile of C(K) (rows x cols) from the centred Gram; zero outside [n, n]."""
    ok = (rows[:, None] < n) & (cols[None, :] < n)
    kc = tl.load(k_ptr + rows[:, None].to(tl.int64) * n + cols[None, :], mask=ok, other=0.0).to(ACC)
    if DEBIASED:
        s_i = tl.load(k_ptr + rows.to(tl.int64) * (n + 1), mask=rows < n, other=0.0).to(ACC)
        s_j = tl.load(k_ptr + cols.to(tl.int64) * (n + 1), mask=cols < n, other=0.0).to(ACC)
        u = kc + (s_i[:, None] + s_j[None, :]) / (n - 2) - total / ((n - 1) * (n - 2))
        kc = tl.where(ok & (rows[:, None] != cols[None, :]), u, 0.0)
    return kc, ok


@triton.jit
def _stats_kernel(kx_ptr, ky_ptr, stats_ptr, ux_ptr, uy_ptr, n, PAIR: tl.constexpr, SAVE: tl.constexpr,
                  DEBIASED: tl.constexpr, ACC: tl.constexpr, TILE: tl.constexpr):
    """One problem: (beta_x, beta_y, cka) into stats [3]; with SAVE, C(K)/beta into ux (uy)."""
    pid = tl.program_id(0).to(tl.int64)
    kx, ky = kx_ptr + pid * n * n, ky_ptr + pid * n * n
    tx = _diag_sum(kx, n, ACC, TILE)
    ty = _diag_sum(ky, n, ACC, TILE) if PAIR else tx
    uv = tl.zeros([TILE, TILE], dtype=ACC)
    uu = tl.zeros([TILE, TILE], dtype=ACC)
    vv = tl.zeros([TILE, TILE], dtype=ACC)
    for i0 in range(0, n, TILE):
        rows = i0 + tl.arange(0, TILE)
        for j0 in range(0, n, TILE):
            cols = j0 + tl.arange(0, TILE)
            u, _ = _projected_tile(kx, rows, cols, n, tx, DEBIASED, ACC)
            uu += u * u
            if PAIR:
                v, _ = _projected_tile(ky, rows, cols, n, ty, DEBIASED, ACC)
                uv += u * v
                vv += v * v
    bx = tl.sqrt(tl.sum(tl.sum(uu, axis=1), axis=0))
    by = tl.sqrt(tl.sum(tl.sum(vv, axis=1), axis=0))
    a = tl.sum(tl.sum(uv, axis=1), axis=0)
    degenerate = (bx == 0) | (by == 0)
    cka = tl.where(degenerate, float("nan"), a / tl.where(degenerate, 1.0, bx * by))
    tl.store(stats_ptr + pid * 3, bx.to(stats_ptr.dtype.element_ty))
    tl.store(stats_ptr + pid * 3 + 1, by.to(stats_ptr.dtype.element_ty))
    tl.store(stats_ptr + pid * 3 + 2, cka.to(stats_ptr.dtype.element_ty))
    if SAVE:
        sx = tl.where(bx == 0, 0.0, 1.0 / tl.where(bx == 0, 1.0, bx))
        sy = tl.where(by == 0, 0.0, 1.0 / tl.where(by == 0, 1.0, by))
        for i0 in range(0, n, TILE):
            rows = i0 + tl.arange(0, TILE)
            for j0 in range(0, n, TILE):
                cols = j0 + tl.arange(0, TILE)
                offs = pid * n * n + rows[:, None].to(tl.int64) * n + cols[None, :]
                u, ok = _projected_tile(kx, rows, cols, n, tx, DEBIASED, ACC)
                tl.store(ux_ptr + offs, (u * sx).to(ux_ptr.dtype.element_ty), mask=ok)
                if PAIR:
                    v, _ = _projected_tile(ky, rows, cols, n, ty, DEBIASED, ACC)
                    tl.store(uy_ptr + offs, (v * sy).to(uy_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _combine_kernel(p_ptr, q_ptr, c_ptr, coef_ptr, out_ptr, per, BLOCK: tl.constexpr):
    """M = coef_b (P - c_b Q) for problem pid_b; coef_b == 0 (degenerate) gives an exact 0."""
    pid_b, pid = tl.program_id(0).to(tl.int64), tl.program_id(1)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    ok = idx < per
    offs = pid_b * per + idx
    a = tl.load(coef_ptr + pid_b)
    c = tl.load(c_ptr + pid_b)
    m = a * (tl.load(p_ptr + offs, mask=ok, other=0.0) - c * tl.load(q_ptr + offs, mask=ok, other=0.0))
    tl.store(out_ptr + offs, tl.where(a == 0, 0.0, m), mask=ok)


def _centre(x: torch.Tensor) -> torch.Tensor:
    """Xc [B, n, d] in opmath of x [B, n, d]."""
    if _INTERPRET and x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=_opmath(x.dtype), device=x.device)
    if x.numel():
        grid = (x.shape[0], triton.cdiv(x.shape[2], BLOCK_D))
        _centre_kernel[grid](x, out, x.shape[1], x.shape[2], ACC=_tl_acc(out.dtype), BLOCK_D=BLOCK_D,
                             BLOCK_ROWS=BLOCK_ROWS)
    return out


def _gram(xc: torch.Tensor) -> torch.Tensor:
    return torch.bmm(xc, xc.transpose(1, 2))


def _stats(kx, ky, debiased: bool, save: bool):
    """stats [B, 3] and, with save, the normalised projected Grams (ky None: one side, beta in column 0)."""
    problems, n = kx.shape[0], kx.shape[1]
    stats = torch.empty(problems, 3, dtype=kx.dtype, device=kx.device)
    ux = torch.empty_like(kx) if save else kx
    uy = torch.empty_like(ky) if save and ky is not None else ux
    if problems:
        _stats_kernel[(problems,)](kx, kx if ky is None else ky, stats, ux, uy, n, PAIR=ky is not None, SAVE=save,
                                   DEBIASED=debiased, ACC=_tl_acc(kx.dtype), TILE=TILE)
    return stats, ux, uy


def _combine(p, q, c, coef) -> torch.Tensor:
    out = torch.empty_like(p)
    per = p[0].numel() if p.shape[0] else 0
    if p.shape[0] and per:
        grid = (p.shape[0], triton.cdiv(per, ELEMWISE_BLOCK))
        _combine_kernel[grid](p, q, c.contiguous(), coef.contiguous(), out, per, BLOCK=ELEMWISE_BLOCK)
    return out


def _feature_forward(x, y):
    xc, yc = _centre(x), _centre(y)
    sq = lambda t: t.square().sum((1, 2))
    a = sq(yc.transpose(1, 2) @ xc)
    bx, by = sq(xc.transpose(1, 2) @ xc).sqrt(), sq(yc.transpose(1, 2) @ yc).sqrt()
    den = bx * by
    cka = torch.where(den == 0, torch.full_like(a, float("nan")), a / den)
    return cka.to(x.dtype), torch.stack([bx, by, cka], 1)


def _feature_backward(grad, x, y, stats, need_x, need_y):
    xc, yc = _centre(x), _centre(y)
    bx, by, cka = stats.unbind(1)
    g = grad.to(stats.dtype)
    degenerate = (bx == 0) | (by == 0)
    zero = torch.zeros_like(g)
    cross = yc.transpose(1, 2) @ xc

    def side(own, other, cross_other_own, beta_own):
        a = torch.where(degenerate, zero, 2 * g / (bx * by))[:, None, None]
        b = torch.where(degenerate, zero, -2 * g * cka / (beta_own * beta_own))[:, None, None]
        return other @ cross_other_own * a + own @ (own.transpose(1, 2) @ own) * b

    gx = side(xc, yc, cross, bx).to(x.dtype) if need_x else x.new_empty(0)
    gy = side(yc, xc, cross.transpose(1, 2), by).to(y.dtype) if need_y else y.new_empty(0)
    return gx, gy


def linear_cka_forward(x, y, debiased: bool, save: bool):
    """(cka [B], stats [B, 3], u_hat, v_hat) as the compiled op (u_hat, v_hat [0] unless saved)."""
    batch, n, p = x.shape
    if not use_gram_form(n, p, y.shape[2], debiased):
        cka, stats = _feature_forward(x, y)
        empty = stats.new_empty(0)
        return cka, stats, empty, empty.clone()
    stats, u_hat, v_hat = _stats(_gram(_centre(x)), _gram(_centre(y)), debiased, save)
    if not save:
        u_hat, v_hat = stats.new_empty(0), stats.new_empty(0)
    return stats[:, 2].to(x.dtype, copy=True), stats, u_hat, v_hat


def linear_cka_backward(grad, x, y, stats, u_hat, v_hat, need_x: bool, need_y: bool):
    if u_hat.numel() == 0:  # feature form (or an empty batch, which it handles alike)
        return _feature_backward(grad, x, y, stats, need_x, need_y)
    bx, by, cka = stats.unbind(1)
    g = grad.to(stats.dtype)
    degenerate = (bx == 0) | (by == 0)
    zero = torch.zeros_like(g)
    gx = gy = None
    if need_x:
        gx = torch.bmm(_combine(v_hat, u_hat, cka, torch.where(degenerate, zero, 2 * g / bx)), _centre(x)).to(x.dtype)
    if need_y:
        gy = torch.bmm(_combine(u_hat, v_hat, cka, torch.where(degenerate, zero, 2 * g / by)), _centre(y)).to(y.dtype)
    return (gx if need_x else x.new_empty(0)), (gy if need_y else y.new_empty(0))


def _normalised_grams(layers, debiased: bool):
    grams = torch.stack([_gram(_centre(t.unsqueeze(0)))[0] for t in layers])
    stats, stack, _ = _stats(grams, None, debiased, save=True)
    return stack, stats[:, 0].contiguous()


def _degenerate(beta_x, beta_y):
    return (beta_x == 0)[:, None] | (beta_y == 0)[None, :]


def cka_matrix_forward(xs, ys, debiased: bool):
    gx, beta_x = _normalised_grams(xs, debiased)
    gy, beta_y = _normalised_grams(ys, debiased)
    cka = gx.flatten(1) @ gy.flatten(1).t()
    cka = torch.where(_degenerate(beta_x, beta_y), torch.full_like(cka, float("nan")), cka)
    return cka.to(xs[0].dtype), gx, gy, beta_x, beta_y


def _layer_gradients(layers, grad, cka, own, other, beta_own, beta_other):
    """dX_l = (2/beta_l)(sum_m G_lm V_hat_m - (sum_m G_lm CKA_lm) U_hat_l) Xc_l; degenerate pairs add nothing."""
    degenerate = _degenerate(beta_own, beta_other)
    g = torch.where(degenerate, torch.zeros_like(grad, dtype=own.dtype), grad.to(own.dtype))
    c = (g * torch.where(degenerate, torch.zeros_like(g), cka.to(own.dtype))).sum(1)
    w = (g @ other.flatten(1)).view(own.shape)
    m = _combine(w, own, c, torch.where(beta_own == 0, torch.zeros_like(beta_own), 2 / beta_own))
    return [(m[l] @ _centre(t.unsqueeze(0))[0]).to(t.dtype) for l, t in enumerate(layers)]


def cka_matrix_backward(grad, xs, ys, cka, gx, gy, beta_x, beta_y, need_x: bool, need_y: bool):
    grad_xs = _layer_gradients(xs, grad, cka, gx, gy, beta_x, beta_y) if need_x else []
    grad_ys = _layer_gradients(ys, grad.t(), cka.t(), gy, gx, beta_y, beta_x) if need_y else []
    return grad_xs, grad_ys
