"""`pyfastlab check` case of kd_loss: every backend against the float64 reference."""
from __future__ import annotations

import torch

from .. import ops
from ..reference import kd as reference
from . import close, register


def _check_kd_loss(backend, device, dtype, gen):
    shape = (3, 13, 129)
    student = (3 * torch.randn(shape, generator=gen)).to(dtype).to(device)
    teacher = (3 * torch.randn(shape, generator=gen)).to(dtype).to(device)
    target = torch.randint(0, shape[-1], shape[:-1], generator=gen).to(device)
    target[0, 0] = -100
    kwargs = dict(temperature=3.0, soft_weight=0.6, hard_weight=0.4)

    def run(fn, s, t):
        s = s.detach().clone().requires_grad_(True)
        loss = fn(s, t, target, **kwargs)
        loss.backward()
        return loss.detach(), s.grad

    got = run(lambda *a, **k: ops.kd_loss(*a, backend=backend, **k), student, teacher)
    want = run(reference.kd_loss, student.double(), teacher.double())
    return close(got[0], want[0], dtype), close(got[1], want[1], dtype)


register("kd_loss", _check_kd_loss)
