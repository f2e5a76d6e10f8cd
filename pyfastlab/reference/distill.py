"""Float64 oracles of the distillation modules (distill.md 4, 5), written independently of them:
explicit per-sample loops, pairwise differences instead of the GEMM expansion, Song's U-statistic
formula for HSIC instead of the U-centring projection, and a textbook full-batch Lloyd."""
from __future__ import annotations

import torch
from torch import Tensor

from .cka import linear_cka


def _nlog(c: Tensor, eps: float) -> Tensor:
    return -torch.log(c.abs() + eps)


def intra_feature_loss(hs: Tensor, ht: Tensor, *, reduction="log_mean", debiased=False, eps=1e-8) -> Tensor:
    """hs [B, W, Ds], ht [B, W, Dt]; one CKA per sample, in a loop."""
    c = torch.stack([linear_cka(hs[i], ht[i], debiased=debiased) for i in range(hs.shape[0])])
    return _nlog(c.abs().mean(), eps) if reduction == "log_mean" else _nlog(c, eps).mean()


def local_inter_feature_loss(hs: Tensor, ht: Tensor, *, debiased=False, eps=1e-8) -> Tensor:
    return _nlog(linear_cka(hs.reshape(hs.shape[0], -1), ht.reshape(ht.shape[0], -1), debiased=debiased), eps)


def relations(h: Tensor, m: Tensor, dist_eps=1e-8) -> tuple[Tensor, Tensor]:
    """Euclidean and cosine relations [B, C] from explicit differences."""
    diff = h[:, None, :] - m[None, :, :]
    euclid = torch.sqrt((diff * diff).sum(-1) + dist_eps)
    cosine = (h[:, None, :] * m[None, :, :]).sum(-1) / (h.norm(dim=1)[:, None] * m.norm(dim=1)[None, :])
    return euclid, cosine


def global_inter_feature_loss(hs, ht, teacher_memory, student_memory, *, gamma_m=0.5, eps=1e-8, dist_eps=1e-8,
                              distance_norm="none", debiased=False) -> Tensor:
    hs, ht = hs.reshape(hs.shape[0], -1), ht.reshape(ht.shape[0], -1)
    e_t, c_t = relations(ht, teacher_memory, dist_eps)
    e_s, c_s = relations(hs, student_memory, dist_eps)
    if distance_norm == "mean":
        e_t, e_s = e_t / e_t.mean(), e_s / e_s.mean()
    f_e = ((e_t - e_s) ** 2).mean()
    f_c = ((c_t - c_s) ** 2).mean()
    f_mm = _nlog(linear_cka(teacher_memory, student_memory, debiased=debiased), eps)
    return gamma_m * f_e + (1 - gamma_m) * f_c + f_mm


def lloyd(x: Tensor, init: Tensor, n_iter: int) -> tuple[Tensor, Tensor, float]:
    """Textbook Lloyd on all rows at once: (centroids, assignments, inertia of the result)."""
    c = init.clone()
    for _ in range(n_iter):
        label = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(c.shape[0]):
            members = x[label == j]
            if members.shape[0]:
                c[j] = members.mean(0)
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    return c, d.argmin(1), float(d.min(1).values.sum())


def hsic_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """Song et al. (2012) U-statistic on linear kernels K = x x^T, L = y y^T (not centred):
    [tr(Kt Lt) + 1'Kt1 1'Lt1 / ((n-1)(n-2)) - 2/(n-2) 1'Kt Lt 1] / (n(n-3)), diagonals zeroed."""
    n = x.shape[0]
    k, l_ = x @ x.t(), y @ y.t()
    k = k - torch.diag(torch.diag(k))
    l_ = l_ - torch.diag(torch.diag(l_))
    ones = torch.ones(n, dtype=x.dtype)
    return (torch.trace(k @ l_) + k.sum() * l_.sum() / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * ones @ k @ l_ @ ones) / (n * (n - 3))


def hsic_biased(x: Tensor, y: Tensor) -> Tensor:
    n = x.shape[0]
    h = torch.eye(n, dtype=x.dtype) - 1.0 / n
    return torch.trace(x @ x.t() @ h @ y @ y.t() @ h) / (n - 1) ** 2


def minibatch_cka(batches, *, debiased=True) -> Tensor:
    """batches: list of (xs, ys) layer lists; HSIC terms summed over batches, normalised at the end."""
    hsic = hsic_unbiased if debiased else hsic_biased
    n_x, n_y = len(batches[0][0]), len(batches[0][1])
    xy = torch.zeros(n_x, n_y, dtype=torch.float64)
    xx, yy = torch.zeros(n_x, dtype=torch.float64), torch.zeros(n_y, dtype=torch.float64)
    for xs, ys in batches:
        xs = [t.double().reshape(t.shape[0], -1) for t in xs]
        ys = [t.double().reshape(t.shape[0], -1) for t in ys]
        for i, x in enumerate(xs):
            xx[i] += hsic(x, x)
            for j, y in enumerate(ys):
                xy[i, j] += hsic(x, y)
        for j, y in enumerate(ys):
            yy[j] += hsic(y, y)
    return xy / torch.sqrt(xx[:, None] * yy[None, :])
