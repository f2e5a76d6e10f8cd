"""Benchmark cases: what to run, on which inputs, and how many bytes a perfect kernel moves."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

import torch


@dataclasses.dataclass
class Implementation:
    """One way of computing a case. `run(inputs)` performs the timed work (forward and, when the
    case says so, backward) and returns the tensors that are compared with the eager result."""
    name: str          # "eager", "compiled", or a pyfastlab backend
    run: Callable[[dict], tuple]
    kind: str = "pyfastlab"  # "baseline" or "pyfastlab"


@dataclasses.dataclass
class BenchCase:
    family: str
    op: str
    label: str                  # the shape/options, e.g. "4096x1000 const"
    device: str
    dtype: torch.dtype
    make_inputs: Callable[[float], dict]   # scale (1 = full size, 1/16 in CI) -> inputs
    implementations: Callable[[], list[Implementation]]
    bytes_moved: Callable[[dict], int]     # ideal one-pass traffic of the op
    unit_bytes: Callable[[dict], int]      # size of one [N, C] buffer: peak memory is reported in these
    flops: Callable[[dict], int] = lambda inputs: 0
    tolerance: dict = dataclasses.field(default_factory=lambda: dict(atol=1e-4, rtol=1e-4))
    target: str = ""            # the spec's target, printed beside the result
    # False for pure-Python baselines: the profiler behind the CPU peak memory records every Python
    # call (with_stack) and runs out of memory on evaluate's millions of them
    measure_memory: bool = True

    @property
    def name(self) -> str:
        return f"{self.op}[{self.label}, {str(self.dtype).replace('torch.', '')}, {self.device}]"


_CASES: list[BenchCase] = []


def register(case: BenchCase) -> BenchCase:
    _CASES.append(case)
    return case


def _load_family_modules():
    """Imports every pyfastlab.bench.<family>_cases module: importing one registers its cases."""
    from . import __path__ as package_path

    for info in pkgutil.iter_modules(package_path):
        if info.name.endswith("_cases"):
            importlib.import_module(f"{__package__}.{info.name}")


def all_cases(family: str | None = None, device: str | None = None) -> list[BenchCase]:
    _load_family_modules()
    return [c for c in _CASES if (family is None or c.family == family) and (device is None or c.device == device)]


def compare(result: tuple, expected: tuple, tolerance: dict[str, Any]) -> str | None:
    """None if every tensor matches the eager result, else what differs."""
    for i, (a, b) in enumerate(zip(result, expected)):
        if a is None and b is None:
            continue
        if not torch.allclose(a.double(), b.double(), equal_nan=True, **tolerance):
            diff = (a.double() - b.double()).abs().nan_to_num(0).max().item()
            return f"output {i} differs from eager by up to {diff:.3g}"
    return None
