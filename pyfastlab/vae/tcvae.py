"""beta-TCVAE (vae.md 4.1): the KL split into index-code mutual information, total correlation
and dimension-wise KL with minibatch estimators of the aggregate posterior q(z).

With log q(z_bd | x_j) the Gaussian log density of sample b's coordinate d under posterior j and
l_bj the log importance weights of the estimator:
  log q(z_b)          = LSE_j (sum_d log q(z_bd | x_j) + l_bj)
  log prod_d q(z_bd)  = sum_d LSE_j (log q(z_bd | x_j) + l_bj)
MI = mean_b [log q(z_b|x_b) - log q(z_b)], TC = mean_b [log q(z_b) - log prod_d q(z_bd)],
dimKL = mean_b [log prod_d q(z_bd) - log N(z_b; 0, I)].
The [B, B, n] table is never stored: rows b are processed in chunks and reduced at once.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..ops._checks import check_choice, check_finite
from .losses import DISTRIBUTIONS, VAELossTerms, check_posterior, gaussian_kl, reconstruction_loss

ESTIMATORS = ("mss", "mws")
_LOG_2PI = math.log(2.0 * math.pi)
_CHUNK_ELEMENTS = 1 << 20   # rows per chunk * B * n stays below this


def _check_sizes(batch_size: int, dataset_size: int, estimator: str) -> None:
    if not isinstance(dataset_size, int) or isinstance(dataset_size, bool) or dataset_size < 1:
        raise ValueError(f"dataset_size must be a positive int, got {dataset_size!r}")
    if dataset_size < batch_size:
        raise ValueError(f"dataset_size ({dataset_size}) must be at least the batch size ({batch_size})")
    if estimator == "mss" and batch_size < 2:
        raise ValueError(f"estimator='mss' needs a batch of at least 2 samples, got {batch_size}")


def mss_log_weights(batch_size: int, dataset_size: int, *, dtype=torch.float32, device=None) -> Tensor:
    """log W `[B, B]` of minibatch stratified sampling exactly as rtqichen/beta-tcvae builds it:
    W = 1/(B-1) except column 0 = 1/N, column 1 = (N-B+1)/(N(B-1)) and W[B-2, 0] = (N-B+1)/(N(B-1)).
    (The original fills with stride B, i.e. columns 0 and 1, not the diagonal it intended.)"""
    _check_sizes(batch_size, dataset_size, "mss")
    n, m = dataset_size, batch_size - 1
    strat = (n - m) / (n * m)
    w = torch.full((batch_size, batch_size), 1.0 / m, dtype=torch.float64)
    w[:, 0] = 1.0 / n
    w[:, 1] = strat
    w[m - 1, 0] = strat
    return w.log().to(dtype=dtype, device=device)


def _log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    return -0.5 * (_LOG_2PI + logvar + (z - mu).square() * torch.exp(-logvar))


def _chunk_marginals(zc: Tensor, wc: Tensor, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """(log q(z_b), log prod_d q(z_bd)) for the rows b of one chunk."""
    table = _log_density(zc.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))   # [c, B(j), n]
    return torch.logsumexp(table.sum(2) + wc, dim=1), torch.logsumexp(table + wc.unsqueeze(2), dim=1).sum(1)


def total_correlation_terms(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int, estimator: str = "mss",
                            *, chunk_size: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(MI, TC, dimKL), each a scalar batch mean, for samples z `[B, n]` of the posteriors (mu, logvar).
    chunk_size: rows b per chunk (default: keep chunk * B * n <= 2^20)."""
    check_choice("estimator", estimator, ESTIMATORS)
    check_posterior(mu, logvar, z)
    batch, n = z.shape
    _check_sizes(batch, dataset_size, estimator)
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(batch * n, 1))
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if estimator == "mss":
        log_w = mss_log_weights(batch, dataset_size, dtype=z.dtype, device=z.device)
    else:
        log_w = torch.full((batch, batch), -math.log(dataset_size * batch), dtype=z.dtype, device=z.device)
    # with several chunks, each chunk's table is recomputed in the backward instead of saved, so
    # neither pass holds more than chunk_size * B * n entries
    several = chunk_size < batch and torch.is_grad_enabled()
    log_qz, log_prod = [], []
    for start in range(0, batch, chunk_size):
        args = (z[start:start + chunk_size], log_w[start:start + chunk_size], mu, logvar)
        out = checkpoint(_chunk_marginals, *args, use_reentrant=False) if several else _chunk_marginals(*args)
        log_qz.append(out[0])
        log_prod.append(out[1])
    log_qz, log_prod = torch.cat(log_qz), torch.cat(log_prod)
    log_qz_x = _log_density(z, mu, logvar).sum(1)
    log_pz = (-0.5 * (_LOG_2PI + z.square())).sum(1)
    return (log_qz_x - log_qz).mean(), (log_qz - log_prod).mean(), (log_prod - log_pz).mean()


class BetaTCVAELoss(nn.Module):
    """beta-TCVAE: L = R + alpha * MI + beta * TC + gamma * dimKL (alpha = gamma = 1 as coded).
    forward(logits, x, mu, logvar, z) → VAELossTerms (kl = mean_b KL_g for reference)."""

    def __init__(self, dataset_size: int, beta: float = 6.0, alpha: float = 1.0, gamma: float = 1.0,
                 estimator: str = "mss", distribution: str = "bernoulli"):
        super().__init__()
        for name, value in (("beta", beta), ("alpha", alpha), ("gamma", gamma)):
            check_finite(name, value)
        check_choice("estimator", estimator, ESTIMATORS)
        check_choice("distribution", distribution, DISTRIBUTIONS)
        _check_sizes(1, dataset_size, "mws")   # validates dataset_size; batch sizes are checked per call
        self.dataset_size, self.estimator, self.distribution = dataset_size, estimator, distribution
        self.beta, self.alpha, self.gamma = float(beta), float(alpha), float(gamma)

    def forward(self, logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, z: Tensor) -> VAELossTerms:
        if mu.shape[:1] != x.shape[:1]:
            raise ValueError(f"mu has {mu.shape[0]} rows but x has {x.shape[0]}: one posterior per image")
        recon = reconstruction_loss(logits, x, self.distribution)
        mi, tc, dim_kl = total_correlation_terms(z, mu, logvar, self.dataset_size, self.estimator)
        loss = recon + self.alpha * mi + self.beta * tc + self.gamma * dim_kl
        return VAELossTerms(loss=loss, recon=recon, kl=gaussian_kl(mu, logvar).mean(), mi=mi, tc=tc, dim_kl=dim_kl)

    def extra_repr(self) -> str:
        return (f"dataset_size={self.dataset_size}, beta={self.beta}, alpha={self.alpha}, gamma={self.gamma}, "
                f"estimator={self.estimator!r}, distribution={self.distribution!r}")
