"""Pure-PyTorch references for linear CKA, written from distill.md sections 3.1-3.6.

`linear_cka` and `cka_matrix` are the oracles: centre-first Gram form, both estimators, the
degenerate-side rule of 3.4 (NaN value, zero gradient), differentiable by autograd.
`linear_cka_eager` is the H-matrix chain a user would write by hand (H K H), the benchmark baseline.
"""
from __future__ import annotations

import torch
from torch import Tensor


def centred_gram(x: Tensor) -> Tensor:
    """Kc = Xc Xc^T over the last two dims, features centred before the product (shifted by the first
    row first, so that a constant column is exactly 0 whatever its magnitude)."""
    shifted = x - x[..., :1, :]
    xc = shifted - shifted.mean(dim=-2, keepdim=True)
    return xc @ xc.transpose(-1, -2)


def project(kc: Tensor, debiased: bool) -> Tensor:
    """C(K) of 3.1 from a centred Gram: identity (biased, Kc = HKH) or U-centring (debiased)."""
    if not debiased:
        return kc
    n = kc.shape[-1]
    s = torch.diagonal(kc, dim1=-2, dim2=-1)
    total = s.sum(-1, keepdim=True)[..., None]
    u = kc + (s[..., :, None] + s[..., None, :]) / (n - 2) - total / ((n - 1) * (n - 2))
    eye = torch.eye(n, dtype=torch.bool, device=kc.device)
    return u.masked_fill(eye, 0.0)


def _safe_ratio(a: Tensor, bx2: Tensor, by2: Tensor) -> Tensor:
    """a / sqrt(bx2 by2); NaN where a side has zero norm, with a zero (never NaN) gradient there."""
    den2 = bx2 * by2
    ok = den2 != 0
    return torch.where(ok, a * torch.rsqrt(torch.where(ok, den2, torch.ones_like(den2))),
                       torch.full_like(a, float("nan")))


def exact_pair(cka: Tensor, n: int, debiased: bool) -> Tensor:
    """3.4: with n == 2 rows both centred Grams are multiples of [[1, -1], [-1, 1]], so a
    non-degenerate biased CKA is exactly 1 (rounding would give 1 +- ulp); NaN stays NaN."""
    if n != 2 or debiased:
        return cka
    return torch.where(torch.isnan(cka), cka, torch.ones_like(cka))


def linear_cka(x: Tensor, y: Tensor, *, debiased: bool = False) -> Tensor:
    """CKA = <C(Kx), C(Ky)> / (||C(Kx)|| ||C(Ky)||) per leading index; x [..., n, p], y [..., n, q]."""
    u, v = project(centred_gram(x), debiased), project(centred_gram(y), debiased)
    a = (u * v).sum((-2, -1))
    return exact_pair(_safe_ratio(a, (u * u).sum((-2, -1)), (v * v).sum((-2, -1))), x.shape[-2], debiased)


def cka_matrix(xs, ys, *, debiased: bool = False) -> Tensor:
    """[L, M] with entry (l, m) = linear_cka(xs[l], ys[m]); members flattened to [n, -1]."""
    def normalised(layers):
        grams = [project(centred_gram(t.reshape(t.shape[0], -1)), debiased) for t in layers]
        stack = torch.stack(grams).flatten(1)
        return stack, (stack * stack).sum(1)

    gx, bx2 = normalised(xs)
    gy, by2 = normalised(ys)
    return exact_pair(_safe_ratio(gx @ gy.t(), bx2[:, None], by2[None, :]), xs[0].shape[0], debiased)


def linear_cka_eager(x: Tensor, y: Tensor, *, debiased: bool = False) -> Tensor:
    """The hand-written baseline of distill.md 7 case 1: Grams of the raw features, centred with
    H matrices afterwards (H K H), sum(Kc * Lc) and the norms; no degenerate-side handling."""
    n = x.shape[-2]
    h = torch.eye(n, dtype=x.dtype, device=x.device) - 1.0 / n
    kc = h @ (x @ x.transpose(-1, -2)) @ h
    lc = h @ (y @ y.transpose(-1, -2)) @ h
    u, v = project(kc, debiased), project(lc, debiased)
    a = (u * v).sum((-2, -1))
    return a / (torch.linalg.matrix_norm(u) * torch.linalg.matrix_norm(v))
