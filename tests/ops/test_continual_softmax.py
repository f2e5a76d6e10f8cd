"""masked_softmax: every backend against the float64 reference and the identities of
continual.md section 5 (item 8), edge cases and bad input."""
import pytest
import torch

from helpers import MASK_KINDS, assert_close, generator, kernel_backends, task_mask
from pyfastlab import ops
from pyfastlab.reference import continual as ref

BACKENDS = kernel_backends()


def make_case(n_rows, n_classes, seed, mask_kind="GC", dtype=torch.float32, device="cpu"):
    gen = generator(seed)
    logits = (torch.randn(n_rows, n_classes, generator=gen) * 3).to(dtype)
    active, row_group = task_mask(n_rows, n_classes, gen, mask_kind)
    upstream = torch.randn(n_rows, n_classes, generator=gen)
    move = lambda t: None if t is None else t.to(device)
    return logits.to(device), move(active), move(row_group), upstream.to(device)


def run(backend, logits, active, row_group, upstream, **kwargs):
    z = logits.detach().clone().requires_grad_(True)
    out = ops.masked_softmax(z, active, row_group, backend=backend, **kwargs)
    out.backward(upstream.to(out.dtype))
    return out.detach(), z.grad


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("log", [False, True])
def test_matches_reference(backend, device, dtype, mask_kind, log):
    logits, active, row_group, upstream = make_case(11, 29, 1, mask_kind, dtype, device)
    for kwargs in (dict(mode="const"), dict(mode="const", mask_value=0.5, new_grad_scale=0.7),
                   dict(mode="detach", offset=-1.0, old_grad_scale=0.4)):
        got = run(backend, logits, active, row_group, upstream, log=log, **kwargs)
        want = run("reference", logits.double(), active, row_group, upstream.double(), log=log, **kwargs)
        assert got[0].dtype == dtype
        # the backward reads the stored output: its rounding enters the gradient twice
        for name, a, b, roundings in zip(("out", "grad"), got, want, (1, 3)):
            assert_close(a.cpu(), b.cpu(), dtype, f"{kwargs} {name}", reduction=29, roundings=roundings,
                         backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("n_classes", [1, 3, 31, 32, 33, 127, 128, 129, 1000, 40000])
def test_row_lengths(backend, device, n_classes):
    logits, active, row_group, upstream = make_case(3, n_classes, n_classes, device=device)
    for log in (False, True):
        got = run(backend, logits, active, row_group, upstream, log=log)
        want = run("reference", logits.double(), active, row_group, upstream.double(), log=log)
        for a, b in zip(got, want):
            assert_close(a.cpu(), b.cpu(), torch.float32, reduction=n_classes)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_identities(backend, device):
    """Rows sum to 1 (0 for dead rows); log = log of softmax; detach with s_o = 1 = torch.softmax."""
    logits, active, _, upstream = make_case(6, 10, 2, "NC", torch.float64, device)
    active[0] = False  # a dead row (every entry -inf)
    p = ops.masked_softmax(logits, active, backend=backend)
    sums = p.sum(1).cpu()
    assert sums[0] == 0 and torch.allclose(sums[1:], torch.ones(5, dtype=torch.float64))
    logp = ops.masked_softmax(logits, active, log=True, backend=backend)
    assert torch.isneginf(logp[0]).all()
    finite = torch.isfinite(logp)
    assert torch.allclose(logp[finite], p[finite].log())
    for log in (False, True):
        got = run(backend, logits, active, None, upstream, mode="detach", old_grad_scale=1.0, log=log)
        z = logits.clone().requires_grad_(True)
        want = torch.log_softmax(z, 1) if log else torch.softmax(z, 1)
        want.backward(upstream)
        assert torch.allclose(got[0], want.detach()) and torch.allclose(got[1], z.grad)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_dead_rows_have_zero_gradient(backend, device):
    logits, active, _, upstream = make_case(4, 7, 3, "NC", torch.float64, device)
    active[1] = False
    upstream[1] = float("nan")
    for log in (False, True):
        out, grad = run(backend, logits, active, None, upstream, log=log)
        assert torch.equal(grad[1], torch.zeros_like(grad[1]))
        assert torch.isfinite(grad[[0, 2, 3]]).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("log", [False, True])
def test_stopped_gradients_stay_zero_under_nan_upstream(backend, device, log):
    logits, active, _, upstream = make_case(3, 9, 10, "NC", torch.float64, device)
    active[:, 0] = True
    active[:, 1] = False
    upstream[:, 1] = float("nan")  # a NaN upstream on a const-masked entry
    got = run(backend, logits, active, None, upstream, log=log)
    want = run("reference", logits, active, None, upstream, log=log)
    assert torch.equal(got[1][~active], torch.zeros_like(got[1][~active]))
    assert torch.equal(want[1][~active], torch.zeros_like(want[1][~active]))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("log", [False, True])
def test_gradcheck(backend, device, log):
    logits, active, row_group, _ = make_case(4, 6, 4, "GC", torch.float64, device)
    z = logits.clone().requires_grad_(True)
    # a finite mask value: log-outputs of -inf have no finite differences
    fn = lambda z: ops.masked_softmax(z, active, row_group, mask_value=-3.0, log=log, backend=backend)
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_non_contiguous_and_no_mutation(backend, device):
    empty = torch.zeros(0, 4, device=device)
    assert ops.masked_softmax(empty, backend=backend).shape == (0, 4)
    big = torch.randn(12, 40, generator=generator(5)).to(device)
    logits = big[::3, ::2]
    active = (torch.rand(20, 4, generator=generator(6)) > 0.3).t().to(device)
    before = big.clone()
    got = ops.masked_softmax(logits, active, backend=backend)
    want = ref.masked_softmax(logits.double(), active)
    assert_close(got.cpu(), want.cpu(), torch.float32)
    assert torch.equal(big, before)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_deterministic(backend, device):
    logits, active, row_group, upstream = make_case(200, 77, 7, device=device)
    a = run(backend, logits, active, row_group, upstream, log=True)
    b = run(backend, logits, active, row_group, upstream, log=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kwargs,name", [
    (dict(logits=torch.zeros(2, 3, dtype=torch.int32)), "logits"),
    (dict(logits=torch.zeros(3)), "logits"),
    (dict(active=torch.ones(2, 4, dtype=torch.bool)), "active"),
    (dict(active=torch.ones(3, 3, dtype=torch.bool), row_group=torch.tensor([0, 5])), "row_group"),
    (dict(mode="hard"), "mode"),
    (dict(mask_value=float("nan")), "mask_value"),
    (dict(backend="gpu"), "backend"),
])
def test_bad_input(backend, device, kwargs, name):
    args = dict(logits=torch.randn(2, 3), backend=backend)
    args.update(kwargs)
    args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises((ValueError, RuntimeError), match=name):
        ops.masked_softmax(args.pop("logits"), **args)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    name = "masked_softmax_triton" if backend == "triton" else "masked_softmax"
    logits, active, row_group, _ = make_case(5, 8, 8, device=device)
    for requires_grad in (False, True):
        args = (logits.clone().requires_grad_(requires_grad), active, row_group.long(), 1, float("-inf"), 0.5, 0.3,
                1.0, requires_grad)
        torch.library.opcheck(getattr(torch.ops.pyfastlab, name), args)


def test_torch_compile_fullgraph():
    logits, active, row_group, upstream = make_case(6, 9, 9)
    fn = torch.compile(lambda z: ops.masked_softmax(z, active, row_group, log=True, backend="cpu"),
                       fullgraph=True, backend="aot_eager")
    z = logits.clone().requires_grad_(True)
    fn(z).backward(upstream)
    want = run("reference", logits.double(), active, row_group, upstream.double(), log=True)
    assert_close(z.grad, want[1], torch.float32)
