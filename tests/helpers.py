"""Shared test helpers: tolerances per dtype, the backends to test, seeded random inputs."""
from __future__ import annotations

import math

import pytest
import torch

from pyfastlab.ops import _backends

# Unit roundoff (half an ulp at 1.0) of each dtype.
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
TOLERANCES = UNIT_ROUNDOFF  # the dtypes the table covers


def tolerance(dtype: torch.dtype, reduction: int = 1, roundings: int = 1) -> float:
    """Relative tolerance of a result that a kernel computes in its math type (float32 for the
    half types) with reductions of `reduction` terms, against the unrounded float64 reference: one
    unit roundoff per rounding to `dtype` on the way (the output's own, plus e.g. a backward that
    reads a stored half-precision output), plus the accumulation error, which grows like
    sqrt(reduction) for rounding errors of random sign (factor 16 of headroom)."""
    acc = UNIT_ROUNDOFF[torch.float64 if dtype == torch.float64 else torch.float32]
    return roundings * UNIT_ROUNDOFF[dtype] + 16 * acc * math.sqrt(max(reduction, 1))


def roundings_of(backend: str | None, dtype: torch.dtype, roundings: int = 1) -> int:
    """The Triton interpreter converts to bfloat16/float16 by truncation (a full ulp, not half of
    one, as CUDA and torch round): its roundings count twice."""
    half = dtype in (torch.float16, torch.bfloat16)
    return 2 * roundings if backend == "triton" and half and _backends.triton_interpreted() else roundings


def assert_close(actual, expected, dtype, what="", reduction: int = 1, roundings: int = 1, backend=None,
                 scale: float | None = None):
    """actual (computed from `dtype` inputs) against the float64 reference: |a - e| <= r (|e| + scale)
    with r = tolerance(dtype, reduction, roundings) and scale = max|e| unless given (the size of the
    terms a result is a difference of, where it cancels). The absolute part scales with the tensor
    (never a fixed number), so an all-zero result fails against a non-zero reference in every dtype;
    an all-zero reference gets r itself."""
    r = tolerance(dtype, reduction, roundings_of(backend, dtype, roundings))
    expected = expected.double()
    if scale is None:
        finite = expected[torch.isfinite(expected)]
        scale = finite.abs().max().item() if finite.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected, equal_nan=True, rtol=r, atol=r * (scale or 1.0),
                               msg=lambda m: f"{what}: {m} (dtype {dtype}, reduction {reduction}, rtol {r:.2g})")


def devices() -> list:
    """CPU and CUDA as pytest params: CUDA is always collected, and skipped where no GPU is."""
    cuda = [pytest.mark.cuda] + ([] if torch.cuda.is_available() else [pytest.mark.skip(reason="needs a CUDA device")])
    return [pytest.param(torch.device("cpu"), id="cpu"), pytest.param(torch.device("cuda"), marks=cuda, id="cuda")]


def kernel_backends() -> list:
    """(backend, device) of every kernel backend as pytest params: cpu, cuda, and triton (on CUDA
    tensors with a GPU, else on CPU tensors under TRITON_INTERPRET=1). Each is always collected and,
    where it cannot run here, skipped with the reason, so a run says what it did not test."""
    triton_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    params = []
    for backend, device in (("cpu", torch.device("cpu")), ("cuda", torch.device("cuda")), ("triton", triton_device)):
        marks = [getattr(pytest.mark, backend)] if backend in ("cuda", "triton") else []
        reason = "needs a CUDA device" if device.type == "cuda" and not torch.cuda.is_available() \
            else _backends.unavailable_reason(backend, device)
        if reason is not None:
            marks.append(pytest.mark.skip(reason=f"backend {backend!r}: {reason}"))
        params.append(pytest.param(backend, device, marks=marks, id=f"{backend}-{device.type}"))
    return params


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def task_mask(n_rows: int, n_classes: int, gen: torch.Generator, kind: str):
    """(active, row_group) of each mask form of continual.md 3.1."""
    if kind == "none":
        return None, None
    if kind == "C":
        return torch.rand(n_classes, generator=gen) > 0.4, None
    if kind == "NC":
        return torch.rand(n_rows, n_classes, generator=gen) > 0.4, None
    if kind == "C+group":
        return torch.rand(n_classes, generator=gen) > 0.4, torch.randint(-1, 1, (n_rows,), generator=gen)
    if kind == "GC":
        groups = 4
        return (torch.rand(groups, n_classes, generator=gen) > 0.4,
                torch.randint(-1, groups, (n_rows,), generator=gen, dtype=torch.int32))
    raise ValueError(kind)


MASK_KINDS = ("none", "C", "NC", "C+group", "GC")


def gradcheck_one_backward(fn, inputs, *, eps: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-3) -> bool:
    """`torch.autograd.gradcheck` for graphs that allow a single backward (the CUDA cross-entropy
    rescales its gradient buffer in place): every vector-Jacobian row is taken on a fresh graph
    and compared with central differences of the same function, in float64."""
    def evaluate(args):
        with torch.no_grad():
            return fn(*args).reshape(-1)

    base = [x.detach() for x in inputs]
    n_out = evaluate(base).numel()
    for j, x in enumerate(inputs):
        if not x.requires_grad:
            continue
        numerical = torch.empty(x.numel(), n_out, dtype=x.dtype, device=x.device)
        for k in range(x.numel()):
            plus, minus = list(base), list(base)
            plus[j], minus[j] = x.detach().clone(), x.detach().clone()
            plus[j].view(-1)[k] += eps
            minus[j].view(-1)[k] -= eps
            numerical[k] = (evaluate(plus) - evaluate(minus)) / (2 * eps)
        for o in range(n_out):
            fresh = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
            (analytical,) = torch.autograd.grad(fn(*fresh).reshape(-1)[o], fresh[j])
            torch.testing.assert_close(analytical.reshape(-1), numerical[:, o], atol=atol, rtol=rtol,
                                       msg=lambda m: f"input {j}, output {o}: {m}")
    return True
