"""CKA as a training loss (distill.md 4.1): the op returns a similarity, the loss names its transform."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from ..ops._checks import check_choice

KINDS = ("neg_log", "one_minus")


def check_eps(eps: float) -> float:
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return eps


def neg_log_abs(c: Tensor, eps: float) -> Tensor:
    """-log(|c| + eps), elementwise. |.| matters only for the debiased estimator (c may be < 0);
    eps keeps the loss finite at c = 0 (the FSD code adds 1e-8, the paper writes none)."""
    return -torch.log(c.abs() + eps)


class CKALoss(nn.Module):
    """mean over the leading dims of -log(|CKA| + eps) ("neg_log", FSD) or 1 - CKA ("one_minus"),
    with CKA = ops.linear_cka(x, y, debiased) of x [..., n, p], y [..., n, q]. Neither input is
    detached: detach a frozen teacher's features yourself (the FSD modules do)."""

    def __init__(self, kind: str = "neg_log", debiased: bool = False, eps: float = 1e-8):
        super().__init__()
        check_choice("kind", kind, KINDS)
        self.kind, self.debiased, self.eps = kind, bool(debiased), check_eps(eps)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        c = ops.linear_cka(x, y, debiased=self.debiased)
        return (neg_log_abs(c, self.eps) if self.kind == "neg_log" else 1.0 - c).mean()

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, debiased={self.debiased}, eps={self.eps}"
