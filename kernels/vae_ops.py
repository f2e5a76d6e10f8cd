"""Triton kernels of the VAE-family ops expm, symmetric_expm, ipe_transform and composite_symmetry
(spec vae.md 3.1-3.4 and 6).

Plain launch helpers, no op registration: ``pyfastlab.ops`` wraps them as ``pyfastlab::<op>_triton``.
Semantics follow the CPU kernels (csrc/cpu/vae_expm.cpp, csrc/cpu/vae_symmetric.cpp) and the shared
program csrc/include/pyfastlab/expm_engine.h:

- expm: one program per matrix, padded to NP = 16/32/64 (zero padding is exact), `tl.dot` in IEEE
  precision. The degree m (Paterson-Stockmeyer set {1, 2, 4, 6, 9, 12, 16}) and the scaling s are
  chosen per matrix inside the kernel from ||A||_1; runtime loops over q, r and s. Powers and Horner
  partials live in a per-matrix global scratch (L2-resident) so that the runtime-indexed slots work.
  The backward kernel recomputes the forward and runs the adjoint of the same products; the
  squarings' inputs E_i are recomputed from T (i squarings each: s(s+1)/2 products, s is 1-3 on
  the benchmark inputs) instead of storing s matrices.
- symmetric_expm / ipe_transform: the eigendecomposition is torch.linalg.eigh (cuSOLVER), called
  by the launcher; the kernels form Q diag(e^lam) Q^T, the factor chains and logdet, the chain
  adjoint (prefix/suffix) and the Daleckii-Krein backward. The z GEMMs are torch.matmul (cuBLAS).
- composite_symmetry: A = W G by torch.mm (cuBLAS); one program per pair runs exp(A) and exp(-A)
  and applies them; the backward program recomputes both and runs one adjoint pass in the
  direction z1^T y1_bar - y2^T z2_bar (= M_bar - N^T N_bar N^T); W_bar and G_bar by torch.mm.
Matrices with a NaN/inf entry give all-NaN outputs and gradients, without a host sync.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["expm_forward", "expm_backward", "symmetric_expm_forward", "symmetric_expm_backward",
           "ipe_transform_forward", "ipe_transform_backward", "composite_symmetry_forward",
           "composite_symmetry_backward"]

_DEGREES = (1, 2, 4, 6, 9, 12, 16)
_BLOCKS = (1, 2, 2, 3, 3, 4, 4)
_THETA = {  # vae.md 3.1
    torch.float32: (1.192093e-7, 5.978859e-4, 5.116619e-2, 0.2495289, 0.7795113, 1.461662, 2.478281),
    torch.float64: (2.220446e-16, 2.580957e-8, 3.397169e-4, 9.065656e-3, 8.957760e-2, 0.2996159, 0.7802874),
}
_SLOTS = 17  # X/P2..P4, H0..H3, E ping-pong (unused here), G x2, Pbar1..4, Xbar (as expm_engine.h)
_TABLES: dict = {}


def _padded(n: int) -> int:
    return max(16, triton.next_power_of_2(max(n, 1)))


def _tables(dtype: torch.dtype, device: torch.device):
    """(theta [7], degree [7] int32, block [7] int32, 1/k! [17]) in dtype on device, cached."""
    key = (dtype, device)
    if key not in _TABLES:
        _TABLES[key] = (torch.tensor(_THETA[dtype], dtype=dtype, device=device),
                        torch.tensor(_DEGREES, dtype=torch.int32, device=device),
                        torch.tensor(_BLOCKS, dtype=torch.int32, device=device),
                        torch.tensor([1.0 / math.factorial(k) for k in range(17)], dtype=dtype, device=device))
    return _TABLES[key]


# ---- shared device functions -----------------------------------------------------------------
@triton.jit
def _mm(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _tile(ptr, NP: tl.constexpr):
    r = tl.arange(0, NP)
    return ptr + r[:, None] * NP + r[None, :]


@triton.jit
def _eye(n, NP: tl.constexpr, ACC: tl.constexpr):
    r = tl.arange(0, NP)
    return tl.where((r[:, None] == r[None, :]) & (r[:, None] < n), 1.0, 0.0).to(ACC)


@triton.jit
def _load_matrix(ptr, n, NP: tl.constexpr, sign):
    r = tl.arange(0, NP)
    m = (r[:, None] < n) & (r[None, :] < n)
    return sign * tl.load(ptr + r[:, None] * n + r[None, :], mask=m, other=0.0)


@triton.jit
def _store_matrix(ptr, x, n, NP: tl.constexpr):
    r = tl.arange(0, NP)
    tl.store(ptr + r[:, None] * n + r[None, :], x, mask=(r[:, None] < n) & (r[None, :] < n))


@triton.jit
def _plan(a, theta_ptr, deg_ptr, blk_ptr):
    """(m, q, s, finite) from ||a||_1, as expm_plan in expm_engine.h."""
    colsum = tl.sum(tl.abs(a), axis=0)
    nu = tl.max(colsum, axis=0)
    # tl.max drops NaN (maxnumf on the GPU, np.fmax in the interpreter): a NaN column sum next to
    # finite ones would give a finite nu, so count NaN columns explicitly (all-NaN policy, vae.md 3.0).
    finite = ((nu - nu) == 0) & (tl.sum((colsum != colsum).to(tl.int32), axis=0) == 0)
    nu = tl.where(finite, nu, 0.0)
    idx = 6
    for i in tl.static_range(6, -1, -1):
        idx = tl.where(nu <= tl.load(theta_ptr + i), i, idx)
    top = tl.load(theta_ptr + 6)
    ratio = nu.to(tl.float64) / top.to(tl.float64)
    s = tl.where(nu > top, tl.ceil(tl.log2(tl.maximum(ratio, 1.0))), 0.0).to(tl.int32)
    # log2 may be off by an ulp: make sure nu 2^-s <= theta holds
    s = tl.where(nu.to(tl.float64) * tl.exp2(-(s.to(tl.float64))) > top.to(tl.float64), s + 1, s)
    s = tl.minimum(tl.maximum(s, 0), 1100)
    m = tl.load(deg_ptr + idx)
    q = tl.load(blk_ptr + idx)
    return m, q, s, finite


@triton.jit
def _scale_pow2(a, s, ACC: tl.constexpr):
    """a 2^-s exactly, in two steps so that 2^-s itself never underflows."""
    h = s // 2
    f1 = tl.exp2(-(h.to(ACC)))
    f2 = tl.exp2(-((s - h).to(ACC)))
    return (a * f1) * f2


@triton.jit
def _horner_block(Y, scratch, j, q, m, n, coef_ptr, NP: tl.constexpr, ACC: tl.constexpr):
    """B_j = sum_{i<q} c_{jq+i} P_i (P_0 = I), P_i in scratch slot i - 1."""
    b = tl.load(coef_ptr + j * q) * _eye(n, NP, ACC)
    for i in range(1, q):
        b += tl.load(coef_ptr + j * q + i) * tl.load(_tile(scratch + (i - 1) * NP * NP, NP))
    return b


@triton.jit
def _forward_program(x, scratch, n, m, q, s, coef_ptr, NP: tl.constexpr, ACC: tl.constexpr):
    """T_m(x) by Paterson-Stockmeyer, then s squarings. Stores X, P_2..P_q (slots 0..q-1) and
    H_0..H_{r-1} (slots 4..) in scratch for the adjoint; returns (E, T)."""
    r = m // q
    tl.store(_tile(scratch, NP), x)
    p = x
    for k in range(2, q + 1):
        p = _mm(p, x)
        tl.store(_tile(scratch + (k - 1) * NP * NP, NP), p)
    y = p
    h = _horner_block(y, scratch, r - 1, q, m, n, coef_ptr, NP, ACC) + tl.load(coef_ptr + m) * y
    tl.store(_tile(scratch + (4 + r - 1) * NP * NP, NP), h)
    for jj in range(0, r - 1):
        j = r - 2 - jj
        h = _mm(y, h) + _horner_block(y, scratch, j, q, m, n, coef_ptr, NP, ACC)
        tl.store(_tile(scratch + (4 + j) * NP * NP, NP), h)
    e = h
    for _i in range(0, s):
        e = _mm(e, e)
    return e, h


@triton.jit
def _adjoint_program(g, t, scratch, n, m, q, s, coef_ptr, NP: tl.constexpr, ACC: tl.constexpr):
    """A_bar for upstream g of E = T^(2^s), T = T_m(X), X = A 2^-s: reverse mode through the
    forward's products (scratch as _forward_program left it)."""
    r = m // q
    for ii in range(0, s):
        i = s - 1 - ii
        e = t
        for _t in range(0, i):
            e = _mm(e, e)
        et = tl.trans(e)
        g = _mm(g, et) + _mm(et, g)
    zero = tl.zeros((NP, NP), dtype=ACC)
    pbar = scratch + 12 * NP * NP
    for k in range(0, 4):
        tl.store(_tile(pbar + k * NP * NP, NP), zero)
    y = tl.load(_tile(scratch + (q - 1) * NP * NP, NP))
    ybar = zero
    for j in range(0, r):
        for i in range(1, q):
            ptr = _tile(pbar + (i - 1) * NP * NP, NP)
            tl.store(ptr, tl.load(ptr) + tl.load(coef_ptr + j * q + i) * g)
        if j == r - 1:
            ybar += tl.load(coef_ptr + m) * g
        else:
            h_next = tl.load(_tile(scratch + (4 + j + 1) * NP * NP, NP))
            ybar += _mm(g, tl.trans(h_next))
            g = _mm(tl.trans(y), g)
    ptr_q = _tile(pbar + (q - 1) * NP * NP, NP)
    tl.store(ptr_q, tl.load(ptr_q) + ybar)
    x = tl.load(_tile(scratch, NP))
    xbar = zero
    for kk in range(0, q - 1):
        k = q - kk  # q .. 2
        pk_bar = tl.load(_tile(pbar + (k - 1) * NP * NP, NP))
        ptr = _tile(pbar + (k - 2) * NP * NP, NP)
        tl.store(ptr, tl.load(ptr) + _mm(pk_bar, tl.trans(x)))
        xbar += _mm(tl.trans(tl.load(_tile(scratch + (k - 2) * NP * NP, NP))), pk_bar)
    xbar += tl.load(_tile(pbar, NP))
    return _scale_pow2(xbar, s, ACC)


# ---- expm ------------------------------------------------------------------------------------
@triton.jit
def _expm_fwd(a_ptr, out_ptr, scratch_ptr, theta_ptr, deg_ptr, blk_ptr, coef_ptr, n,
              NP: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    a = _load_matrix(a_ptr + b * n * n, n, NP, 1.0).to(ACC)
    m, q, s, finite = _plan(a, theta_ptr, deg_ptr, blk_ptr)
    x = _scale_pow2(a, s, ACC)
    e, _t = _forward_program(x, scratch_ptr + b * 17 * NP * NP, n, m, q, s, coef_ptr, NP, ACC)
    e = tl.where(finite, e, float("nan"))
    _store_matrix(out_ptr + b * n * n, e, n, NP)


@triton.jit
def _expm_bwd(g_ptr, a_ptr, out_ptr, scratch_ptr, theta_ptr, deg_ptr, blk_ptr, coef_ptr, n,
              NP: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    a = _load_matrix(a_ptr + b * n * n, n, NP, 1.0).to(ACC)
    m, q, s, finite = _plan(a, theta_ptr, deg_ptr, blk_ptr)
    scratch = scratch_ptr + b * 17 * NP * NP
    _e, t = _forward_program(_scale_pow2(a, s, ACC), scratch, n, m, q, s, coef_ptr, NP, ACC)
    g = _load_matrix(g_ptr + b * n * n, n, NP, 1.0).to(ACC)
    abar = _adjoint_program(g, t, scratch, n, m, q, s, coef_ptr, NP, ACC)
    abar = tl.where(finite, abar, float("nan"))
    _store_matrix(out_ptr + b * n * n, abar, n, NP)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _batch(a: torch.Tensor) -> int:
    n = a.shape[-1]
    return 0 if n == 0 else a.numel() // (n * n)


def _scratch(batch: int, NP: int, a: torch.Tensor) -> torch.Tensor:
    return torch.empty((batch, _SLOTS, NP, NP), dtype=a.dtype, device=a.device)


def expm_forward(a: torch.Tensor) -> torch.Tensor:
    a = a.contiguous()
    out = torch.empty_like(a)
    n, batch = a.shape[-1], _batch(a)
    if batch == 0:
        return out
    NP = _padded(n)
    theta, deg, blk, coef = _tables(a.dtype, a.device)
    _expm_fwd[(batch,)](a, out, _scratch(batch, NP, a), theta, deg, blk, coef, n, NP=NP, ACC=_acc(a.dtype),
                        num_warps=4)
    return out


def expm_backward(grad: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    a, grad = a.contiguous(), grad.contiguous()
    out = torch.empty_like(a)
    n, batch = a.shape[-1], _batch(a)
    if batch == 0:
        return out
    NP = _padded(n)
    theta, deg, blk, coef = _tables(a.dtype, a.device)
    _expm_bwd[(batch,)](grad, a, out, _scratch(batch, NP, a), theta, deg, blk, coef, n, NP=NP, ACC=_acc(a.dtype),
                        num_warps=4)
    return out


# ---- symmetric_expm --------------------------------------------------------------------------
@triton.jit
def _reconstruct(q_ptr, lam_ptr, out_ptr, n, NP: tl.constexpr, ACC: tl.constexpr):
    """E = Q diag(e^lam) Q^T (NaN lam -> NaN E)."""
    b = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, NP)
    qm = _load_matrix(q_ptr + b * n * n, n, NP, 1.0).to(ACC)
    el = tl.exp(tl.load(lam_ptr + b * n + r, mask=r < n, other=0.0).to(ACC))
    el = tl.where(r < n, el, 0.0)
    _store_matrix(out_ptr + b * n * n, _mm(qm * el[None, :], tl.trans(qm)), n, NP)


@triton.jit
def _dk_weight(li, lj):
    d = (li - lj) / 2
    ad = tl.abs(d)
    mean = (li + lj) / 2
    d2 = d * d
    series = tl.exp(mean) * (1 + d2 / 6 + d2 * d2 / 120)
    # sinh(d)/d for 1e-3 <= |d| < 1 by its Taylor series to d^16/17! (truncation < 1e-17), not
    # (e^d - e^-d)/2d: that cancels (3e-5 relative at d = 1e-3 in fp32, worse with the GPU's
    # approximate exp), unlike the CPU/CUDA kernels' sinh(d)/d (vae_ops.h dk_weight).
    sinhc = 1 + d2 * (1 / 6 + d2 * (1 / 120 + d2 * (1 / 5040 + d2 * (1 / 362880 + d2 * (
        1 / 39916800 + d2 * (1 / 6227020800 + d2 * (1 / 1307674368000 + d2 * (1 / 355687428096000))))))))
    mid = tl.exp(mean) * sinhc
    safe_diff = tl.where(ad < 1, 1.0, li - lj)
    far = (tl.exp(li) - tl.exp(lj)) / safe_diff
    return tl.where(ad < 1e-3, series, tl.where(ad < 1, mid, far))


@triton.jit
def _dk_backward(g_ptr, q_ptr, lam_ptr, diag_ptr, out_ptr, n, HAS_DIAG: tl.constexpr, NP: tl.constexpr,
                 ACC: tl.constexpr):
    """w_bar = Q (F o (Q^T sym(G) Q)) Q^T (+ diag[b] I)."""
    b = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, NP)
    g = _load_matrix(g_ptr + b * n * n, n, NP, 1.0).to(ACC)
    g = (g + tl.trans(g)) / 2
    qm = _load_matrix(q_ptr + b * n * n, n, NP, 1.0).to(ACC)
    lam = tl.load(lam_ptr + b * n + r, mask=r < n, other=0.0).to(ACC)
    h = _mm(tl.trans(qm), _mm(g, qm)) * _dk_weight(lam[:, None], lam[None, :])
    out = _mm(_mm(qm, h), tl.trans(qm))
    if HAS_DIAG:
        out += tl.load(diag_ptr + b).to(ACC) * _eye(n, NP, ACC)
    _store_matrix(out_ptr + b * n * n, out, n, NP)


def _eigh(w: torch.Tensor):
    """(Q, lam) of sym(w) by torch.linalg.eigh (cuSOLVER / LAPACK); lam NaN where w is not finite."""
    s = (w + w.transpose(-1, -2)) / 2
    finite = torch.isfinite(s).flatten(-2).all(-1)
    lam, q = torch.linalg.eigh(torch.where(finite[..., None, None], s, 0.0))
    lam = torch.where(finite[..., None], lam, math.nan)
    return q.contiguous(), lam.contiguous()


def symmetric_expm_forward(w: torch.Tensor):
    w = w.contiguous()
    n, batch = w.shape[-1], _batch(w)
    if batch == 0:
        return torch.empty_like(w), torch.empty_like(w), w.new_empty(w.shape[:-1])
    q, lam = _eigh(w)
    out = torch.empty_like(w)
    _reconstruct[(batch,)](q, lam, out, n, NP=_padded(n), ACC=_acc(w.dtype), num_warps=4)
    return out, q, lam


def _dk(grad, q, lam, diag=None):
    n, batch = q.shape[-1], _batch(q)
    out = torch.empty_like(q)
    if batch == 0:
        return out
    _dk_backward[(batch,)](grad.contiguous(), q.contiguous(), lam.contiguous(), diag if diag is not None else q, out,
                           n, HAS_DIAG=diag is not None, NP=_padded(n), ACC=_acc(q.dtype), num_warps=4)
    return out


def symmetric_expm_backward(grad, q, lam):
    return _dk(grad, q, lam)


# ---- ipe_transform ---------------------------------------------------------------------------
@triton.jit
def _chain(x_ptr, w_ptr, e_ptr, logdet_ptr, K, n, NP: tl.constexpr, ACC: tl.constexpr):
    """E_u = X_u1 ... X_uK and logdet[u] = sum_k trace(w_uk), one program per unit."""
    u = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, NP)
    e = _eye(n, NP, ACC)
    ld = tl.zeros((NP,), dtype=ACC)
    for k in range(0, K):
        base = (u * K + k) * n * n
        e = _mm(e, _load_matrix(x_ptr + base, n, NP, 1.0).to(ACC))
        ld += tl.load(w_ptr + base + r * (n + 1), mask=r < n, other=0.0).to(ACC)
    _store_matrix(e_ptr + u * n * n, e, n, NP)
    tl.store(logdet_ptr + u, tl.sum(ld, axis=0))


@triton.jit
def _chain_adjoint(x_ptr, ebar_ptr, xbar_ptr, suffix_ptr, K, n, NP: tl.constexpr, ACC: tl.constexpr):
    """X_bar_uk = L_uk^T E_bar_u R_uk^T (prefix L, suffix R products), one program per unit."""
    u = tl.program_id(0).to(tl.int64)
    suf = suffix_ptr + u * K * NP * NP
    rk = _eye(n, NP, ACC)
    tl.store(_tile(suf + (K - 1) * NP * NP, NP), rk)
    for kk in range(0, K - 1):
        k = K - 2 - kk
        rk = _mm(_load_matrix(x_ptr + (u * K + k + 1) * n * n, n, NP, 1.0).to(ACC), rk)
        tl.store(_tile(suf + k * NP * NP, NP), rk)
    ebar = _load_matrix(ebar_ptr + u * n * n, n, NP, 1.0).to(ACC)
    left = _eye(n, NP, ACC)
    for k in range(0, K):
        rk = tl.load(_tile(suf + k * NP * NP, NP))
        _store_matrix(xbar_ptr + (u * K + k) * n * n, _mm(tl.trans(left), _mm(ebar, tl.trans(rk))), n, NP)
        left = _mm(left, _load_matrix(x_ptr + (u * K + k) * n * n, n, NP, 1.0).to(ACC))


def ipe_transform_forward(z: torch.Tensor, w: torch.Tensor):
    z, w = z.contiguous(), w.contiguous()
    U, K, n = w.shape[0], w.shape[1], w.shape[-1]
    x, q, lam = symmetric_expm_forward(w)
    e = torch.empty((U, n, n), dtype=w.dtype, device=w.device)
    logdet = torch.zeros((U,), dtype=w.dtype, device=w.device)
    if U > 0 and n > 0:
        _chain[(U,)](x, w, e, logdet, K, n, NP=_padded(n), ACC=_acc(w.dtype), num_warps=4)
    z_hat = torch.matmul(z, e) if U > 0 else z.new_empty((0, z.shape[0], n))
    return z_hat, logdet, x, e, q, lam


def ipe_transform_backward(gzh, gld, z, x, e, q, lam, need_z: bool, need_w: bool):
    U, K, n = x.shape[0], x.shape[1], x.shape[-1]
    B = z.shape[0]
    gz = gw = z.new_empty((0,))
    if need_z:
        gz = (torch.mm(gzh.permute(1, 0, 2).reshape(B, U * n), e.transpose(1, 2).reshape(U * n, n))
              if U > 0 else torch.zeros_like(z))
    if need_w:
        ebar = torch.matmul(z.t(), gzh).contiguous()
        xbar = torch.empty_like(x)
        if U > 0 and K > 0 and n > 0:
            NP = _padded(n)
            suffix = torch.empty((U, K, NP, NP), dtype=x.dtype, device=x.device)
            _chain_adjoint[(U,)](x.contiguous(), ebar, xbar, suffix, K, n, NP=NP, ACC=_acc(x.dtype), num_warps=4)
        diag = gld.reshape(U, 1).expand(U, K).contiguous()
        gw = _dk(xbar, q, lam, diag)
    return gz, gw


# ---- composite_symmetry ----------------------------------------------------------------------
@triton.jit
def _composite_fwd(a_ptr, z1_ptr, z2_ptr, y1_ptr, y2_ptr, scratch_ptr, theta_ptr, deg_ptr, blk_ptr, coef_ptr, n,
                   NP: tl.constexpr, ACC: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, NP)
    a = _load_matrix(a_ptr + p * n * n, n, NP, 1.0).to(ACC)
    m, q, s, finite = _plan(a, theta_ptr, deg_ptr, blk_ptr)  # ||-A||_1 = ||A||_1
    x = _scale_pow2(a, s, ACC)
    scratch = scratch_ptr + p * 17 * NP * NP
    em, _t = _forward_program(x, scratch, n, m, q, s, coef_ptr, NP, ACC)
    en, _t = _forward_program(-x, scratch, n, m, q, s, coef_ptr, NP, ACC)
    z1 = tl.load(z1_ptr + p * n + r, mask=r < n, other=0.0).to(ACC)
    z2 = tl.load(z2_ptr + p * n + r, mask=r < n, other=0.0).to(ACC)
    y1 = tl.where(finite, tl.sum(z1[:, None] * em, axis=0), float("nan"))
    y2 = tl.where(finite, tl.sum(z2[:, None] * en, axis=0), float("nan"))
    tl.store(y1_ptr + p * n + r, y1, mask=r < n)
    tl.store(y2_ptr + p * n + r, y2, mask=r < n)


@triton.jit
def _composite_bwd(a_ptr, z1_ptr, z2_ptr, g1_ptr, g2_ptr, gz1_ptr, gz2_ptr, ga_ptr, scratch_ptr, theta_ptr, deg_ptr,
                   blk_ptr, coef_ptr, n, NEED_A: tl.constexpr, NP: tl.constexpr, ACC: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, NP)
    a = _load_matrix(a_ptr + p * n * n, n, NP, 1.0).to(ACC)
    m, q, s, finite = _plan(a, theta_ptr, deg_ptr, blk_ptr)
    x = _scale_pow2(a, s, ACC)
    scratch = scratch_ptr + p * 17 * NP * NP
    z1 = tl.load(z1_ptr + p * n + r, mask=r < n, other=0.0).to(ACC)
    z2 = tl.load(z2_ptr + p * n + r, mask=r < n, other=0.0).to(ACC)
    g1 = tl.load(g1_ptr + p * n + r, mask=r < n, other=0.0).to(ACC)
    g2 = tl.load(g2_ptr + p * n + r, mask=r < n, other=0.0).to(ACC)
    en, _t = _forward_program(-x, scratch, n, m, q, s, coef_ptr, NP, ACC)
    y2 = tl.sum(z2[:, None] * en, axis=0)
    gz2 = tl.sum(en * g2[None, :], axis=1)  # y2_bar N^T
    em, t = _forward_program(x, scratch, n, m, q, s, coef_ptr, NP, ACC)
    gz1 = tl.sum(em * g1[None, :], axis=1)
    tl.store(gz1_ptr + p * n + r, tl.where(finite, gz1, float("nan")), mask=r < n)
    tl.store(gz2_ptr + p * n + r, tl.where(finite, gz2, float("nan")), mask=r < n)
    if NEED_A:
        direction = z1[:, None] * g1[None, :] - y2[:, None] * gz2[None, :]
        abar = _adjoint_program(direction, t, scratch, n, m, q, s, coef_ptr, NP, ACC)
        _store_matrix(ga_ptr + p * n * n, tl.where(finite, abar, float("nan")), n, NP)


def _combine(codebook, weights):
    K, n = codebook.shape[0], codebook.shape[-1]
    return torch.mm(weights, codebook.reshape(K, n * n)).reshape(weights.shape[0], n, n)


def composite_symmetry_forward(codebook, weights, z1, z2):
    a = _combine(codebook.contiguous(), weights.contiguous())
    z1, z2 = z1.contiguous(), z2.contiguous()
    y1, y2 = torch.empty_like(z1), torch.empty_like(z2)
    P, n = a.shape[0], a.shape[-1]
    if P > 0 and n > 0:
        NP = _padded(n)
        theta, deg, blk, coef = _tables(a.dtype, a.device)
        _composite_fwd[(P,)](a, z1, z2, y1, y2, _scratch(P, NP, a), theta, deg, blk, coef, n, NP=NP,
                             ACC=_acc(a.dtype), num_warps=4)
    return y1, y2, a


def composite_symmetry_backward(g1, g2, codebook, weights, z1, z2, a, need_codebook, need_weights, need_z1, need_z2):
    P, n, K = a.shape[0], a.shape[-1], codebook.shape[0]
    need_a = need_codebook or need_weights
    gz1, gz2 = torch.zeros_like(z1), torch.zeros_like(z2)
    ga = torch.zeros_like(a)
    if P > 0 and n > 0:
        NP = _padded(n)
        theta, deg, blk, coef = _tables(a.dtype, a.device)
        _composite_bwd[(P,)](a.contiguous(), z1.contiguous(), z2.contiguous(), g1.contiguous(), g2.contiguous(), gz1,
                             gz2, ga, _scratch(P, NP, a), theta, deg, blk, coef, n, NEED_A=need_a, NP=NP,
                             ACC=_acc(a.dtype), num_warps=4)
    empty = a.new_empty((0,))
    gw = torch.mm(ga.reshape(P, n * n), codebook.reshape(K, n * n).t()) if need_weights else empty
    gg = torch.mm(weights.t(), ga.reshape(P, n * n)).reshape(K, n, n) if need_codebook else empty
    return gg, gw, (gz1 if need_z1 else empty), (gz2 if need_z2 else empty)
