"""`pyfastlab check` cases of the CKA ops: each against the float64 reference, forward and backward."""
from __future__ import annotations

import torch

from .. import ops
from ..reference import cka as reference
from . import close, register


def _inputs(shapes, gen, dtype, device):
    return [torch.randn(*s, generator=gen).to(dtype).to(device) for s in shapes]


def _grads(fn, tensors, upstream):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(leaves)
    out.backward(upstream.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def _check_linear_cka(backend, device, dtype, gen):
    x, y = _inputs([(3, 40, 97), (3, 40, 33)], gen, dtype, device)
    upstream = torch.randn(3, generator=gen).to(device)
    ok = [True, True]
    for debiased in (False, True):
        got = _grads(lambda t: ops.linear_cka(*t, debiased=debiased, backend=backend), [x, y], upstream)
        want = _grads(lambda t: reference.linear_cka(*t, debiased=debiased), [x.double(), y.double()], upstream)
        ok[0] = ok[0] and close(got[0], want[0], dtype)
        ok[1] = ok[1] and all(close(a / b.abs().max(), b / b.abs().max(), dtype) for a, b in zip(got[1:], want[1:]))
    return tuple(ok)


def _check_cka_matrix(backend, device, dtype, gen):
    layers = _inputs([(24, 50), (24, 7), (24, 3, 4), (24, 9), (24, 60)], gen, dtype, device)
    upstream = torch.randn(2, 3, generator=gen).to(device)
    fn = lambda impl: lambda t: impl(t[:2], t[2:], debiased=True)
    got = _grads(fn(lambda a, b, **k: ops.cka_matrix(a, b, backend=backend, **k)), layers, upstream)
    want = _grads(fn(reference.cka_matrix), [t.double() for t in layers], upstream)
    grads_ok = all(close(a / b.abs().max(), b / b.abs().max(), dtype) for a, b in zip(got[1:], want[1:]))
    return close(got[0], want[0], dtype), grads_ok


register("linear_cka", _check_linear_cka)
register("cka_matrix", _check_cka_matrix)
