"""MIPE (vae.md 4.2): IPE units, the EF conversion (vs a literal outer-product transcription of the
code graph in float64), MIPE's losses in the beta-VAE and beta-TCVAE forms, gradients, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from pyfastlab.vae import (EFConversion, IPETransform, MIPE, BetaTCVAELoss, MLPDecoder, gaussian_kl,
                           total_correlation_terms)


@pytest.fixture(autouse=True)
def _seeded():
    # torch's default seed differs per process: every test starts from the same state
    torch.manual_seed(0)


def _literal_ef(ef, zh, eh):
    """The code graph with its [B, n, n] outer products th^T s, times M_t, summed over rows."""
    on = ef.training and ef.mask == "mean"
    mask = lambda w: w * (w.abs() >= w.abs().mean()).to(w.dtype) if on else w
    m_t = mask(ef.ln_a) @ mask(ef.ln_b)
    lin = lambda mod, x: torch.matmul(torch.matmul(x, mod.a), mod.b)
    ln = lambda u: 1 / (1 + torch.exp(-(u @ m_t)))
    outer = lambda th, s: (torch.einsum("bi,bj->bij", th, s) @ m_t).sum(dim=1)
    th_z, th_e = lin(ef.p_z, zh), lin(ef.p_e, eh)
    a_z, a_e = 1 / (1 + torch.exp(-ln(th_z))), 1 / (1 + torch.exp(-ln(th_e)))
    s_z, s_e = a_z * (1 - a_z), a_e * (1 - a_e)
    kl = a_e - outer(th_e, s_e) - a_z + outer(th_z, s_z)
    g_z, g_e = ln(lin(ef.p_z, s_z @ m_t)), ln(lin(ef.p_e, s_e @ m_t))
    lam = lambda x: x @ ef.lam.weight.T + ef.lam.bias
    rz = th_z.sum(1, keepdim=True)
    re = th_e.sum(1, keepdim=True)
    d_z = lam(-g_z + lin(ef.p_z, ln(s_z)) + rz * ln(g_z * (1 - a_z)) - rz * ln(g_z * a_z))
    d_e = lam(g_e - lin(ef.p_e, ln(s_e)) - re * ln(g_e * (1 - a_e)) + re * ln(g_e * a_e))
    tsum = sum(lin(ef.t, zh[b:b + 1]) for b in range(zh.shape[0]))
    pi_z = lin(ef.p_z, tsum) + zh.shape[0] * lin(ef.t, th_z) - g_z
    pi_e = 2 * rz * th_e
    el = torch.sqrt(((d_z + pi_z) ** 2).sum(1)) + torch.sqrt(((d_e + pi_e) ** 2).sum(1)) + torch.sqrt((kl ** 2).sum(1))
    return kl, el


@pytest.mark.parametrize("mask,training", [("mean", True), ("mean", False), ("none", True)])
def test_ef_conversion_equals_literal_outer_product_graph(mask, training):
    ef = EFConversion(5, mask=mask).double().train(training)
    zh, eh = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    kl, el = ef(zh, eh)
    kl_ref, el_ref = _literal_ef(ef, zh, eh)
    assert kl.shape == (7, 5) and el.shape == (7,)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(el, el_ref, rtol=1e-12, atol=1e-12)


def test_ef_mask_changes_training_output_and_has_no_gradient_through_it():
    ef = EFConversion(4).double()
    zh, eh = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    masked = ef.train()(zh, eh)[0]
    plain = ef.eval()(zh, eh)[0]
    assert not torch.allclose(masked, plain)
    ef.train()
    ef(zh, eh)[1].sum().backward()
    dropped = ef.ln_a.abs() < ef.ln_a.abs().mean()
    assert torch.all(ef.ln_a.grad[dropped] == 0) and ef.ln_a.grad[~dropped].abs().sum() > 0


def test_ipe_transform_module_matches_matrix_exponentials_and_inverts():
    ipe = IPETransform(4, num_units=3, factors_per_unit=2).double()
    assert ipe.weight.shape == (3, 2, 4, 4)
    assert ipe.weight.abs().max() <= math.sqrt(3 / 4)
    z, eps = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    z_hat, eps_hat, logdet = ipe(z, eps)
    w = ipe.weight.detach()
    s = (w + w.transpose(-1, -2)) / 2
    e = torch.linalg.matrix_exp(s[:, 0]) @ torch.linalg.matrix_exp(s[:, 1])
    torch.testing.assert_close(z_hat, z @ e)
    torch.testing.assert_close(eps_hat, eps @ e)
    torch.testing.assert_close(logdet, torch.linalg.slogdet(e)[1])
    torch.testing.assert_close(ipe.inverse(z_hat), z.expand(3, 5, 4))


def test_ipe_paper_form_single_factor():
    ipe = IPETransform(3, num_units=2, factors_per_unit=1).double()
    z = torch.randn(4, 3, dtype=torch.float64)
    z_hat = ipe(z, z)[0]
    s = (ipe.weight[:, 0] + ipe.weight[:, 0].transpose(-1, -2)) / 2
    torch.testing.assert_close(z_hat, z @ torch.linalg.matrix_exp(s.detach()))


def _literal_mipe(mipe, decoder, x, mu, logvar, z, tcvae=None):
    """MIPE's loss written out per unit from the spec formulas (float64)."""
    eps = (z - mu) / torch.exp(0.5 * logvar)
    w = mipe.ipe.weight
    s = (w + w.transpose(-1, -2)) / 2
    probs, kl_ef, el = [], 0, 0
    for u in range(mipe.num_units):
        e = torch.eye(z.shape[1], dtype=z.dtype)
        for k in range(w.shape[1]):
            e = e @ torch.linalg.matrix_exp(s[u, k])
        kl_u, el_u = _literal_ef(mipe.ef[u], z @ e, eps @ e)
        kl_ef, el = kl_ef + kl_u.sum(1), el + el_u
        probs.append(torch.sigmoid(decoder(z @ e)))
    x_hat = sum(probs) / len(probs)
    bce = -(x * torch.clamp(torch.log(x_hat), min=-100) + (1 - x) * torch.clamp(torch.log(1 - x_hat), min=-100))
    recon = bce.sum() / x.shape[0]
    kl_g = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)
    reg = el.mean() + ((kl_ef - mipe.num_units * kl_g) ** 2).mean()
    if tcvae is None:
        return recon + mipe.beta * kl_ef.mean() + reg
    mi, tc, dkl = total_correlation_terms(z, mu, logvar, tcvae.dataset_size, tcvae.estimator)
    return recon + tcvae.alpha * mi + tcvae.beta * tc + tcvae.gamma * dkl + reg


@pytest.mark.parametrize("form", ["beta-vae", "beta-tcvae"])
def test_mipe_loss_matches_literal_transcription(form):
    torch.manual_seed(1)
    n, b = 4, 6
    mipe = MIPE(n, beta=2.0).double()
    decoder = MLPDecoder(n, image_size=4, hidden_dim=8).double()
    x = (torch.rand(b, 1, 4, 4, dtype=torch.float64) > 0.5).double()
    mu, logvar = torch.randn(b, n, dtype=torch.float64), 0.3 * torch.randn(b, n, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(b, n, dtype=torch.float64)
    tcvae = BetaTCVAELoss(100, beta=6.0) if form == "beta-tcvae" else None
    terms = mipe(decoder, x, mu, logvar, z, tcvae=tcvae)
    torch.testing.assert_close(terms.loss, _literal_mipe(mipe, decoder, x, mu, logvar, z, tcvae), rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(terms.reg, terms.el + terms.cali)
    torch.testing.assert_close(terms.kl, gaussian_kl(mu, logvar).mean())
    assert (terms.tc is None) == (tcvae is None)


def test_mipe_gradcheck_small_float64():
    torch.manual_seed(2)
    n, b = 3, 4
    mipe = MIPE(n, num_units=2, mask="none").double()
    decoder = MLPDecoder(n, image_size=2, hidden_dim=4).double()
    x = (torch.rand(b, 1, 2, 2, dtype=torch.float64) > 0.5).double()
    logvar = 0.2 * torch.randn(b, n, dtype=torch.float64)
    eps = torch.randn(b, n, dtype=torch.float64)
    w0 = mipe.ipe.weight.detach().clone()

    def fn(mu, w):
        z = mu + torch.exp(0.5 * logvar) * eps
        return _with_weight(mipe, w, decoder, x, mu, logvar, z, eps)

    mu = torch.randn(b, n, dtype=torch.float64, requires_grad=True)
    w = w0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (mu, w), eps=1e-6, atol=1e-5, rtol=1e-4)


def _with_weight(mipe, w, decoder, x, mu, logvar, z, eps):
    """MIPE's loss with the IPE weight replaced by the tensor w (so gradcheck can perturb it)."""
    param = mipe.ipe._parameters.pop("weight")
    try:
        mipe.ipe.weight = w
        return mipe(decoder, x, mu, logvar, z, eps).loss
    finally:
        del mipe.ipe.weight
        mipe.ipe._parameters["weight"] = param


def test_mipe_detached_noise_gives_the_same_gradient_as_traced_noise():
    torch.manual_seed(3)
    mipe = MIPE(3, num_units=2).double()
    decoder = MLPDecoder(3, image_size=2, hidden_dim=4).double()
    x = (torch.rand(4, 1, 2, 2, dtype=torch.float64) > 0.5).double()
    noise = torch.randn(4, 3, dtype=torch.float64)
    grads = []
    for detach in (True, False):
        mu = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
        logvar = (0.1 * torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
                  ).requires_grad_()
        z = mu + torch.exp(0.5 * logvar) * noise
        eps = None if detach else (z - mu) * torch.exp(-0.5 * logvar)
        grads.append(torch.autograd.grad(mipe(decoder, x, mu, logvar, z, eps).loss, (mu, logvar)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_mipe_code_switch():
    mipe = MIPE(4, represent="z_hat").double()
    mu = torch.randn(3, 4, dtype=torch.float64)
    z_hat = mipe.ipe(mu, mu)[0]
    torch.testing.assert_close(mipe.code(mu), z_hat.mean(0))
    assert MIPE(4).code(mu) is mu


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="mask"):
        MIPE(4, mask="median")
    with pytest.raises(ValueError, match="represent"):
        MIPE(4, represent="mu")
    with pytest.raises(ValueError, match="factors_per_unit"):
        IPETransform(4, factors_per_unit=0)
    ipe = IPETransform(4)
    with pytest.raises(ValueError, match=r"z must be \[B, 4\]"):
        ipe(torch.randn(2, 5), torch.randn(2, 5))
    with pytest.raises(ValueError, match="eps"):
        ipe(torch.randn(2, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="z_hat"):
        ipe.inverse(torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match="z_hat"):
        EFConversion(4)(torch.randn(2, 3), torch.randn(2, 3))
    mipe, dec = MIPE(4), MLPDecoder(4, image_size=2, hidden_dim=4)
    x = torch.rand(2, 1, 2, 2)
    mu = torch.randn(2, 5)
    with pytest.raises(ValueError, match="latent_dim 4"):
        mipe(dec, x, mu, mu, mu)
    mu = torch.randn(2, 4)
    with pytest.raises(TypeError, match="tcvae"):
        mipe(dec, x, mu, mu, mu, tcvae="tc")
    with pytest.raises(ValueError, match="x must have"):
        mipe(dec, torch.rand(2, 1, 3, 3), mu, mu, mu)
