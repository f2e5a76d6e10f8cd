"""`pyfastlab check` case of trajectory_viou: every backend against the float64 reference."""
from __future__ import annotations

import torch

from .. import ops
from ..reference import vidvrd_viou as reference
from . import close, register


def _tracks(n, T, gen, dtype, device):
    walk = torch.cumsum(2 * torch.randn(n, T, 2, generator=gen), dim=1) + 40 * torch.rand(n, 1, 2, generator=gen)
    boxes = torch.cat([walk, walk + 20 + 30 * torch.rand(n, 1, 2, generator=gen)], dim=2)
    begin = torch.randint(0, T - 1, (n,), generator=gen)
    span = torch.stack([begin, begin + torch.randint(1, T, (n,), generator=gen)], 1)
    return boxes.to(dtype).to(device), span.to(device)


def _check_trajectory_viou(backend, device, dtype, gen):
    a, sa = _tracks(37, 45, gen, dtype, device)
    b, sb = _tracks(29, 45, gen, dtype, device)
    got = ops.trajectory_viou(a, sa, b, sb, backend=backend)
    want = reference.trajectory_viou(a.double(), sa, b.double(), sb)
    return close(got, want, dtype), True  # not differentiable: no backward to check


register("trajectory_viou", _check_trajectory_viou)
