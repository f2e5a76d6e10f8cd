"""FSD's intra-feature and local inter-feature structure losses (distill.md 4.2, paper eqs. 6-7).

Token view: transformer features are [B, W, D]; CNN maps [B, C, H, W] become [B, H*W, C] (tokens
= spatial positions). The teacher is frozen: its features are detached.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from ..ops._checks import check_choice, check_tensor
from .cka_loss import check_eps, neg_log_abs

INTRA_REDUCTIONS = ("log_mean", "mean_log")


def tokens(name: str, features: Tensor) -> Tensor:
    """[B, W, D] as is; a CNN map [B, C, H, W] as [B, H*W, C]."""
    check_tensor(name, features, floating=True)
    if features.dim() == 4:
        return features.flatten(2).transpose(1, 2)
    if features.dim() != 3:
        raise ValueError(f"{name} must be tokens [B, W, D] or a CNN map [B, C, H, W], got shape "
                         f"{tuple(features.shape)}")
    return features


def flat_samples(name: str, features: Tensor) -> Tensor:
    """[B, ...] -> [B, F]: each sample one row (the local and global losses)."""
    check_tensor(name, features, floating=True)
    if features.dim() < 2:
        raise ValueError(f"{name} must be [B, ...] with features, got shape {tuple(features.shape)}")
    return features.reshape(features.shape[0], -1)


def _same_batch(hs: Tensor, ht: Tensor) -> None:
    if hs.shape[0] != ht.shape[0]:
        raise ValueError(f"ht must have the batch size B = {hs.shape[0]} of hs, got {ht.shape[0]}")


class IntraFeatureLoss(nn.Module):
    """Per sample i, c_i = CKA between the student's and the teacher's token matrices (Gram over
    the W tokens). "log_mean" (official code): -log(mean_i |c_i| + eps); "mean_log" (paper eq. 6):
    -mean_i log(|c_i| + eps). mean_log >= log_mean (Jensen) and weights badly aligned samples by
    1/|c_i| in the gradient."""

    def __init__(self, reduction: str = "log_mean", debiased: bool = False, eps: float = 1e-8):
        super().__init__()
        check_choice("reduction", reduction, INTRA_REDUCTIONS)
        self.reduction, self.debiased, self.eps = reduction, bool(debiased), check_eps(eps)

    def forward(self, hs: Tensor, ht: Tensor) -> Tensor:
        hs, ht = tokens("hs", hs), tokens("ht", ht).detach()
        _same_batch(hs, ht)
        if hs.shape[1] != ht.shape[1]:
            raise ValueError(f"ht must have the W = {hs.shape[1]} tokens of hs, got {ht.shape[1]}")
        c = ops.linear_cka(hs, ht, debiased=self.debiased)
        if self.reduction == "log_mean":
            return neg_log_abs(c.abs().mean(), self.eps)
        return neg_log_abs(c, self.eps).mean()

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, debiased={self.debiased}, eps={self.eps}"


class LocalInterFeatureLoss(nn.Module):
    """-log(|CKA(hs.flatten(1), ht.flatten(1))| + eps): one CKA over the batch (n = B, paper eq. 7)."""

    def __init__(self, debiased: bool = False, eps: float = 1e-8):
        super().__init__()
        self.debiased, self.eps = bool(debiased), check_eps(eps)

    def forward(self, hs: Tensor, ht: Tensor) -> Tensor:
        hs, ht = flat_samples("hs", hs), flat_samples("ht", ht).detach()
        _same_batch(hs, ht)
        return neg_log_abs(ops.linear_cka(hs, ht, debiased=self.debiased), self.eps)

    def extra_repr(self) -> str:
        return f"debiased={self.debiased}, eps={self.eps}"
