"""Times every implementation of each case side by side: the figures that matter are ratios
measured in one run, since the machines are shared and noisy."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import tempfile
import time

import torch

from .registry import BenchCase, compare


@dataclasses.dataclass
class Result:
    case: str
    op: str
    label: str
    device: str
    dtype: str
    implementation: str
    kind: str
    median_ms: float | None = None
    first_call_ms: float | None = None  # includes torch.compile's compile time for "compiled"
    gbps: float | None = None
    copy_fraction: float | None = None
    peak_extra_units: float | None = None
    speedup_vs_eager: float | None = None     # median over rounds of the per-round ratio
    speedup_vs_compiled: float | None = None
    spread_vs_eager: tuple[float, float] | None = None  # (min, max) of the per-round ratios
    spread_vs_compiled: tuple[float, float] | None = None
    gflops: float | None = None
    error: str | None = None
    target: str = ""


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def time_call(fn, device: str, rounds: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    return [_timed(fn, device) for _ in range(rounds)]


def copy_bandwidth(device: str, n_bytes: int, rounds: int = 5) -> float:
    """Bytes per second of dst.copy_(src), counting the read and the write."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = statistics.median(time_call(lambda: dst.copy_(src), device, rounds, 2))
    return 2 * n_bytes / seconds


@contextlib.contextmanager
def _native_stderr_to_file():
    """The profiler's native layer writes 'profiler_start' / 'gpuGetDeviceCount failed' lines
    straight to file descriptor 2: keep them out of the table (they are dropped, not hidden errors:
    a failure raises in Python)."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_extra_bytes(fn, device: str) -> int:
    """Peak memory allocated during one call beyond what existed before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # CPU: replay the profiler's allocation timeline (creations and frees, in time order).
    from torch.profiler import _memory_profiler

    with _native_stderr_to_file(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
            with_stack=True) as prof:
        fn()
    Action = _memory_profiler.Action
    current = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return peak


def run_case(case: BenchCase, *, scale: float, rounds: int, warmup: int, copy_bps: float | None,
             measure_memory: bool = True) -> list[Result]:
    results, timed = [], []
    expected = None
    for impl in case.implementations():
        inputs = case.make_inputs(scale)
        res = Result(case=case.name, op=case.op, label=case.label, device=case.device,
                     dtype=str(case.dtype).replace("torch.", ""), implementation=impl.name, kind=impl.kind,
                     target=case.target)
        results.append(res)
        try:
            start = time.perf_counter()
            out = impl.run(inputs)
            _sync(case.device)
            res.first_call_ms = 1e3 * (time.perf_counter() - start)
            if expected is None:
                expected = tuple(t.clone() for t in out)  # the eager baseline comes first
            else:
                res.error = compare(out, expected, case.tolerance)
            warm = time_call(lambda: impl.run(inputs), case.device, max(warmup, 1), 0)
            # Calls per timed burst: bursts of >= 2 ms keep tiny cases out of timer and wake-up noise.
            burst = max(1, min(100, math.ceil(2e-3 / max(min(warm), 1e-7))))
            timed.append((res, impl, inputs, burst, []))
        except Exception as exc:  # a failing implementation is reported, not fatal
            res.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    # Rounds are interleaved (each round times one burst of every implementation), so a change in
    # the machine's load during the case hits all of them alike.
    for _ in range(rounds):
        for res, impl, inputs, burst, times in timed:
            times.append(_timed(lambda: [impl.run(inputs) for _ in range(burst)], case.device) / burst)
    for res, impl, inputs, _, times in timed:
        seconds = statistics.median(times)
        res.median_ms = 1e3 * seconds
        res.gbps = case.bytes_moved(inputs) / seconds / 1e9
        res.gflops = case.flops(inputs) / seconds / 1e9
        if copy_bps:
            res.copy_fraction = case.bytes_moved(inputs) / seconds / copy_bps
        if measure_memory and case.measure_memory:
            res.peak_extra_units = peak_extra_bytes(lambda: impl.run(inputs), case.device) / case.unit_bytes(inputs)
    # Ratios per round (both timed in the same round), then their median and range: a load change
    # between rounds moves both sides of a round's ratio alike.
    times_of = {res.implementation: times for res, _, _, _, times in timed}
    for res, _, _, _, times in timed:
        for ref_name, field in (("eager", "vs_eager"), ("compiled", "vs_compiled")):
            base = times_of.get(ref_name)
            if base is None or res.implementation == ref_name:
                continue
            ratios = [b / t for b, t in zip(base, times)]
            setattr(res, f"speedup_{field}", statistics.median(ratios))
            setattr(res, f"spread_{field}", (min(ratios), max(ratios)))
    return results
