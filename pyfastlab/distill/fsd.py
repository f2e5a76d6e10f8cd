"""FSDLoss: the weighted sum of FSD's three structure losses (distill.md 4.2, paper eq. 11).

Total objective of the paper: ops.kd_loss(s, t, y, temperature=tau, soft_weight=1 - alpha,
hard_weight=alpha) + beta * FSDLoss(...)(hs, ht).

Paper vs official code, and the switch for each difference:
* intra-feature reduction: paper eq. 6 is the mean of logs, the code takes the log of the mean
  -> `intra_reduction` ("log_mean", the code's, by default).
* weights: paper beta (g_i L_I + g_l L_L + g_g L_G); the ILG script uses
  eps [sigma L_G + (1 - sigma)/2 (gamma L_I + (1 - gamma) L_L)] -> `FSDLoss.from_official_ilg`.
* eps inside the log: the code adds 1e-8 to |CKA|, the paper writes neither eps nor |.| -> `eps`.
* memory: the paper clusters for 3 epochs, the code does one approximate pass -> `kmeans` is exact.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..ops._checks import check_finite
from .memory import GlobalInterFeatureLoss
from .structure import IntraFeatureLoss, LocalInterFeatureLoss


def _weight(name: str, value: float) -> float:
    check_finite(name, value)
    value = float(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (a negative weight would reward misalignment), got {value}")
    return value


class FSDLoss(nn.Module):
    """gamma_intra L_I + gamma_local L_L + gamma_global L_G of student features hs [B, W, D_s] (or a
    CNN map [B, C, H, W]) and teacher features ht (detached). L_I uses the token view, L_L and L_G the
    flattened [B, W*D]. The global term needs `global_loss` (a GlobalInterFeatureLoss holding the
    memories) and is skipped when it is None; a zero weight skips its term's computation. The last
    forward's detached terms are in `.components`."""

    def __init__(self, gamma_intra: float = 1.0, gamma_local: float = 1.0, gamma_global: float = 1.0, *,
                 global_loss: Optional[GlobalInterFeatureLoss] = None, intra_reduction: str = "log_mean",
                 debiased: bool = False, eps: float = 1e-8):
        super().__init__()
        self.gamma_intra = _weight("gamma_intra", gamma_intra)
        self.gamma_local = _weight("gamma_local", gamma_local)
        self.gamma_global = _weight("gamma_global", gamma_global)
        if global_loss is not None and not isinstance(global_loss, GlobalInterFeatureLoss):
            raise ValueError(f"global_loss must be a GlobalInterFeatureLoss or None, got {type(global_loss).__name__}")
        self.intra = IntraFeatureLoss(intra_reduction, debiased=debiased, eps=eps)
        self.local = LocalInterFeatureLoss(debiased=debiased, eps=eps)
        self.global_loss = global_loss
        self.components: dict[str, Tensor] = {}

    @classmethod
    def from_official_ilg(cls, epsilon: float, sigma: float, gamma: float, **kwargs) -> "FSDLoss":
        """The official ILG script's weighting (with the outer beta = 1):
        gamma_global = eps sigma, gamma_intra = eps (1 - sigma) gamma / 2,
        gamma_local = eps (1 - sigma) (1 - gamma) / 2. (That script's `beta` is gamma_m inside L_G.)"""
        epsilon = _weight("epsilon", epsilon)
        for name, value in (("sigma", sigma), ("gamma", gamma)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        sigma, gamma = float(sigma), float(gamma)
        return cls(epsilon * (1 - sigma) * gamma / 2, epsilon * (1 - sigma) * (1 - gamma) / 2, epsilon * sigma,
                   **kwargs)

    def forward(self, hs: Tensor, ht: Tensor) -> Tensor:
        terms = {}
        if self.gamma_intra:
            terms["intra"] = (self.gamma_intra, self.intra(hs, ht))
        if self.gamma_local:
            terms["local"] = (self.gamma_local, self.local(hs, ht))
        if self.gamma_global and self.global_loss is not None:
            terms["global"] = (self.gamma_global, self.global_loss(hs, ht))
        if not terms:
            raise ValueError("FSDLoss has no active term: every weight is 0 (or only the global one is set "
                             "and global_loss is None)")
        self.components = {name: value.detach() for name, (_, value) in terms.items()}
        total = None
        for weight, value in terms.values():
            total = weight * value if total is None else total + weight * value
        return total

    def extra_repr(self) -> str:
        return (f"gamma_intra={self.gamma_intra}, gamma_local={self.gamma_local}, gamma_global={self.gamma_global}, "
                f"intra_reduction={self.intra.reduction!r}, debiased={self.intra.debiased}")
