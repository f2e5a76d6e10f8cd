"""MIPE-Transformation (vae.md 4.2): invertible partial-equivariant (IPE) units on the sampled
latent, an exponential-family (EF) conversion of the transformed latent and noise, and the losses
that plug MIPE into beta-VAE or beta-TCVAE training.

Switches (all keyword arguments of MIPE): factors_per_unit 2 (official code: expm(S1) expm(S2)) or
1 (paper: one symmetric exponential); mask "mean" (code: log-normaliser weights masked to entries
with |W| >= mean |W| in training) or "none"; represent "z" (code: metrics use the encoder's z) or
"z_hat" (the mean over units of the transformed code); beta weights mean_b KL_EF in the beta-VAE
form (1 as coded). The EF graph is the official code's, transcribed literally (a heuristic
surrogate: KL_EF can be negative), in the rank-1 form r(th) * (s M_t) of its outer products.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops._checks import check_choice, check_finite
from .backbones import _positive, check_latent
from .losses import DISTRIBUTIONS, VAELossTerms, check_posterior, gaussian_kl
from .tcvae import BetaTCVAELoss, total_correlation_terms

MASKS = ("mean", "none")
REPRESENTS = ("z", "z_hat")


class IPETransform(nn.Module):
    """U independent units z -> z E_u, E_u = expm(sym(w_u1)) ... expm(sym(w_uK)): invertible, with
    log|det E_u| = sum_k trace(w_uk). weight [U, K, n, n], xavier-uniform per n x n block."""

    def __init__(self, latent_dim: int, num_units: int = 3, factors_per_unit: int = 2):
        super().__init__()
        self.latent_dim = _positive("latent_dim", latent_dim)
        self.num_units = _positive("num_units", num_units)
        self.factors_per_unit = _positive("factors_per_unit", factors_per_unit)
        bound = math.sqrt(3.0 / latent_dim)          # xavier-uniform of an n x n block
        self.weight = nn.Parameter(torch.empty(num_units, factors_per_unit, latent_dim, latent_dim)
                                   .uniform_(-bound, bound))

    def forward(self, z: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z_hat, eps_hat `[U, B, n]`, logdet `[U]`): z and eps go through the same units in one
        ipe_transform call on cat([z, eps])."""
        check_latent("z", z, self.latent_dim)
        check_latent("eps", eps, self.latent_dim)
        if eps.shape != z.shape:
            raise ValueError(f"eps must have z's shape {tuple(z.shape)}, got {tuple(eps.shape)}")
        out, logdet = ops.ipe_transform(torch.cat([z, eps]), self.weight.to(z.dtype))
        return out[:, :z.shape[0]], out[:, z.shape[0]:], logdet

    def inverse(self, z_hat: Tensor) -> Tensor:
        """z per unit from z_hat `[U, B, n]`: z_hat expm(-S_uK) ... expm(-S_u1) (reverse order)."""
        if z_hat.dim() != 3 or z_hat.shape[0] != self.num_units or z_hat.shape[2] != self.latent_dim:
            raise ValueError(f"z_hat must be [U, B, n] = [{self.num_units}, B, {self.latent_dim}], got shape "
                             f"{tuple(z_hat.shape)}")
        inv = ops.symmetric_expm(-self.weight.to(z_hat.dtype))                   # [U, K, n, n]
        for k in reversed(range(self.factors_per_unit)):
            z_hat = torch.bmm(z_hat, inv[:, k])
        return z_hat

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, num_units={self.num_units}, factors_per_unit={self.factors_per_unit}"


class _TwoFactorLinear(nn.Module):
    """Bias-free x -> x A B with A [n, 5n], B [5n, n] (the official code's factorised maps)."""

    def __init__(self, n: int):
        super().__init__()
        self.a = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n, 5 * n)))
        self.b = nn.Parameter(nn.init.xavier_uniform_(torch.empty(5 * n, n)))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.a @ self.b


def _masked(w: Tensor, on: bool) -> Tensor:
    """w * 1[|w| >= mean |w|] (mask without gradient) when on, else w."""
    if not on:
        return w
    with torch.no_grad():
        keep = (w.abs() >= w.abs().mean()).to(w.dtype)
    return w * keep


class EFConversion(nn.Module):
    """Maps one unit's transformed latent z_hat and noise eps_hat `[B, n]` to the EF-KL `[B, n]`
    and the EF consistency loss L_el `[B]` (vae.md 4.2). mask ("mean" / "none", keyword-only)
    masks the log-normaliser weights in training; eval never masks."""

    def __init__(self, latent_dim: int, *, mask: str = "mean"):
        super().__init__()
        self.latent_dim = _positive("latent_dim", latent_dim)
        check_choice("mask", mask, MASKS)
        self.mask = mask
        n = latent_dim
        self.p_z, self.p_e, self.t = _TwoFactorLinear(n), _TwoFactorLinear(n), _TwoFactorLinear(n)
        self.ln_a = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n, 5 * n)))
        self.ln_b = nn.Parameter(nn.init.xavier_uniform_(torch.empty(5 * n, n)))
        self.lam = nn.Linear(n, n)

    def log_normalizer_matrix(self) -> Tensor:
        """M_t = (A_ln o m_A)(B_ln o m_B), masks recomputed per call in training with mask="mean"."""
        on = self.training and self.mask == "mean"
        return _masked(self.ln_a, on) @ _masked(self.ln_b, on)

    def forward(self, z_hat: Tensor, eps_hat: Tensor) -> tuple[Tensor, Tensor]:
        check_latent("z_hat", z_hat, self.latent_dim)
        check_latent("eps_hat", eps_hat, self.latent_dim)
        if eps_hat.shape != z_hat.shape:
            raise ValueError(f"eps_hat must have z_hat's shape {tuple(z_hat.shape)}, got {tuple(eps_hat.shape)}")
        m_t = self.log_normalizer_matrix()
        ln = lambda u: torch.sigmoid(u @ m_t)                  # learned log-normaliser
        r = lambda x: x.sum(dim=1, keepdim=True)               # the outer products' row sums
        p_z, p_e, t = self.p_z, self.p_e, self.t
        th_z, th_e = p_z(z_hat), p_e(eps_hat)
        a_z, a_e = torch.sigmoid(ln(th_z)), torch.sigmoid(ln(th_e))      # double sigmoid, as coded
        s_z, s_e = a_z * (1 - a_z), a_e * (1 - a_e)
        sm_z, sm_e = s_z @ m_t, s_e @ m_t
        r_z, r_e = r(th_z), r(th_e)
        kl = a_e - r_e * sm_e - a_z + r_z * sm_z
        g_z, g_e = ln(p_z(sm_z)), ln(p_e(sm_e))
        delta_z = self.lam(-g_z + p_z(ln(s_z)) + r_z * ln(g_z * (1 - a_z)) - r_z * ln(g_z * a_z))
        delta_e = self.lam(g_e - p_e(ln(s_e)) - r_e * ln(g_e * (1 - a_e)) + r_e * ln(g_e * a_e))
        # the batch sum couples the samples (as coded)
        pi_z = p_z(t(z_hat).sum(dim=0, keepdim=True)) + z_hat.shape[0] * t(th_z) - g_z
        pi_e = 2 * r_z * th_e
        el = (delta_z + pi_z).norm(dim=1) + (delta_e + pi_e).norm(dim=1) + kl.norm(dim=1)
        return kl, el

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, mask={self.mask!r}"


@dataclass
class MIPELossTerms(VAELossTerms):
    """VAELossTerms plus MIPE's parts: kl_ef = mean_b KL_EF, el = mean_b sum_u L_el,u, cali = L_cali,
    reg = el + cali."""
    kl_ef: Optional[Tensor] = None
    el: Optional[Tensor] = None
    cali: Optional[Tensor] = None
    reg: Optional[Tensor] = None


class MIPE(nn.Module):
    """IPE units + one EF conversion per unit + MIPE's losses.

    forward(decoder, x, mu, logvar, z, eps=None, *, tcvae=None) → MIPELossTerms:
    - the U units' z_hat are decoded in one decoder call on [U*B, n]; x_hat = mean_u sigmoid(logits);
      R = BCE on probabilities (log clamped at -100) or squared error (distribution="gaussian");
    - KL_EF(b) = sum_u sum_d KL_u(b, d); L_cali = mean_b (KL_EF(b) - U KL_g(b))^2;
      reg = mean_b sum_u L_el,u(b) + L_cali;
    - beta-VAE form (tcvae None): L = R + beta * mean_b KL_EF + reg;
      beta-TCVAE form (tcvae a BetaTCVAELoss): L = R + alpha MI + beta TC + gamma dimKL + reg, the
      TC terms on the Gaussian z with tcvae's weights and estimator.
    eps defaults to (z - mu) / sigma, detached (its gradient w.r.t. mu and sigma cancels exactly).
    """

    def __init__(self, latent_dim: int, num_units: int = 3, factors_per_unit: int = 2, beta: float = 1.0,
                 mask: str = "mean", represent: str = "z", *, distribution: str = "bernoulli"):
        super().__init__()
        check_finite("beta", beta)
        check_choice("mask", mask, MASKS)
        check_choice("represent", represent, REPRESENTS)
        check_choice("distribution", distribution, DISTRIBUTIONS)
        self.ipe = IPETransform(latent_dim, num_units, factors_per_unit)
        self.ef = nn.ModuleList(EFConversion(latent_dim, mask=mask) for _ in range(num_units))
        self.latent_dim, self.num_units, self.beta = latent_dim, num_units, float(beta)
        self.mask, self.represent, self.distribution = mask, represent, distribution

    def regularizer(self, z_hat: Tensor, eps_hat: Tensor, mu: Tensor, logvar: Tensor) -> tuple[Tensor, ...]:
        """(KL_EF `[B]`, mean_b sum_u L_el,u, L_cali) from the units' outputs `[U, B, n]`."""
        kl_ef, el = 0.0, 0.0
        for u, ef in enumerate(self.ef):
            kl_u, el_u = ef(z_hat[u], eps_hat[u])
            kl_ef, el = kl_ef + kl_u.sum(dim=1), el + el_u
        cali = (kl_ef - self.num_units * gaussian_kl(mu, logvar)).square().mean()
        return kl_ef, el.mean(), cali

    def decode(self, decoder: nn.Module, z_hat: Tensor) -> Tensor:
        """x_hat = mean over units of the decoded means (one decoder call on [U*B, n])."""
        units, batch = z_hat.shape[:2]
        out = decoder(z_hat.reshape(units * batch, -1))
        if self.distribution == "bernoulli":
            out = torch.sigmoid(out)
        return out.reshape(units, batch, *out.shape[1:]).mean(dim=0)

    def code(self, mu: Tensor) -> Tensor:
        """The representation scored by metrics: mu (represent="z", as coded) or the mean over
        units of mu E_u (represent="z_hat")."""
        check_latent("mu", mu, self.latent_dim)
        if self.represent == "z":
            return mu
        return ops.ipe_transform(mu, self.ipe.weight.to(mu.dtype))[0].mean(dim=0)

    def forward(self, decoder: nn.Module, x: Tensor, mu: Tensor, logvar: Tensor, z: Tensor,
                eps: Optional[Tensor] = None, *, tcvae: Optional[BetaTCVAELoss] = None) -> MIPELossTerms:
        check_posterior(mu, logvar, z)
        if mu.shape[1] != self.latent_dim:
            raise ValueError(f"mu must be [B, {self.latent_dim}] (MIPE latent_dim {self.latent_dim}), got shape "
                             f"{tuple(mu.shape)}")
        if mu.shape[0] != x.shape[0]:
            raise ValueError(f"mu has {mu.shape[0]} rows but x has {x.shape[0]}: one posterior per image")
        if tcvae is not None and not isinstance(tcvae, BetaTCVAELoss):
            raise TypeError(f"tcvae must be a BetaTCVAELoss or None, got {type(tcvae).__name__}")
        if eps is None:
            eps = ((z - mu) * torch.exp(-0.5 * logvar)).detach()
        z_hat, eps_hat, _ = self.ipe(z, eps)
        x_hat = self.decode(decoder, z_hat)
        if x_hat.shape != x.shape:
            raise ValueError(f"x must have the decoder output's shape {tuple(x_hat.shape)}, got {tuple(x.shape)}")
        batch = max(x.shape[0], 1)
        if self.distribution == "bernoulli":
            recon = F.binary_cross_entropy(x_hat, x, reduction="sum") / batch
        else:
            recon = F.mse_loss(x_hat, x, reduction="sum") / batch
        kl_ef, el, cali = self.regularizer(z_hat, eps_hat, mu, logvar)
        reg = el + cali
        kl = gaussian_kl(mu, logvar).mean()
        if tcvae is None:
            loss = recon + self.beta * kl_ef.mean() + reg
            return MIPELossTerms(loss=loss, recon=recon, kl=kl, kl_ef=kl_ef.mean(), el=el, cali=cali, reg=reg)
        mi, tc, dim_kl = total_correlation_terms(z, mu, logvar, tcvae.dataset_size, tcvae.estimator)
        loss = recon + tcvae.alpha * mi + tcvae.beta * tc + tcvae.gamma * dim_kl + reg
        return MIPELossTerms(loss=loss, recon=recon, kl=kl, mi=mi, tc=tc, dim_kl=dim_kl, kl_ef=kl_ef.mean(), el=el,
                             cali=cali, reg=reg)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, mask={self.mask!r}, represent={self.represent!r}, distribution={self.distribution!r}"
