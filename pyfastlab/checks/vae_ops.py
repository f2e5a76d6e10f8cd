"""`pyfastlab check` cases of expm, symmetric_expm, ipe_transform and composite_symmetry: every
backend, forward and every input gradient, against the float64 reference."""
from __future__ import annotations

import torch

from .. import ops
from ..reference import vae_ops as reference
from . import close, register


def _run(fn, inputs, gen):
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(out, [torch.ones_like(o) for o in out])
    return [o.detach() for o in out], [x.grad for x in inputs]


def _compare(op, ref, inputs, backend, device, dtype, gen):
    got = _run(lambda *x: op(*x, backend=backend), [t.to(dtype).to(device) for t in inputs], gen)
    want = _run(ref, [t.to(dtype).double() for t in inputs], gen)
    return (all(close(a, b, dtype) for a, b in zip(got[0], want[0])),
            all(close(a, b, dtype) for a, b in zip(got[1], want[1])))


def _check_expm(backend, device, dtype, gen):
    a = torch.randn(5, 9, 9, generator=gen) / 3
    return _compare(ops.expm, reference.expm, [a], backend, device, dtype, gen)


def _check_symmetric_expm(backend, device, dtype, gen):
    w = torch.randn(4, 7, 7, generator=gen) / 3
    return _compare(ops.symmetric_expm, reference.symmetric_expm, [w], backend, device, dtype, gen)


def _check_ipe_transform(backend, device, dtype, gen):
    z, w = torch.randn(11, 6, generator=gen), torch.randn(3, 2, 6, 6, generator=gen) / 3
    return _compare(ops.ipe_transform, reference.ipe_transform, [z, w], backend, device, dtype, gen)


def _check_composite_symmetry(backend, device, dtype, gen):
    codebook = torch.randn(8, 5, 5, generator=gen) / 3
    weights = torch.rand(6, 8, generator=gen) / 4
    z1, z2 = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    return _compare(ops.composite_symmetry, reference.composite_symmetry, [codebook, weights, z1, z2], backend,
                    device, dtype, gen)


register("expm", _check_expm)
register("symmetric_expm", _check_symmetric_expm)
register("ipe_transform", _check_ipe_transform)
register("composite_symmetry", _check_composite_symmetry)
