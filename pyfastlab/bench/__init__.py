"""Benchmark harness behind `pyfastlab bench` and bench/bench_<family>.py.

Families register their cases (`registry.register`); the runner times every implementation of a
case side by side in one process and the report prints and saves the results.
"""
from .registry import BenchCase, Implementation, all_cases, register

__all__ = ["BenchCase", "Implementation", "register", "all_cases"]
