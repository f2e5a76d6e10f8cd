"""`pyfastlab check` cases of pair_mix, mixed_logits_cross_entropy and uniformity_loss: every backend
against the float64 reference, forward and backward (lam gradients included)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..reference import mixup as reference
from . import close, register


def _run(fn, x, lam):
    x = x.detach().clone().requires_grad_(True)
    lam = None if lam is None else lam.detach().clone().requires_grad_(True)
    out = fn(x, lam)
    out.backward(torch.ones_like(out))
    return out.detach(), x.grad, (None if lam is None else lam.grad)


def _compare(got, want, dtype):
    fwd = close(got[0], want[0], dtype)
    bwd = all(close(a, b, dtype) for a, b in zip(got[1:], want[1:]) if b is not None)
    return fwd, bwd


def _check_pair_mix(backend, device, dtype, gen):
    x, lam = torch.randn(67, 45, generator=gen), torch.rand(67, generator=gen)
    p = torch.randint(0, 67, (67,), generator=gen)
    got = _run(lambda x, l: ops.pair_mix(x, p.to(device), l, backend=backend), x.to(dtype).to(device),
               lam.to(dtype).to(device))
    want = _run(lambda x, l: reference.pair_mix(x, p, l), x.to(dtype).double(), lam.to(dtype).double())
    return _compare(got, want, dtype)


def _check_mixed_ce(backend, device, dtype, gen):
    z, lam = 3 * torch.randn(53, 130, generator=gen), torch.rand(53, generator=gen)
    p, y = torch.randint(0, 53, (53,), generator=gen), torch.randint(0, 130, (53,), generator=gen)
    got = _run(lambda z, l: ops.mixed_logits_cross_entropy(z, p.to(device), l, y.to(device), backend=backend),
               z.to(dtype).to(device), lam.to(dtype).to(device))
    want = _run(lambda z, l: reference.mixed_logits_cross_entropy(z, p, l, y), z.to(dtype).double(),
                lam.to(dtype).double())
    return _compare(got, want, dtype)


def _check_uniformity(backend, device, dtype, gen):
    x = F.normalize(torch.randn(150, 33, generator=gen), dim=1)
    got = _run(lambda x, _: ops.uniformity_loss(x, t=2.0, backend=backend), x.to(dtype).to(device), None)
    want = _run(lambda x, _: reference.uniformity_loss(x, 2.0), x.to(dtype).double(), None)
    return _compare(got, want, dtype)


register("pair_mix", _check_pair_mix)
register("mixed_logits_cross_entropy", _check_mixed_ce)
register("uniformity_loss", _check_uniformity)
