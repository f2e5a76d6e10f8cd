"""`pyfastlab check`: every op on every available backend against the float64 reference, on
fresh random inputs, forward and backward. What a user runs after installing on a new machine."""
from __future__ import annotations

import dataclasses
import random

import torch

from . import ops
from .ops import _backends
from .reference import continual as reference

TOLERANCE = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-9, rtol=1e-9)}


@dataclasses.dataclass
class CheckResult:
    op: str
    backend: str
    device: str
    dtype: str
    forward_ok: bool
    backward_ok: bool
    detail: str = ""


def _masks(n_rows, n_classes, gen, device):
    active = torch.rand(4, n_classes, generator=gen) > 0.3
    row_group = torch.randint(-1, 4, (n_rows,), generator=gen)
    return active.to(device), row_group.to(device)


def _close(a, b, dtype):
    return torch.allclose(a.double().cpu(), b.double().cpu(), equal_nan=True, **TOLERANCE[dtype])


def _check_cross_entropy(backend, device, dtype, gen):
    n_rows, n_classes = 37, 129
    logits = (3 * torch.randn(n_rows, n_classes, generator=gen)).to(dtype).to(device)
    target = torch.randint(0, n_classes, (n_rows,), generator=gen).to(device)
    target[0] = -100
    active, row_group = _masks(n_rows, n_classes, gen, device)
    weight = (torch.rand(n_rows, generator=gen) + 0.5).to(device)
    kwargs = dict(mode="detach", old_grad_scale=0.25, offset=-0.5, reduction="mean")

    def run(fn, z):
        z = z.detach().clone().requires_grad_(True)
        loss = fn(z, target, active, row_group, weight=weight.to(z.dtype), **kwargs)
        loss.backward()
        return loss.detach(), z.grad

    got = run(lambda *a, **k: ops.masked_cross_entropy(*a, backend=backend, **k), logits)
    want = run(reference.masked_cross_entropy, logits.double())
    return _close(got[0], want[0], dtype), _close(got[1], want[1], dtype)


def _check_softmax(backend, device, dtype, gen):
    n_rows, n_classes = 29, 1000
    logits = (3 * torch.randn(n_rows, n_classes, generator=gen)).to(dtype).to(device)
    active, row_group = _masks(n_rows, n_classes, gen, device)
    upstream = torch.randn(n_rows, n_classes, generator=gen).to(device)
    ok = [True, True]
    for log in (False, True):
        def run(fn, z):
            z = z.detach().clone().requires_grad_(True)
            out = fn(z, active, row_group, log=log, new_grad_scale=0.5)
            out.backward(upstream.to(z.dtype))
            return out.detach(), z.grad

        got = run(lambda *a, **k: ops.masked_softmax(*a, backend=backend, **k), logits)
        want = run(reference.masked_softmax, logits.double())
        ok = [ok[0] and _close(got[0], want[0], dtype), ok[1] and _close(got[1], want[1], dtype)]
    return tuple(ok)


def _check_pgd(backend, device, dtype, gen):
    x0 = torch.rand(64, 3, 8, 8, generator=gen).to(dtype).to(device)
    x = (x0 + 0.02 * torch.randn(x0.shape, generator=gen).to(device)).to(dtype)
    g = torch.randn(x0.shape, generator=gen).to(dtype).to(device)
    want = reference.pgd_linf_step_(x.clone(), g, x0, eps=0.03, step_size=0.01)
    got = ops.pgd_linf_step_(x.clone(), g, x0, eps=0.03, step_size=0.01, backend=backend)
    return torch.equal(got, want), True  # no backward: the step is not differentiable


CHECKS = {"masked_cross_entropy": _check_cross_entropy, "masked_softmax": _check_softmax,
          "pgd_linf_step_": _check_pgd}


def run_checks(seed: int | None = None) -> list[CheckResult]:
    seed = random.randrange(2**31) if seed is None else seed
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = []
    for op, check in CHECKS.items():
        for device in devices:
            for backend in _backends.available(device):
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
