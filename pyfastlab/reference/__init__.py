"""Readable pure-PyTorch references: the oracles of the tests and the baselines of the benchmarks."""
from . import continual, kd

__all__ = ["continual", "kd"]
