"""Readable references of the VAE-family ops (spec vae.md 3.1-3.4): compositions of standard torch
ops, used as test oracles (in float64) and as the eager baselines of the benchmarks."""
from __future__ import annotations

import torch
from torch import Tensor


def sym(w: Tensor) -> Tensor:
    return (w + w.transpose(-1, -2)) / 2


def expm(a: Tensor) -> Tensor:
    """Batched matrix exponential, torch.linalg.matrix_exp (its backward exponentiates the 2n x 2n
    block matrix [[A^T, G], [0, A^T]])."""
    return torch.linalg.matrix_exp(a)


def symmetric_expm(w: Tensor) -> Tensor:
    """expm((w + w^T) / 2), as matrix_exp of the symmetrised input."""
    return torch.linalg.matrix_exp(sym(w))


def ipe_transform(z: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """z_hat[u] = z @ expm(S_u1) @ ... @ expm(S_uK), logdet[u] = sum_k trace(w_uk)."""
    U, K, n = w.shape[0], w.shape[1], w.shape[-1]
    x = torch.linalg.matrix_exp(sym(w))
    e = torch.eye(n, dtype=w.dtype, device=w.device).expand(U, n, n)
    for k in range(K):
        e = e @ x[:, k]
    z_hat = z.unsqueeze(0) @ e
    logdet = torch.diagonal(w, dim1=-2, dim2=-1).sum(-1).sum(-1)
    return z_hat, logdet


def composite_symmetry(codebook: Tensor, weights: Tensor, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
    """A_p = sum_k weights[p, k] codebook[k]; (z1_p expm(A_p), z2_p expm(-A_p))."""
    a = torch.einsum("pk,kij->pij", weights, codebook)
    y1 = torch.bmm(z1.unsqueeze(1), torch.linalg.matrix_exp(a)).squeeze(1)
    y2 = torch.bmm(z2.unsqueeze(1), torch.linalg.matrix_exp(-a)).squeeze(1)
    return y1, y2


def expm_block_gradient(a: Tensor, grad: Tensor) -> Tensor:
    """L_exp(A^T, G) as the upper-right block of expm([[A^T, G], [0, A^T]]): the gradient oracle."""
    n = a.shape[-1]
    at = a.transpose(-1, -2)
    top = torch.cat([at, grad], -1)
    bottom = torch.cat([torch.zeros_like(at), at], -1)
    return torch.linalg.matrix_exp(torch.cat([top, bottom], -2))[..., :n, n:]


def daleckii_krein(w: Tensor, grad: Tensor) -> Tensor:
    """w_bar of symmetric_expm by the Daleckii-Krein formula (float64 oracle for close eigenvalues)."""
    lam, q = torch.linalg.eigh(sym(w))
    li, lj = lam.unsqueeze(-1), lam.unsqueeze(-2)
    d = (li - lj) / 2
    small = d.abs() < 1e-3
    sinhc = torch.where(small, 1 + d * d / 6 + d ** 4 / 120, torch.sinh(d) / torch.where(small, 1, d))
    f = torch.exp((li + lj) / 2) * sinhc
    h = q.transpose(-1, -2) @ sym(grad) @ q
    return q @ (f * h) @ q.transpose(-1, -2)
