"""Property tests: on random shapes, masks and options, the CPU kernels equal the float64 reference."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_close
from pyfastlab import ops

options = st.fixed_dictionaries({
    "mode": st.sampled_from(["const", "detach"]),
    "mask_value": st.sampled_from([float("-inf"), 0.0, -3.5, 2.0]),
    "offset": st.sampled_from([0.0, -2.0, 1.5]),
    "old_grad_scale": st.sampled_from([0.0, 0.5, 1.0]),
    "new_grad_scale": st.sampled_from([1.0, 0.25, 0.0]),
})


@st.composite
def cases(draw):
    n_rows = draw(st.integers(0, 12))
    n_classes = draw(st.integers(1, 40))
    groups = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_rows, n_classes, generator=gen, dtype=torch.float64) * draw(st.sampled_from([1.0, 30.0]))
    active = torch.rand(groups, n_classes, generator=gen) > draw(st.sampled_from([0.0, 0.5, 0.9]))
    row_group = torch.randint(-1, groups, (n_rows,), generator=gen)
    target = torch.randint(0, n_classes, (n_rows,), generator=gen)
    target[torch.rand(n_rows, generator=gen) < 0.2] = -100
    return logits, target, active, row_group


@settings(max_examples=150, deadline=None)
@given(case=cases(), opts=options, reduction=st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy_equals_reference(case, opts, reduction):
    logits, target, active, row_group = case
    results = []
    for backend in ("cpu", "reference"):
        z = logits.clone().requires_grad_(True)
        loss = ops.masked_cross_entropy(z, target, active, row_group, reduction=reduction, backend=backend, **opts)
        loss.backward(torch.linspace(-1.0, 1.0, loss.numel(), dtype=loss.dtype).reshape(loss.shape))
        results.append((loss.detach(), z.grad))
    for a, b in zip(*results):
        assert_close(a, b, torch.float64, reduction=logits.shape[1])


@settings(max_examples=100, deadline=None)
@given(case=cases(), opts=options, log=st.booleans())
def test_softmax_equals_reference(case, opts, log):
    logits, _, active, row_group = case
    upstream = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for backend in ("cpu", "reference"):
        z = logits.clone().requires_grad_(True)
        out = ops.masked_softmax(z, active, row_group, log=log, backend=backend, **opts)
        out.backward(upstream)
        results.append((out.detach(), z.grad))
    for a, b in zip(*results):
        assert_close(a, b, torch.float64, reduction=logits.shape[1])
