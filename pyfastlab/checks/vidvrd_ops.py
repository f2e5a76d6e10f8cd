"""`pyfastlab check` cases of pairwise_mlp_scores, temporal_iou and span_nms: every backend against
the float64 reference (span_nms: the same kept indices as the greedy oracle)."""
from __future__ import annotations

import torch

from .. import ops
from ..reference import vidvrd_ops as reference
from . import close, register


def _check_pairwise(backend, device, dtype, gen):
    a, b = torch.randn(2, 13, 33, generator=gen), torch.randn(2, 9, 33, generator=gen)
    w = torch.randn(33, generator=gen)

    def run(fn, *inputs):
        inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
        s = fn(*inputs, 0.5)
        s.backward(torch.ones_like(s))
        return (s.detach(),) + tuple(x.grad for x in inputs)

    got = run(lambda *x: ops.pairwise_mlp_scores(*x, backend=backend), *(t.to(dtype).to(device) for t in (a, b, w)))
    want = run(reference.pairwise_mlp_scores, *(t.double() for t in (a, b, w)))
    return close(got[0], want[0], dtype), all(close(x, y, dtype) for x, y in zip(got[1:], want[1:]))


def _spans(n, gen):
    begin = 100 * torch.rand(n, generator=gen)
    return torch.stack([begin, begin + 40 * torch.rand(n, generator=gen) - 2], 1)


def _check_temporal_iou(backend, device, dtype, gen):
    a, b = _spans(41, gen), _spans(23, gen)
    got = ops.temporal_iou(a.to(dtype).to(device), b.to(dtype).to(device), backend=backend)
    return close(got, reference.temporal_iou(a.to(dtype).double(), b.to(dtype).double()), dtype), True


def _check_span_nms(backend, device, dtype, gen):
    spans, scores = _spans(200, gen).to(dtype), torch.rand(200, generator=gen)
    groups = torch.randint(0, 5, (200,), generator=gen)
    got = ops.span_nms(spans.to(device), scores.to(device), 0.5, groups=groups.to(device), backend=backend)
    want = reference.span_nms(spans, scores, 0.5, groups=groups)
    return got.tolist() == want.tolist(), True


register("pairwise_mlp_scores", _check_pairwise)
register("temporal_iou", _check_temporal_iou)
register("span_nms", _check_span_nms)
