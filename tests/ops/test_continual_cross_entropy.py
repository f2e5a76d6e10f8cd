"""masked_cross_entropy: every backend against the float64 reference, the identities of
continual.md section 5, edge cases and bad input."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from helpers import (MASK_KINDS, TOLERANCES, assert_close, generator, gradcheck_one_backward, kernel_backends,
                     task_mask)
from pyfastlab import ops
from pyfastlab.reference import continual as ref

BACKENDS = kernel_backends()


def make_case(n_rows, n_classes, seed, *, mask_kind="GC", ignore=True, dtype=torch.float32, device="cpu"):
    gen = generator(seed)
    logits = (torch.randn(n_rows, n_classes, generator=gen) * 3).to(dtype)
    target = torch.randint(0, n_classes, (n_rows,), generator=gen)
    if ignore and n_rows > 2:
        target[1] = -100
    active, row_group = task_mask(n_rows, n_classes, gen, mask_kind)
    weight = (torch.rand(n_rows, generator=gen) + 0.5).to(torch.float64 if dtype == torch.float64 else torch.float32)
    move = lambda t: None if t is None else t.to(device)
    return logits.to(device), target.to(device), move(active), move(row_group), weight.to(device)


def run(backend, logits, target, active, row_group, weight=None, upstream=None, **kwargs):
    """Loss, logits gradient and weight gradient of one call."""
    z = logits.detach().clone().requires_grad_(True)
    w = None if weight is None else weight.detach().clone().requires_grad_(True)
    loss = ops.masked_cross_entropy(z, target, active, row_group, weight=w, backend=backend, **kwargs)
    loss.backward(torch.ones_like(loss) if upstream is None else upstream.to(loss.dtype))
    return loss.detach(), z.grad, (None if w is None else w.grad)


def oracle(logits, target, active, row_group, weight=None, upstream=None, **kwargs):
    up = None if upstream is None else upstream.double()
    return run("reference", logits.double(), target, active, row_group,
               None if weight is None else weight.double(), up, **kwargs)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("mode", ["const", "detach"])
def test_matches_reference(backend, device, dtype, mask_kind, mode):
    logits, target, active, row_group, weight = make_case(13, 37, 1, mask_kind=mask_kind, dtype=dtype, device=device)
    scales = dict(old_grad_scale=0.3, new_grad_scale=0.8, offset=-0.5, mask_value=-1.0 if mode == "const" else 0.0)
    for reduction in ("mean", "sum", "none"):
        upstream = torch.linspace(-1, 2, logits.shape[0], device=device) if reduction == "none" else None
        got = run(backend, logits, target, active, row_group, weight, upstream, mode=mode, reduction=reduction, **scales)
        want = oracle(logits, target, active, row_group, weight, upstream, mode=mode, reduction=reduction, **scales)
        assert got[0].dtype == dtype
        for name, a, b in zip(("loss", "grad logits", "grad weight"), got, want):
            assert_close(a.cpu(), b.cpu(), dtype, f"{reduction} {name}", reduction=logits.shape[1], backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("n_classes", [1, 3, 31, 32, 33, 127, 128, 129, 1000])
def test_row_lengths(backend, device, n_classes):
    logits, target, active, row_group, _ = make_case(9, n_classes, n_classes, dtype=torch.float32, device=device)
    got = run(backend, logits, target, active, row_group)
    want = oracle(logits, target, active, row_group)
    for a, b in zip(got[:2], want[:2]):
        assert_close(a.cpu(), b.cpu(), torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_long_rows(backend, device):
    n_classes = 40000 if backend != "cpu" else 70000  # past Triton's in-register block and a CPU L2 row
    logits, target, active, row_group, _ = make_case(3, n_classes, 5, dtype=torch.float32, device=device)
    got = run(backend, logits, target, active, row_group, reduction="sum")
    want = oracle(logits, target, active, row_group, reduction="sum")
    for a, b in zip(got[:2], want[:2]):
        assert_close(a.cpu(), b.cpu(), torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_matches_f_cross_entropy_in_detach_mode(backend, device):
    """Identity 1: detach, offset 0, both scales 1, every target active = F.cross_entropy."""
    logits, target, _, _, _ = make_case(11, 23, 2, device=device, dtype=torch.float64)
    active = torch.rand(23, generator=generator(3)) > 0.5
    active[target[target >= 0].cpu()] = True
    for reduction in ("mean", "sum", "none"):
        kwargs = dict(mode="detach", old_grad_scale=1.0, new_grad_scale=1.0, reduction=reduction)
        got = run(backend, logits, target, active.to(device), None, **kwargs)
        z = logits.detach().clone().requires_grad_(True)
        want = F.cross_entropy(z, target, reduction=reduction)
        want.backward(torch.ones_like(want))
        assert_close(got[0].cpu(), want.detach().cpu(), torch.float64)
        assert_close(got[1].cpu(), z.grad.cpu(), torch.float64)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_const_inf_equals_sliced_cross_entropy(backend, device):
    """Identity 2: one mask for every row, m = -inf = CE on the active columns alone."""
    gen = generator(4)
    logits = torch.randn(10, 12, generator=gen, dtype=torch.float64)
    active = torch.zeros(12, dtype=torch.bool)
    active[[1, 4, 5, 9]] = True
    columns = active.nonzero().squeeze(1)
    remap = torch.full((12,), -1, dtype=torch.long)
    remap[columns] = torch.arange(len(columns))
    target = columns[torch.randint(0, len(columns), (10,), generator=gen)]
    got = run(backend, logits.to(device), target.to(device), active.to(device), None)
    z = logits.clone().requires_grad_(True)
    want = F.cross_entropy(z[:, columns], remap[target])
    want.backward()
    assert_close(got[0].cpu(), want.detach(), torch.float64)
    assert_close(got[1].cpu(), z.grad, torch.float64)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mode,mask_value,offset", [("const", float("-inf"), 0.0), ("const", 0.0, 0.0),
                                                    ("const", 5.0, 0.0), ("detach", 0.0, 0.0), ("detach", 0.0, -2.0)])
def test_rho_identities(backend, device, mode, mask_value, offset):
    """Identity 3: l = -log q_y - log rho and sum_k dL/dz_k = -w (1 - rho) with s_o = 0."""
    logits, target, active, row_group, _ = make_case(8, 17, 6, mask_kind="NC", ignore=False, dtype=torch.float64)
    active[torch.arange(8), target] = True
    loss, grad, _ = run(backend, logits.to(device), target.to(device), active.to(device), None,
                        mode=mode, mask_value=mask_value, offset=offset, reduction="none")
    z = logits
    v_masked = torch.full_like(z, mask_value) if mode == "const" else z + offset
    s_active = torch.where(active, z.exp(), torch.zeros_like(z)).sum(1)
    s_masked = torch.where(active, torch.zeros_like(z), v_masked.exp()).sum(1)
    rho = s_active / (s_active + s_masked)
    q_y = z.gather(1, target[:, None]).squeeze(1).exp() / s_active
    assert_close(loss.cpu(), -q_y.log() - rho.log(), torch.float64)
    assert_close(grad.sum(1).cpu(), -(1 - rho), torch.float64)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_const_masked_logits_never_matter(backend, device):
    """Identity 4: perturbing const-masked logits (even to NaN/inf) changes nothing."""
    logits, target, active, row_group, weight = make_case(12, 19, 7, mask_kind="NC", device=device)
    perturbed = torch.where(active, logits, torch.randn_like(logits) * 100)
    perturbed[~active.cpu().nonzero()[0][0].item()] = perturbed[0]  # keep shapes; masked entries differ
    perturbed = torch.where(active, logits, perturbed)
    perturbed[(~active).nonzero()[0].tolist()[0], (~active).nonzero()[0].tolist()[1]] = float("nan")
    for m in (float("-inf"), 0.0):
        a = run(backend, logits, target, active, row_group, weight, mask_value=m)
        b = run(backend, perturbed, target, active, row_group, weight, mask_value=m)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert (b[1][~active] == 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_row_shift_invariance(backend, device):
    """Identity 5: detach and const -inf ignore a per-row constant; const with finite m does not."""
    logits, target, active, row_group, _ = make_case(10, 15, 8, dtype=torch.float64, device=device)
    shift = torch.linspace(-3, 7, 10, dtype=torch.float64, device=device)[:, None]
    for kwargs, invariant in ((dict(mode="detach"), True), (dict(mode="const"), True),
                              (dict(mode="const", mask_value=0.0), False)):
        a = run(backend, logits, target, active, row_group, **kwargs)
        b = run(backend, logits + shift, target, active, row_group, **kwargs)
        assert torch.allclose(a[0], b[0], atol=1e-9) == invariant
        if invariant:
            assert torch.allclose(a[1], b[1], atol=1e-9)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradient_scales_are_linear(backend, device):
    """Identity 6: the scales multiply the gradient on their entries; the loss is unchanged."""
    logits, target, active, row_group, _ = make_case(9, 14, 9, dtype=torch.float64, device=device)
    mask = ref.resolve_mask(active, row_group, 9, 14, device)
    base = run(backend, logits, target, active, row_group, mode="detach", old_grad_scale=1.0, new_grad_scale=1.0)
    scaled = run(backend, logits, target, active, row_group, mode="detach", old_grad_scale=-0.5, new_grad_scale=2.5)
    assert torch.allclose(base[0], scaled[0], atol=1e-12)
    assert torch.allclose(scaled[1][mask], 2.5 * base[1][mask], atol=1e-12)
    assert torch.allclose(scaled[1][~mask], -0.5 * base[1][~mask], atol=1e-12)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mode,scales", [("const", dict(new_grad_scale=1.0)),
                                         ("detach", dict(old_grad_scale=1.0, new_grad_scale=1.0))])
def test_gradcheck(backend, device, mode, scales):
    """Identity 7: where the defined gradient is the true one, it passes gradcheck. On CUDA the
    graph allows one backward (the gradient is rescaled in place), so each Jacobian row gets its own."""
    check = torch.autograd.gradcheck if device == torch.device("cpu") else gradcheck_one_backward
    logits, target, active, row_group, weight = make_case(5, 7, 10, dtype=torch.float64, device=device)
    z = logits.clone().requires_grad_(True)
    w = weight.double().clone().requires_grad_(True)
    for reduction in ("mean", "none"):
        fn = lambda z, w: ops.masked_cross_entropy(z, target, active, row_group, weight=w, mode=mode,
                                                   reduction=reduction, backend=backend, **scales)
        assert check(fn, (z, w), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_not_counted_rows_stay_zero_under_nan_upstream(backend, device):
    """Item 9: ignored / masked-target / all -inf rows give exactly 0 gradient, even for NaN upstream."""
    logits, target, active, row_group, _ = make_case(6, 9, 11, mask_kind="NC", ignore=False, dtype=torch.float64)
    target[0] = -100                       # ignored
    active[1, target[1]] = False           # masked target
    active[2] = False                      # every entry -inf
    active[2, target[2]] = True
    logits[2, target[2]] = float("-inf")
    upstream = torch.full((6,), float("nan"), dtype=torch.float64)
    upstream[3:] = torch.tensor([1.0, -2.0, 0.5])
    loss, grad, _ = run(backend, logits.to(device), target.to(device), active.to(device), None,
                        upstream=upstream.to(device), reduction="none")
    assert torch.equal(loss[:3].cpu(), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(grad[:3].cpu(), torch.zeros(3, 9, dtype=torch.float64))
    assert torch.isfinite(grad[3:]).all()


@pytest.mark.parametrize("backend,device", BACKENDS + [pytest.param("reference", torch.device("cpu"), id="reference")])
def test_edge_cases(backend, device):
    f = lambda *a, **k: ops.masked_cross_entropy(*a, backend=backend, **k)
    # N = 0
    empty = torch.zeros(0, 5, device=device, requires_grad=True)
    target0 = torch.zeros(0, dtype=torch.long, device=device)
    assert f(empty, target0).item() == 0.0 and f(empty, target0, reduction="sum").item() == 0.0
    assert f(empty, target0, reduction="none").shape == (0,)
    f(empty, target0).backward()
    assert empty.grad.shape == (0, 5)
    # n = 0: every row ignored -> mean 0.0 (F.cross_entropy gives NaN here)
    z = torch.randn(3, 4, device=device)
    assert f(z, torch.full((3,), -100, device=device)).item() == 0.0
    # z_y = -inf with finite others: +inf loss, finite gradient
    z = torch.tensor([[0.0, float("-inf"), 1.0]], device=device, requires_grad=True)
    loss = f(z, torch.tensor([1], device=device))
    loss.backward()
    assert loss.item() == float("inf") and torch.isfinite(z.grad).all()
    # +inf in an active logit -> a NaN row, loss and gradient, as F.cross_entropy
    for y in (0, 1):
        z = torch.tensor([[0.0, float("inf"), 1.0], [0.0, 1.0, 2.0]], device=device, requires_grad=True)
        loss = f(z, torch.tensor([y, 0], device=device), reduction="none")
        loss.sum().backward()
        assert torch.isnan(loss[0]) and torch.isnan(z.grad[0]).all() and torch.isfinite(z.grad[1]).all()
    # NaN in an active logit -> NaN loss; NaN in a const-masked logit -> ignored
    z = torch.tensor([[0.0, float("nan"), 1.0]], device=device)
    active = torch.tensor([True, False, True], device=device)
    assert torch.isnan(f(z, torch.tensor([0], device=device)))
    assert torch.isfinite(f(z, torch.tensor([0], device=device), active))
    # rows of 1e4: exact, no overflow
    z = torch.tensor([[1e4, 1e4 - 1.0, -1e4]], dtype=torch.float64, device=device)
    want = F.cross_entropy(z.cpu(), torch.tensor([1]))
    assert torch.allclose(f(z, torch.tensor([1], device=device)).cpu(), want)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mode", ["const", "detach"])
def test_stopped_gradients_stay_zero_in_a_nan_row(backend, device, mode):
    """A NaN active logit makes its row's loss and active gradients NaN; masked entries with a
    zero gradient scale stay exactly 0 (a stop-gradient, as in the reference)."""
    z = torch.tensor([[0.5, float("nan"), 1.0, -2.0]], dtype=torch.float64, device=device)
    active = torch.tensor([True, True, False, False], device=device)
    loss, grad, _ = run(backend, z, torch.tensor([0], device=device), active, None, mode=mode)
    want = oracle(z, torch.tensor([0], device=device), active, None, mode=mode)
    assert torch.isnan(loss) and torch.isnan(want[0])
    assert torch.isnan(grad[0, :2]).all()
    assert torch.equal(grad[0, 2:].cpu(), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(want[1][0, 2:].cpu(), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_no_grad_paths(backend, device):
    """Item 9: logits without requires_grad still give the right loss; weight alone gets a gradient."""
    logits, target, active, row_group, weight = make_case(7, 11, 12, dtype=torch.float64, device=device)
    want = ref.masked_cross_entropy(logits, target, active, row_group, weight=weight)
    assert torch.allclose(ops.masked_cross_entropy(logits, target, active, row_group, weight=weight,
                                                   backend=backend), want)
    w = weight.double().clone().requires_grad_(True)
    ops.masked_cross_entropy(logits, target, active, row_group, weight=w, backend=backend).backward()
    w_ref = weight.double().clone().requires_grad_(True)
    ref.masked_cross_entropy(logits, target, active, row_group, weight=w_ref).backward()
    assert torch.allclose(w.grad, w_ref.grad)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs_and_no_mutation(backend, device):
    gen = generator(13)
    big = torch.randn(20, 30, generator=gen).to(device)
    logits = big[::2, 1::2]  # strided view
    target = torch.randint(0, 15, (20,), generator=gen)[::2].to(device)
    active = (torch.rand(15, 10, generator=gen) > 0.3).t().to(device)  # non-contiguous [10, 15]
    snapshot = [t.clone() for t in (big, target, active)]
    got = run(backend, logits, target, active, None)
    want = oracle(logits, target, active, None)
    for a, b in zip(got[:2], want[:2]):
        assert_close(a.cpu(), b.cpu(), torch.float32)
    for before, after in zip(snapshot, (big, target, active)):
        assert torch.equal(before, after)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_deterministic(backend, device):
    logits, target, active, row_group, weight = make_case(300, 101, 14, device=device)
    a = run(backend, logits, target, active, row_group, weight)
    b = run(backend, logits, target, active, row_group, weight)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_second_backward_is_right_or_refused(backend, device):
    """The gradient buffer is reused across backward calls: a second backward through the same
    graph gives the right gradient (CPU: the buffer is never modified) or is refused (CUDA
    rescales it in place and bumps its version), never silently wrong."""
    logits, target, active, row_group, _ = make_case(5, 6, 15, device=device)
    z = logits.clone().requires_grad_(True)
    loss = ops.masked_cross_entropy(z, target, active, row_group, backend=backend)
    (2 * loss).backward(retain_graph=True)
    first = z.grad.clone()
    z.grad = None
    if device.type == "cuda":
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
    else:
        loss.backward()
        assert torch.allclose(z.grad, first / 2)


BAD_INPUTS = [
    (dict(logits=torch.zeros(3, 4, dtype=torch.long)), "logits"),
    (dict(logits=torch.zeros(3, 4, 2)), "logits"),
    (dict(logits=torch.zeros(3, 0)), "logits"),
    (dict(target=torch.zeros(3)), "target"),
    (dict(target=torch.zeros(4, dtype=torch.long)), "target"),
    (dict(target=torch.tensor([0, 4, 1])), "target"),
    (dict(target=torch.tensor([0, -2, 1])), "target"),
    (dict(active=torch.ones(4)), "active"),
    (dict(active=torch.ones(5, dtype=torch.bool)), "active"),
    (dict(active=torch.ones(2, 4, dtype=torch.bool)), "row_group"),
    (dict(active=torch.ones(2, 4, dtype=torch.bool), row_group=torch.tensor([0, 2, 1])), "row_group"),
    (dict(active=torch.ones(2, 4, dtype=torch.bool), row_group=torch.tensor([0.0, 1.0, 1.0])), "row_group"),
    (dict(row_group=torch.tensor([0, 0, 0])), "row_group"),
    (dict(weight=torch.ones(2)), "weight"),
    (dict(mode="soft"), "mode"),
    (dict(reduction="avg"), "reduction"),
    (dict(mask_value=float("nan")), "mask_value"),
    (dict(mask_value=float("inf")), "mask_value"),
    (dict(offset=float("inf")), "offset"),
    (dict(backend="tpu"), "backend"),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("override,name", BAD_INPUTS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_naming_the_argument(backend, device, override, name):
    args = dict(logits=torch.randn(3, 4), target=torch.tensor([0, 1, 2]), active=None, row_group=None)
    args.update(override)
    kwargs = {k: args.pop(k) for k in list(args) if k not in ("logits", "target", "active", "row_group")}
    kwargs.setdefault("backend", backend)
    moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    moved_kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    with pytest.raises((ValueError, RuntimeError), match=name):
        ops.masked_cross_entropy(moved["logits"], moved["target"], moved["active"], moved["row_group"], **moved_kwargs)


def test_unavailable_backend_says_why():
    with pytest.raises(RuntimeError, match="backend='cuda' is not available"):
        ops.masked_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), backend="cuda")


@pytest.mark.parametrize("name", ["target", "active", "row_group", "weight"])
def test_mixed_devices_raise(name):
    """An argument on another device (here the meta device, so no GPU is needed) is named."""
    args = dict(target=torch.tensor([0, 1]), active=torch.ones(2, 3, dtype=torch.bool),
                row_group=torch.tensor([0, 1]), weight=torch.ones(2))
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=name):
        ops.masked_cross_entropy(torch.randn(2, 3), args["target"], args["active"], args["row_group"],
                                 weight=args["weight"])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    op = torch.ops.pyfastlab.masked_cross_entropy_triton if backend == "triton" else torch.ops.pyfastlab.masked_cross_entropy
    logits, target, active, row_group, weight = make_case(6, 9, 16, device=device)
    for requires_grad, reduction in itertools.product((False, True), (0, 2)):
        z = logits.clone().requires_grad_(requires_grad)
        args = (z, target, active, row_group.long(), weight, 0, float("-inf"), 0.0, 0.0, 1.0, -100, reduction,
                requires_grad)
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_torch_compile_fullgraph():
    logits, target, active, row_group, _ = make_case(8, 10, 17)
    fn = torch.compile(lambda z: ops.masked_cross_entropy(z, target, active, row_group, backend="cpu"),
                       fullgraph=True, backend="aot_eager")
    z = logits.clone().requires_grad_(True)
    loss = fn(z)
    loss.backward()
    want = oracle(logits, target, active, row_group)
    assert_close(loss, want[0], torch.float32)
    assert_close(z.grad, want[1], torch.float32)


def test_tolerance_table_covers_all_accepted_dtypes():
    assert set(TOLERANCES) == {torch.float64, torch.float32, torch.float16, torch.bfloat16}


def test_bit_identical_whatever_the_thread_count():
    """Rows are independent and the loss is summed in fixed blocks: 1 or 2 threads, same bits."""
    logits, target, active, row_group, weight = make_case(2000, 333, 18)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run("cpu", logits, target, active, row_group, weight))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)
