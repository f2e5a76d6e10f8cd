"""Base VAE losses (vae.md 4.1): reconstruction, the Gaussian KL and beta-VAE.

All losses are per-batch means of per-sample sums (R = sum over pixels / B), the convention of the
MIPE and CFASL code. They return a `VAELossTerms` whose `loss` is the scalar to minimise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops._checks import check_choice, check_finite, check_tensor, device_checks_enabled

DISTRIBUTIONS = ("bernoulli", "gaussian")


@dataclass
class VAELossTerms:
    """loss = what to minimise; the other fields are its parts (detached copies are up to the caller).
    kl is mean_b KL_g; mi, tc, dim_kl are filled by beta-TCVAE."""
    loss: Tensor
    recon: Tensor
    kl: Tensor
    mi: Optional[Tensor] = None
    tc: Optional[Tensor] = None
    dim_kl: Optional[Tensor] = None


def check_posterior(mu: Tensor, logvar: Tensor, z: Optional[Tensor] = None) -> None:
    check_tensor("mu", mu, floating=True, dim=2)
    check_tensor("logvar", logvar, floating=True, dim=2, device=mu.device)
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar must have mu's shape {tuple(mu.shape)}, got {tuple(logvar.shape)}")
    if z is not None:
        check_tensor("z", z, floating=True, dim=2, device=mu.device)
        if z.shape != mu.shape:
            raise ValueError(f"z must have mu's shape {tuple(mu.shape)} ([B, latent_dim]), got {tuple(z.shape)}")


def reconstruction_loss(logits: Tensor, x: Tensor, distribution: str = "bernoulli") -> Tensor:
    """R = sum over pixels of BCE-with-logits (binary images in [0, 1]) or of squared error
    (distribution="gaussian", the decoder output is then the mean), divided by the batch size."""
    check_choice("distribution", distribution, DISTRIBUTIONS)
    check_tensor("logits", logits, floating=True)
    check_tensor("x", x, floating=True, device=logits.device)
    if x.shape != logits.shape:
        raise ValueError(f"x must have the decoder output's shape {tuple(logits.shape)}, got {tuple(x.shape)}")
    # the range check reads the tensor on the host: free on CPU, opt-in (PYFASTLAB_CHECK=1) on GPUs
    if distribution == "bernoulli" and x.numel() and (x.device.type == "cpu" or device_checks_enabled()):
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"x must hold Bernoulli targets in [0, 1] for distribution='bernoulli', "
                             f"got values in [{lo:g}, {hi:g}]")
    batch = max(x.shape[0], 1)
    if distribution == "bernoulli":
        return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / batch
    return F.mse_loss(logits, x, reduction="sum") / batch


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL_g(b) = KL(N(mu_b, diag exp(logvar_b)) || N(0, I)) = -1/2 sum_d (1 + logvar - mu^2 - exp(logvar)), [B]."""
    check_posterior(mu, logvar)
    return -0.5 * (1.0 + logvar - mu.square() - logvar.exp()).sum(dim=1)


class BetaVAELoss(nn.Module):
    """beta-VAE: L = R + beta * mean_b KL_g(b). forward(logits, x, mu, logvar) → VAELossTerms."""

    def __init__(self, beta: float = 4.0, distribution: str = "bernoulli"):
        super().__init__()
        check_finite("beta", beta)
        check_choice("distribution", distribution, DISTRIBUTIONS)
        self.beta, self.distribution = float(beta), distribution

    def forward(self, logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> VAELossTerms:
        if mu.shape[:1] != x.shape[:1]:
            raise ValueError(f"mu has {mu.shape[0]} rows but x has {x.shape[0]}: one posterior per image")
        recon = reconstruction_loss(logits, x, self.distribution)
        kl = gaussian_kl(mu, logvar).mean()
        return VAELossTerms(loss=recon + self.beta * kl, recon=recon, kl=kl)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, distribution={self.distribution!r}"
