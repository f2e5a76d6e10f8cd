"""Readable pure-PyTorch references: the oracles of the tests and the baselines of the benchmarks."""
from . import cka, continual, distill, kd, mixup, vae_ops, vidvrd_ops, vidvrd_viou

__all__ = ["cka", "continual", "distill", "kd", "mixup", "vae_ops", "vidvrd_ops", "vidvrd_viou"]
