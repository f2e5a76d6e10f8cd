"""Encoders and decoders (vae.md 4.1): the standard 64x64 conv pair of the MIPE / CFASL code and
the small MLP pair of the demo, plus the Gaussian reparameterisation.

Encoders map images `[B, C, S, S]` in [0, 1] to (mu, logvar) `[B, n]`; decoders map z `[B, n]`
to logits `[B, C, S, S]` (a sigmoid gives Bernoulli means).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..ops._checks import check_tensor


def _positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def xavier_init_(module: nn.Module) -> nn.Module:
    """Xavier-uniform for every >= 2-D weight, zero biases (as coded in both methods' repos)."""
    for p in module.parameters():
        if p.dim() >= 2:
            nn.init.xavier_uniform_(p)
        else:
            nn.init.zeros_(p)
    return module


def check_images(name: str, x: Tensor, channels: int, size: int) -> None:
    check_tensor(name, x, floating=True, dim=4)
    if x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise ValueError(f"{name} must be [B, {channels}, {size}, {size}] images, got shape {tuple(x.shape)}")


def check_latent(name: str, z: Tensor, latent_dim: int) -> None:
    check_tensor(name, z, floating=True, dim=2)
    if z.shape[1] != latent_dim:
        raise ValueError(f"{name} must be [B, {latent_dim}] (latent_dim {latent_dim}), got shape {tuple(z.shape)}")


def reparameterize(mu: Tensor, logvar: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (sampled in train and eval, as coded)."""
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


class _GaussianHeads(nn.Module):
    def __init__(self, hidden_dim: int, latent_dim: int):
        super().__init__()
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(h), self.logvar(h)


class ConvEncoder(nn.Module):
    """64x64 conv encoder: four k4 s2 unpadded convs (64 -> 31 -> 14 -> 6 -> 2) with ReLU, a
    Linear(256 -> hidden_dim) without activation, and Linear heads for mu and log sigma^2.
    hidden_dim 128 (dSprites) or 256 (3D Shapes, 3D Cars)."""

    image_size = 64

    def __init__(self, latent_dim: int = 10, in_channels: int = 1, hidden_dim: int = 128):
        super().__init__()
        self.latent_dim = _positive("latent_dim", latent_dim)
        self.in_channels = _positive("in_channels", in_channels)
        _positive("hidden_dim", hidden_dim)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 4, 2), nn.ReLU(), nn.Conv2d(32, 32, 4, 2), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2), nn.ReLU(), nn.Conv2d(64, 64, 4, 2), nn.ReLU(), nn.Flatten(),
            nn.Linear(256, hidden_dim))
        self.heads = _GaussianHeads(hidden_dim, latent_dim)
        xavier_init_(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_images("x", x, self.in_channels, self.image_size)
        return self.heads(self.features(x))


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder: Linear(n -> h)-ReLU, Linear(h -> 1024)-ReLU, [64, 4, 4], three
    ConvT(k4, s2, p1)-ReLU and a last ConvT to out_channels logits (4 -> 8 -> 16 -> 32 -> 64)."""

    image_size = 64

    def __init__(self, latent_dim: int = 10, out_channels: int = 1, hidden_dim: int = 128):
        super().__init__()
        self.latent_dim = _positive("latent_dim", latent_dim)
        _positive("out_channels", out_channels)
        _positive("hidden_dim", hidden_dim)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1024), nn.ReLU(),
            nn.Unflatten(1, (64, 4, 4)),
            nn.ConvTranspose2d(64, 64, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, out_channels, 4, 2, 1))
        xavier_init_(self)

    def forward(self, z: Tensor) -> Tensor:
        check_latent("z", z, self.latent_dim)
        return self.net(z)


class MLPEncoder(nn.Module):
    """The demo's encoder (vae.md 8): flatten C*S*S -> hidden -> hidden -> (mu, logvar), ReLU."""

    def __init__(self, latent_dim: int = 10, image_size: int = 32, in_channels: int = 1, hidden_dim: int = 256):
        super().__init__()
        self.latent_dim = _positive("latent_dim", latent_dim)
        self.image_size = _positive("image_size", image_size)
        self.in_channels = _positive("in_channels", in_channels)
        _positive("hidden_dim", hidden_dim)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, hidden_dim), nn.ReLU(),
                                      nn.Linear(hidden_dim, hidden_dim), nn.ReLU())
        self.heads = _GaussianHeads(hidden_dim, latent_dim)
        xavier_init_(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_images("x", x, self.in_channels, self.image_size)
        return self.heads(self.features(x))


class MLPDecoder(nn.Module):
    """The demo's decoder: n -> hidden -> hidden -> C*S*S logits, ReLU, reshaped to images."""

    def __init__(self, latent_dim: int = 10, image_size: int = 32, out_channels: int = 1, hidden_dim: int = 256):
        super().__init__()
        self.latent_dim = _positive("latent_dim", latent_dim)
        _positive("image_size", image_size)
        _positive("out_channels", out_channels)
        _positive("hidden_dim", hidden_dim)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.ReLU(), nn.Linear(hidden_dim, out_channels * image_size ** 2),
                                 nn.Unflatten(1, (out_channels, image_size, image_size)))
        xavier_init_(self)

    def forward(self, z: Tensor) -> Tensor:
        check_latent("z", z, self.latent_dim)
        return self.net(z)


class VAE(nn.Module):
    """An encoder/decoder pair with matching latent sizes. forward(x) → (logits, mu, logvar, z)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        enc_n, dec_n = getattr(encoder, "latent_dim", None), getattr(decoder, "latent_dim", None)
        if enc_n is not None and dec_n is not None and enc_n != dec_n:
            raise ValueError(f"encoder latent_dim {enc_n} does not match decoder latent_dim {dec_n}")
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim = enc_n if enc_n is not None else dec_n

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None):
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar, generator)
        return self.decoder(z), mu, logvar, z

    @torch.no_grad()
    def encode_mean(self, x: Tensor) -> Tensor:
        """mu of q(z|x): the metrics' default code."""
        return self.encoder(x)[0]
