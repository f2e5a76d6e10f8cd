"""Backbones: the shapes of vae.md 4.1, initialisation, and clear errors for wrong images or latents."""
import pytest
import torch

from pyfastlab.vae import VAE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, reparameterize


def test_conv_pair_shapes_and_layers():
    enc, dec = ConvEncoder(latent_dim=6, in_channels=3, hidden_dim=256), ConvDecoder(6, out_channels=3, hidden_dim=256)
    x = torch.rand(5, 3, 64, 64)
    mu, logvar = enc(x)
    assert mu.shape == logvar.shape == (5, 6)
    assert enc.features[:-2](x).shape == (5, 64, 2, 2)        # 64 -> 31 -> 14 -> 6 -> 2
    assert dec(mu).shape == (5, 3, 64, 64)
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.padding == (0, 0) and m.stride == (2, 2) and m.kernel_size == (4, 4) for m in convs)
    assert not isinstance(enc.features[-1], torch.nn.ReLU)     # Linear(256 -> h) without activation


def test_xavier_init_and_zero_biases():
    torch.manual_seed(0)
    enc = ConvEncoder()
    weight = enc.features[-1].weight.detach()                           # Linear(256, 128)
    bound = (6 / (256 + 128)) ** 0.5
    assert float(weight.abs().max()) <= bound and float(weight.abs().max()) > 0.9 * bound
    assert all(float(p.detach().abs().sum()) == 0 for p in enc.parameters() if p.dim() == 1)


def test_mlp_pair_and_vae_forward():
    torch.manual_seed(0)
    model = VAE(MLPEncoder(10, image_size=32), MLPDecoder(10, image_size=32))
    x = torch.rand(4, 1, 32, 32)
    logits, mu, logvar, z = model(x, torch.Generator().manual_seed(0))
    assert logits.shape == x.shape and z.shape == mu.shape == (4, 10)
    assert torch.equal(model.encode_mean(x), mu.detach())


def test_reparameterize_is_seeded_and_differentiable():
    mu = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    a = reparameterize(mu, logvar, torch.Generator().manual_seed(5))
    b = reparameterize(mu, logvar, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    eps = (a - mu) / torch.exp(0.5 * logvar)
    a.sum().backward()
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps.detach())


def test_wrong_images_and_latents_raise():
    with pytest.raises(ValueError, match=r"x must be \[B, 1, 64, 64\]"):
        ConvEncoder()(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"x must be \[B, 1, 32, 32\]"):
        MLPEncoder(image_size=32)(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"z must be \[B, 10\]"):
        ConvDecoder(10)(torch.randn(2, 6))
    with pytest.raises(ValueError, match="4-D"):
        ConvEncoder()(torch.rand(1, 64, 64))
    with pytest.raises(ValueError, match="does not match"):
        VAE(MLPEncoder(6), MLPDecoder(10))
    with pytest.raises(ValueError, match="latent_dim"):
        ConvEncoder(latent_dim=0)
    with pytest.raises(ValueError, match="same shape"):
        reparameterize(torch.zeros(2, 3), torch.zeros(2, 4))
