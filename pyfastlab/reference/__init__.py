"""Readable pure-PyTorch references: the oracles of the tests and the baselines of the benchmarks."""
from . import cka, continual, kd, vae_ops, vidvrd_ops, vidvrd_viou

__all__ = ["cka", "continual", "kd", "vae_ops", "vidvrd_ops", "vidvrd_viou"]
