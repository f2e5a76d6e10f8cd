"""`pyfastlab check`: every op on every available kernel backend (cpu, cuda, triton) against the
float64 reference, on fresh random inputs, forward and backward. What a user runs after installing
on a new machine. The reference backend is what the others are checked against, so it has no row.

Families register a check per op in pyfastlab/checks/<family>.py: `check(backend, device, dtype,
generator) -> (forward_ok, backward_ok)`.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import random
from typing import Callable

import torch

from ..ops import _backends

TOLERANCE = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-9, rtol=1e-9)}
_CHECKS: dict[str, Callable] = {}


@dataclasses.dataclass
class CheckResult:
    op: str
    backend: str
    device: str
    dtype: str
    forward_ok: bool
    backward_ok: bool
    detail: str = ""


def register(op: str, check: Callable) -> None:
    _CHECKS[op] = check


def close(a, b, dtype) -> bool:
    return torch.allclose(a.double().cpu(), b.double().cpu(), equal_nan=True, **TOLERANCE[dtype])


def _load_families():
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def run_checks(seed: int | None = None) -> list[CheckResult]:
    _load_families()
    seed = random.randrange(2**31) if seed is None else seed
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = []
    for op, check in _CHECKS.items():
        for device in devices:
            for backend in (b for b in _backends.available(device) if b != "reference"):
                for dtype in (torch.float32, torch.float64):
                    gen = torch.Generator().manual_seed(seed)
                    try:
                        fwd, bwd = check(backend, device, dtype, gen)
                        detail = f"seed {seed}"
                    except Exception as exc:  # reported as a failure, with the reason
                        fwd = bwd = False
                        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
                    results.append(CheckResult(op, backend, device.type, str(dtype).replace("torch.", ""), fwd, bwd,
                                               detail))
    return results
