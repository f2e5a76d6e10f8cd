"""CFASL (vae.md 4.3): codebook regularisers vs float64 brute force from the spec formulas, the
tiled parallel loss vs untiled, the attention, the equivariance losses, gradients, bad input."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from pyfastlab.vae import (CFASL, BetaTCVAELoss, BetaVAELoss, CompositeAttention, MLPDecoder, SymmetryCodebook)

D64 = torch.float64


@pytest.fixture(autouse=True)
def _seeded():
    # torch's default seed differs per process: every test starts from the same state
    torch.manual_seed(0)


def _codebook(n, ss, seed=0, scale=0.3):
    cb = SymmetryCodebook(n, ss).double()
    with torch.no_grad():
        cb.generators.copy_(scale * torch.randn(n * ss, n, n, dtype=D64, generator=torch.Generator().manual_seed(seed)))
    return cb


def _disp(cb, z):
    return torch.stack([z - z @ torch.linalg.matrix_exp(g) for g in cb.generators])


def _cos(u, v):
    u, v = u.detach(), v.detach()
    return float(u @ v) / max(float(u.norm() * v.norm()), 1e-12)


def test_displacements_and_sparsity_loss():
    cb = _codebook(3, 2)
    z = torch.randn(4, 3, dtype=D64)
    d = cb.displacements(z)
    torch.testing.assert_close(d, _disp(cb, z))
    ref = sum((sum(d[k, b] ** 2) - max(d[k, b] ** 2)) ** 2 for k in range(6) for b in range(4)) / 24
    torch.testing.assert_close(cb.sparsity_loss(d), ref)


def test_sparsity_is_zero_for_single_column_generators():
    cb = SymmetryCodebook(4, 2).double()
    with torch.no_grad():
        cb.generators.zero_()
        for k in range(8):
            cb.generators[k, :, k % 4] = torch.randn(4, dtype=D64)
    z = torch.randn(5, 4, dtype=D64)
    with torch.no_grad():
        assert float(cb.sparsity_loss(cb.displacements(z))) < 1e-20


def test_parallel_loss_matches_brute_force():
    n, ss, b = 3, 2, 3
    cb = _codebook(n, ss, seed=1)
    d = cb.displacements(torch.randn(b, n, dtype=D64))
    total = 0.0
    for i in range(n):
        vecs = [d[i * ss + j, bb] for j in range(ss) for bb in range(b)]
        total += sum(-math.log(_cos(u, v) ** 2 + 1e-9) for u in vecs for v in vecs) / len(vecs) ** 2
    torch.testing.assert_close(cb.parallel_loss(d), torch.tensor(total / n, dtype=D64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("tile_rows", [1, 5, 12, 25])
def test_parallel_loss_tiled_equals_untiled_values_and_gradients(tile_rows):
    # M = SS * B = 12 rows per section: tiles split sections (1, 5), hold one (12) or two (25)
    cb = _codebook(4, 3, seed=2)
    z = torch.randn(4, 4, dtype=D64)
    whole = cb.parallel_loss(cb.displacements(z), tile_rows=None)
    g_whole, = torch.autograd.grad(whole, cb.generators)
    tiled = cb.parallel_loss(cb.displacements(z), tile_rows=tile_rows)
    g_tiled, = torch.autograd.grad(tiled, cb.generators)
    torch.testing.assert_close(tiled, whole, rtol=1e-13, atol=0)
    torch.testing.assert_close(g_tiled, g_whole, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("perp_index", ["slot", "reference"])
def test_perpendicular_loss_matches_brute_force(perp_index):
    n, ss, b = 3, 4, 2
    cb = _codebook(n, ss, seed=3)
    d = cb.displacements(torch.randn(b, n, dtype=D64))
    got = cb.perpendicular_loss(d, perp_index=perp_index, generator=torch.Generator().manual_seed(7), tile_rows=2)
    high = n if perp_index == "reference" else ss
    slots = torch.randint(high, (n,), generator=torch.Generator().manual_seed(7))
    vecs = [(i, d[i * ss + int(slots[i]), bb]) for i in range(n) for bb in range(b)]
    ref = sum(_cos(u, v) ** 2 for (si, u) in vecs for (sj, v) in vecs if si != sj) / (n * b) ** 2
    torch.testing.assert_close(got, torch.tensor(ref, dtype=D64))


def test_perpendicular_reference_index_is_forced_to_slots_when_latent_exceeds_section():
    cb = _codebook(5, 2, seed=4)
    d = cb.displacements(torch.randn(3, 5, dtype=D64))
    a = cb.perpendicular_loss(d, perp_index="reference", generator=torch.Generator().manual_seed(1))
    b = cb.perpendicular_loss(d, perp_index="slot", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_commutativity_pairs_matches_brute_force_and_vanishes_for_diagonal():
    cb = _codebook(3, 3, seed=5)
    g = cb.generators.detach()
    k = g.shape[0]
    ref = sum(((g[a] @ g[b] - g[b] @ g[a]) ** 2).sum() for a in range(k) for b in range(a + 1, k)) * 2 / (k * (k - 1))
    torch.testing.assert_close(cb.commutativity_loss(chunk=4), ref)
    with torch.no_grad():
        cb.generators.copy_(torch.diag_embed(torch.randn(k, 3, dtype=D64)))
    assert float(cb.commutativity_loss().detach()) == 0.0


def test_commutativity_reference_closed_form_from_flat_indices():
    n, ss = 4, 16
    cb = _codebook(n, ss, seed=6)
    k = n * ss
    flat = cb.generators.detach().reshape(-1)
    c = lambda j: torch.stack([torch.stack([flat[r * n * k + j * n + col] for col in range(n)]) for r in range(n)])
    g = cb.generators.detach()
    pairs = list(itertools.combinations(range(ss), 2))      # lexicographic: rank = position + 1
    total = sum((len(pairs) + 1 - (rank + 1)) * ((g[i] @ c(j) - g[j] @ c(i)) ** 2).sum()
                for rank, (i, j) in enumerate(pairs))
    torch.testing.assert_close(cb.commutativity_loss(commutator="reference"), 2 * total / (n * k) ** 2, rtol=1e-13,
                               atol=0)


def test_regularizer_gradcheck_float64():
    cb = _codebook(2, 2, seed=7, scale=0.5)
    z = torch.randn(3, 2, dtype=D64)

    def fn(g):
        param = cb._parameters.pop("generators")
        try:
            cb.generators = g
            regs = cb.regularizers(z, generator=torch.Generator().manual_seed(0), tile_rows=3)
            return (regs["sparsity"], regs["parallel"], regs["perpendicular"], regs["commutativity"],
                    cb.commutativity_loss(commutator="reference"))
        finally:
            del cb.generators
            cb._parameters["generators"] = param

    assert torch.autograd.gradcheck(fn, (cb.generators.detach().clone().requires_grad_(),), eps=1e-6, atol=1e-5)


def test_zero_generators_give_finite_losses_and_gradients():
    cb = SymmetryCodebook(3, 2).double()
    with torch.no_grad():
        cb.generators.zero_()
    regs = cb.regularizers(torch.randn(4, 3, dtype=D64))
    total = sum(regs.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(cb.generators.grad).all()


@pytest.mark.parametrize("reference_bugs", [False, True])
def test_attention_weights_and_switch_loss(reference_bugs):
    n, ss, p = 3, 4, 5
    att = CompositeAttention(n, ss, threshold=0.2, tau=0.5, reference_bugs=reference_bugs).double()
    mu, logvar = torch.randn(2 * p, n, dtype=D64), 0.3 * torch.randn(2 * p, n, dtype=D64)
    z = mu + 0.3 * torch.randn(2 * p, n, dtype=D64)
    w, lp = att(mu, logvar, z, torch.Generator().manual_seed(3))
    sig = torch.exp(0.5 * logvar)
    sig2 = torch.exp(0.5 * mu[p:]) if reference_bugs else sig[p:]
    o = torch.cat([mu[:p], sig[:p], mu[p:], sig2], 1) @ att.linear.weight.T + att.linear.bias
    logits = o[:, :2 * n].reshape(p, n, 2)
    slots = torch.softmax(o[:, 2 * n:].reshape(p, n, ss), -1)
    labels = ((z[:p] - z[p:]).abs() > 0.2).long()
    probs = torch.softmax(logits, -1)
    ce_in = probs if reference_bugs else logits
    ce = -torch.log_softmax(ce_in, -1).gather(-1, labels.unsqueeze(-1)).sum() / p
    torch.testing.assert_close(lp, ce)
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(3), dtype=D64)
    on = torch.softmax((logits - torch.log(-torch.log(u))) / 0.5, -1)[..., 1]
    torch.testing.assert_close(w, (on.unsqueeze(-1) * slots).reshape(p, n * ss))


def _pair_batch(n, p, dtype=D64, same=False):
    mu = torch.randn(2 * p, n, dtype=dtype)
    logvar = 0.2 * torch.randn(2 * p, n, dtype=dtype)
    x = (torch.rand(2 * p, 1, 2, 2, dtype=dtype) > 0.5).to(dtype)
    if same:
        mu, logvar, x = mu[:p].repeat(2, 1), logvar[:p].repeat(2, 1), x[:p].repeat(2, 1, 1, 1)
    return x, mu, logvar, mu.clone()


def test_identity_symmetry_gives_zero_equivariance_loss():
    torch.manual_seed(8)
    n, p = 3, 4
    cfasl = CFASL(n, 2).double()
    with torch.no_grad():
        cfasl.codebook.generators.zero_()
    dec = MLPDecoder(n, image_size=2, hidden_dim=4).double()
    x, mu, logvar, z = _pair_batch(n, p, same=True)
    terms = cfasl(dec, x, mu, logvar, z, BetaVAELoss(4.0), torch.Generator().manual_seed(0))
    assert float(terms.encoder_equivariance.detach()) == 0.0
    torch.testing.assert_close(terms.decoder_equivariance, terms.recon)     # Dec(z2) vs x1 = Dec(z1) vs x1


@pytest.mark.parametrize("base", ["beta-vae", "beta-tcvae"])
def test_cfasl_loss_matches_spec_composition(base):
    torch.manual_seed(9)
    n, ss, p = 3, 2, 3
    cfasl = CFASL(n, ss, alpha=0.7, gamma=1.3, lam=0.9, epsilon=0.1, init_std=0.3).double()
    dec = MLPDecoder(n, image_size=2, hidden_dim=4).double()
    x, mu, logvar, _ = _pair_batch(n, p)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    loss = BetaVAELoss(4.0) if base == "beta-vae" else BetaTCVAELoss(50, beta=6.0)
    terms = cfasl(dec, x, mu, logvar, z, loss, torch.Generator().manual_seed(4))
    # independent recomputation: attention and regularisers (tested above) with the same random draws
    gen = torch.Generator().manual_seed(4)
    w, lp = cfasl.attention(mu, logvar, z, gen)
    regs = cfasl.codebook.regularizers(z, generator=gen)
    a = torch.einsum("pk,kij->pij", w, cfasl.codebook.generators)
    y1 = torch.einsum("pi,pij->pj", z[:p], torch.linalg.matrix_exp(a))
    y2 = torch.einsum("pi,pij->pj", z[p:], torch.linalg.matrix_exp(-a))
    lee = ((y2 - z[:p]) ** 2).mean() + ((y1 - z[p:]) ** 2).mean()
    lde = F.binary_cross_entropy_with_logits(dec(torch.cat([y2, y1])), x, reduction="sum") / (2 * p)
    base_terms = loss(dec(z), x, mu, logvar) if base == "beta-vae" else loss(dec(z), x, mu, logvar, z)
    ref = base_terms.loss + 0.7 * sum(regs.values()) + 1.3 * lp + 0.9 * lee + 0.1 * lde
    torch.testing.assert_close(terms.loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(terms.encoder_equivariance, lee)
    torch.testing.assert_close(terms.decoder_equivariance, lde)


def test_cfasl_gradcheck_through_composite_symmetry():
    torch.manual_seed(10)
    n, p = 2, 2
    cfasl = CFASL(n, 2, tau=1.0, init_std=0.3).double()
    dec = MLPDecoder(n, image_size=2, hidden_dim=3).double()
    x, _, logvar, _ = _pair_batch(n, p)

    def fn(mu):
        return cfasl(dec, x, mu, logvar, mu + 0.1, BetaVAELoss(2.0), torch.Generator().manual_seed(0)).loss

    mu = (0.5 * torch.randn(2 * p, n, dtype=D64)).requires_grad_()
    assert torch.autograd.gradcheck(fn, (mu,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_param_groups_scale_the_attention_lr():
    groups = CFASL(3, 2).param_groups(1e-3)
    assert groups[0]["lr"] == 1e-3 and abs(groups[1]["lr"] - 2e-4) < 1e-12


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="commutator"):
        CFASL(3, commutator="all")
    with pytest.raises(ValueError, match="perp_index"):
        CFASL(3, perp_index="random")
    with pytest.raises(ValueError, match="section_size"):
        SymmetryCodebook(3, 0)
    cb = SymmetryCodebook(3, 2)
    with pytest.raises(ValueError, match=r"z must be \[B, 3\]"):
        cb.displacements(torch.randn(4, 5))
    with pytest.raises(ValueError, match="d must be displacements"):
        cb.parallel_loss(torch.randn(5, 4, 3))
    with pytest.raises(ValueError, match="tile_rows"):
        cb.parallel_loss(cb.displacements(torch.randn(2, 3)), tile_rows=0)
    with pytest.raises(ValueError, match="commutator"):
        cb.commutativity_loss(commutator="x")
    cfasl, dec = CFASL(3, 2), MLPDecoder(3, image_size=2, hidden_dim=4)
    x, mu = torch.rand(4, 1, 2, 2), torch.randn(4, 3)
    with pytest.raises(ValueError, match="even"):
        cfasl(dec, x[:3], mu[:3], mu[:3], mu[:3], BetaVAELoss())
    with pytest.raises(ValueError, match="latent_dim 3"):
        cfasl(dec, x, torch.randn(4, 4), torch.randn(4, 4), torch.randn(4, 4), BetaVAELoss())
    with pytest.raises(TypeError, match="base"):
        cfasl(dec, x, mu, mu, mu, "beta")
