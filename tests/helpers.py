"""Shared test helpers: tolerances per dtype, the backends to test, seeded random inputs."""
from __future__ import annotations

import pytest
import torch

from pyfastlab.ops import _backends

# Forward and gradient tolerances against the float64 reference, per input dtype.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


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


def assert_close(actual, expected, dtype, what=""):
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), equal_nan=True, msg=lambda m: f"{what}: {m}", **tol)


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
