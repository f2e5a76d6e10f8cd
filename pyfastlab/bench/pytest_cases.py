"""What bench/bench_<family>.py runs under pytest: one group per (op, shape, dtype, device)
holding the eager reference, torch.compile(reference) and every pyfastlab backend.

`make test` runs them once at N/16 with --benchmark-disable, as correctness smoke tests;
`pytest bench/bench_<family>.py` times them at full size.
"""
from __future__ import annotations

import pytest
import torch

from .registry import all_cases, compare


def params(family: str) -> list:
    """pytest params (case, implementation name) of a family's cases."""
    out = []
    for case in all_cases(family):
        marks = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")] \
            if case.device == "cuda" else []
        names = ["eager", "compiled"] + [b for b in ("cpu", "cuda", "triton") if b != "triton" or case.device == "cuda"]
        for name in names:
            out.append(pytest.param(case, name, marks=marks, id=f"{case.name}-{name}"))
    return out


def run(benchmark, request, case, impl_name) -> None:
    """Checks the implementation against the eager reference once, then times it."""
    disabled = request.config.getoption("benchmark_disable")
    scale = 1 / 16 if disabled else 1.0
    impls = {impl.name: impl for impl in case.implementations()}
    if impl_name not in impls:
        pytest.skip(f"backend {impl_name} is not available here")
    inputs = case.make_inputs(scale)
    expected = [t.clone() for t in impls["eager"].run(case.make_inputs(scale))]
    error = compare(impls[impl_name].run(case.make_inputs(scale)), expected, case.tolerance)
    assert error is None, error
    benchmark.group = case.name
    benchmark.extra_info.update(bytes=case.bytes_moved(inputs), flops=case.flops(inputs))
    benchmark(impls[impl_name].run, inputs)
