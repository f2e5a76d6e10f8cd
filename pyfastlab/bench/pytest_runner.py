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
    """pytest params (case, implementation name) of a family's cases: the eager baseline (timed, not
    checked: it is what the others are checked against), torch.compile of it where the case has one
    (pure-Python baselines have none), and the pyfastlab backends of the case's device (skipped
    with the reason where one cannot run)."""
    out = []
    for case in all_cases(family):
        marks = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")] \
            if case.device == "cuda" else []
        defined = {impl.name for impl in case.implementations()}
        backends = ["cuda", "triton"] if case.device == "cuda" else ["cpu"]
        for name in [b for b in ("eager", "compiled") if b in defined] + backends:
            label = "baseline-eager" if name == "eager" else name
            out.append(pytest.param(case, name, marks=marks, id=f"{case.name}-{label}"))
    return out


def run(benchmark, request, case, impl_name) -> None:
    """Checks the implementation against the eager reference once (the eager baseline itself is
    only run), then times it."""
    disabled = request.config.getoption("benchmark_disable")
    scale = 1 / 16 if disabled else 1.0
    impls = {impl.name: impl for impl in case.implementations()}
    if impl_name not in impls:
        pytest.skip(f"backend {impl_name} is not available here")
    inputs = case.make_inputs(scale)
    if impl_name != "eager":  # the baseline is timed only: checking it against itself says nothing
        expected = [t.clone() for t in impls["eager"].run(case.make_inputs(scale))]
        error = compare(impls[impl_name].run(case.make_inputs(scale)), expected, case.tolerance)
        assert error is None, error
    benchmark.group = case.name
    benchmark.extra_info.update(bytes=case.bytes_moved(inputs), flops=case.flops(inputs))
    benchmark(impls[impl_name].run, inputs)
