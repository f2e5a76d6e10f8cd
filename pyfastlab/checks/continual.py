"""`pyfastlab check` cases of the continual family: each op against the float64 reference."""
from __future__ import annotations

import torch

from .. import ops
from ..reference import continual as reference
from . import close, register


def _masks(n_rows, n_classes, gen, device):
    active = torch.rand(4, n_classes, generator=gen) > 0.3
    row_group = torch.randint(-1, 4, (n_rows,), generator=gen)
    return active.to(device), row_group.to(device)


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
    return close(got[0], want[0], dtype), close(got[1], want[1], dtype)


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
        ok = [ok[0] and close(got[0], want[0], dtype), ok[1] and close(got[1], want[1], dtype)]
    return tuple(ok)


def _check_pgd(backend, device, dtype, gen):
    x0 = torch.rand(64, 3, 8, 8, generator=gen).to(dtype).to(device)
    x = (x0 + 0.02 * torch.randn(x0.shape, generator=gen).to(device)).to(dtype)
    g = torch.randn(x0.shape, generator=gen).to(dtype).to(device)
    want = reference.pgd_linf_step_(x.clone(), g, x0, eps=0.03, step_size=0.01)
    got = ops.pgd_linf_step_(x.clone(), g, x0, eps=0.03, step_size=0.01, backend=backend)
    return torch.equal(got, want), True  # no backward: the step is not differentiable


register("masked_cross_entropy", _check_cross_entropy)
register("masked_softmax", _check_softmax)
register("pgd_linf_step_", _check_pgd)
