"""beta-VAE and beta-TCVAE losses against literal float64 transcriptions, with gradients."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from pyfastlab.vae import (BetaTCVAELoss, BetaVAELoss, gaussian_kl, mss_log_weights, reconstruction_loss,
                           total_correlation_terms)


def posterior(b, n, seed):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, n, generator=gen, dtype=torch.float64, requires_grad=True)
    logvar = (0.5 * torch.randn(b, n, generator=gen, dtype=torch.float64)).requires_grad_()
    z = (mu.detach() + torch.exp(0.5 * logvar.detach()) * torch.randn(b, n, generator=gen, dtype=torch.float64))
    return mu, logvar, z.requires_grad_()


def rtqichen_mss_weights(batch_size, dataset_size):
    """rtqichen/beta-tcvae _log_importance_weight_matrix, transcribed literally."""
    n, m = dataset_size, batch_size - 1
    strat_weight = (n - m) / (n * m)
    w = torch.empty(batch_size, batch_size, dtype=torch.float64).fill_(1 / m)
    w.view(-1)[::m + 1] = 1 / n
    w.view(-1)[1::m + 1] = strat_weight
    w[m - 1, 0] = strat_weight
    return w.log()


def dense_terms(z, mu, logvar, n_data, estimator):
    """The [B, B, n] table version of rtqichen's estimator (the oracle of the chunked one)."""
    b = z.shape[0]
    log_density = lambda x, m, lv: -0.5 * (math.log(2 * math.pi) + lv + (x - m) ** 2 * torch.exp(-lv))
    table = log_density(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))
    if estimator == "mss":
        w = rtqichen_mss_weights(b, n_data)
        log_qz = torch.logsumexp(w + table.sum(2), dim=1)
        log_prod = torch.logsumexp(w.view(b, b, 1) + table, dim=1).sum(1)
    else:
        log_qz = torch.logsumexp(table.sum(2), dim=1) - math.log(b * n_data)
        log_prod = (torch.logsumexp(table, dim=1) - math.log(b * n_data)).sum(1)
    log_qzx = log_density(z, mu, logvar).sum(1)
    log_pz = log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    return (log_qzx - log_qz).mean(), (log_qz - log_prod).mean(), (log_prod - log_pz).mean()


def test_mss_weights_b4_n10():
    w = mss_log_weights(4, 10, dtype=torch.float64).exp()
    strat = (10 - 3) / (10 * 3)
    expected = torch.tensor([[0.1, strat, 1 / 3, 1 / 3], [0.1, strat, 1 / 3, 1 / 3], [strat, strat, 1 / 3, 1 / 3],
                             [0.1, strat, 1 / 3, 1 / 3]], dtype=torch.float64)
    torch.testing.assert_close(w, expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(mss_log_weights(7, 100, dtype=torch.float64), rtqichen_mss_weights(7, 100))


def test_gaussian_kl_closed_form_and_zero():
    mu, logvar, _ = posterior(6, 5, 0)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    assert float(gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max()) == 0.0
    assert torch.autograd.gradcheck(gaussian_kl, (mu, logvar))


def test_reconstruction_bernoulli_and_gaussian():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    x = (torch.rand(4, 1, 8, 8, generator=gen, dtype=torch.float64) > 0.5).double()
    p = torch.sigmoid(logits)
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).sum() / 4
    torch.testing.assert_close(reconstruction_loss(logits, x), bce)
    torch.testing.assert_close(reconstruction_loss(logits, x, "gaussian"), ((logits - x) ** 2).sum() / 4)


def test_beta_vae_loss_combines_terms():
    mu, logvar, _ = posterior(5, 3, 2)
    logits = torch.randn(5, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    terms = BetaVAELoss(beta=4.0)(logits, x, mu, logvar)
    expected = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / 5 + 4 * gaussian_kl(mu, logvar).mean()
    torch.testing.assert_close(terms.loss, expected)
    terms.loss.backward()
    assert mu.grad is not None and logits.grad is not None


@pytest.mark.parametrize("estimator", ["mss", "mws"])
@pytest.mark.parametrize("b,n,chunk", [(2, 3, None), (9, 4, 2), (16, 10, 5), (33, 6, None)])
def test_tc_terms_match_dense_reference(estimator, b, n, chunk):
    mu, logvar, z = posterior(b, n, b + n)
    got = total_correlation_terms(z, mu, logvar, 737280 if b > 20 else 50, estimator, chunk_size=chunk)
    want = dense_terms(z, mu, logvar, 737280 if b > 20 else 50, estimator)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(sum(got), (z, mu, logvar))
    ref = torch.autograd.grad(sum(want), (z, mu, logvar))
    for g, w in zip(grads, ref):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_tc_terms_gradcheck():
    mu, logvar, z = posterior(5, 3, 7)
    f = lambda z, mu, lv: torch.stack(total_correlation_terms(z, mu, lv, 20, "mss", chunk_size=2))
    assert torch.autograd.gradcheck(f, (z, mu, logvar))


def test_tc_decomposition_sums_to_log_ratio():
    """MI + TC + dimKL = mean_b [log q(z_b|x_b) - log p(z_b)] for any weights (telescoping)."""
    mu, logvar, z = posterior(12, 5, 3)
    mi, tc, dim_kl = total_correlation_terms(z, mu, logvar, 100, "mss")
    log_qzx = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(1)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(mi + tc + dim_kl, (log_qzx - log_pz).mean())


def test_mi_of_separated_sharp_posteriors_is_minus_the_log_weight():
    """Posteriors far apart and sharp: only j = b counts, log q(z_b) = log q(z_b|x_b) - log(N B) (MWS)."""
    gen = torch.Generator().manual_seed(4)
    mu = 20 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    logvar = torch.full_like(mu, -8.0)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    mi, _, _ = total_correlation_terms(z, mu, logvar, 1000, "mws")
    assert abs(float(mi) - math.log(1000 * 64)) < 1e-6


def test_beta_tcvae_loss_weights():
    mu, logvar, z = posterior(8, 4, 5)
    logits = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64)
    terms = BetaTCVAELoss(100, beta=6.0, alpha=0.5, gamma=2.0)(logits, x, mu, logvar, z)
    mi, tc, dim_kl = dense_terms(z, mu, logvar, 100, "mss")
    torch.testing.assert_close(terms.loss, terms.recon + 0.5 * mi + 6 * tc + 2 * dim_kl)
    torch.testing.assert_close(terms.tc, tc)
    torch.testing.assert_close(terms.kl, gaussian_kl(mu, logvar).mean())


def test_bad_inputs():
    mu, logvar, z = posterior(4, 3, 0)
    with pytest.raises(ValueError, match=r"z must have mu's shape"):
        total_correlation_terms(z[:, :2], mu, logvar, 10)
    with pytest.raises(ValueError, match="logvar must have mu's shape"):
        gaussian_kl(mu, logvar[:, :2])
    with pytest.raises(ValueError, match="dataset_size"):
        total_correlation_terms(z, mu, logvar, 3)
    with pytest.raises(ValueError, match="at least 2"):
        total_correlation_terms(z[:1], mu[:1], logvar[:1], 10, "mss")
    with pytest.raises(ValueError, match="estimator"):
        BetaTCVAELoss(10, estimator="exact")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reconstruction_loss(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 255.0))
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="one posterior per image"):
        BetaVAELoss()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), mu, logvar)
    with pytest.raises(ValueError, match="beta"):
        BetaVAELoss(beta=float("nan"))
    with pytest.raises(ValueError, match="distribution"):
        BetaVAELoss(distribution="laplace")
