"""kd_loss: every backend against the float64 reference, the identities of distill.md section 5
(items 8-12), edge cases and bad input."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import TOLERANCES, assert_close, generator, kernel_backends
from pyfastlab import ops
from pyfastlab.reference import kd as ref

BACKENDS = kernel_backends()
# (soft_weight, hard_weight) combinations: soft only, hard only, both
WEIGHTS = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)]


def make_case(shape, seed, *, dtype=torch.float32, device="cpu", ignore=True):
    """Student and teacher logits [..., C] and a target with some ignored rows."""
    gen = generator(seed)
    n_classes = shape[-1]
    student = (3 * torch.randn(shape, generator=gen)).to(dtype)
    teacher = (3 * torch.randn(shape, generator=gen)).to(dtype)
    target = torch.randint(0, n_classes, shape[:-1], generator=gen)
    if ignore and target.numel() > 2:
        target.view(-1)[1] = -100
    return student.to(device), teacher.to(device), target.to(device)


def run(backend, student, teacher, target=None, upstream=None, **kwargs):
    """Loss and student gradient of one call; the teacher also requires grad and must get none."""
    s = student.detach().clone().requires_grad_(True)
    t = teacher.detach().clone().requires_grad_(True)
    loss = ops.kd_loss(s, t, target, backend=backend, **kwargs)
    loss.backward(torch.ones_like(loss) if upstream is None else upstream.to(loss.dtype))
    assert t.grad is None
    return loss.detach(), s.grad


def oracle(student, teacher, target=None, upstream=None, **kwargs):
    up = None if upstream is None else upstream.double()
    return run("reference", student.double(), teacher.double(), target, up, **kwargs)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weights", WEIGHTS, ids=["soft", "hard", "both"])
def test_matches_reference(backend, device, dtype, weights):
    student, teacher, target = make_case((3, 5, 37), 1, dtype=dtype, device=device)
    kwargs = dict(temperature=2.5, soft_weight=weights[0], hard_weight=weights[1])
    for reduction in ("batchmean", "sum", "none"):
        upstream = torch.linspace(-1, 2, 15, device=device).reshape(3, 5) if reduction == "none" else None
        got = run(backend, student, teacher, target, upstream, reduction=reduction, **kwargs)
        want = oracle(student, teacher, target, upstream, reduction=reduction, **kwargs)
        assert got[0].dtype == dtype and got[1].dtype == dtype and got[0].shape == want[0].shape
        # the gradient is stored in the logits' dtype by the forward, then scaled by the upstream
        assert_close(got[0].cpu(), want[0].cpu(), dtype, f"{reduction} loss", reduction=37, backend=backend)
        assert_close(got[1].cpu(), want[1].cpu(), dtype, f"{reduction} grad", reduction=37, roundings=2,
                     backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n_classes", [4097, 16385])
def test_rows_longer_than_a_loop_block(backend, device, dtype, n_classes):
    """Rows past the looped kernels' column blocks (4096 on a GPU, 16384 interpreted), every dtype."""
    student, teacher, target = make_case((3, n_classes), n_classes, dtype=dtype, device=device)
    kwargs = dict(soft_weight=0.7, hard_weight=0.3)
    got = run(backend, student, teacher, target, **kwargs)
    want = oracle(student, teacher, target, **kwargs)
    for a, b, roundings in zip(got, want, (1, 2)):
        assert_close(a.cpu(), b.cpu(), dtype, reduction=n_classes, roundings=roundings, backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("n_classes", [2, 3, 7, 8, 9, 31, 127, 128, 129, 1000])
def test_row_lengths(backend, device, n_classes):
    student, teacher, target = make_case((9, n_classes), n_classes, device=device)
    kwargs = dict(soft_weight=0.7, hard_weight=0.3)
    got = run(backend, student, teacher, target, **kwargs)
    want = oracle(student, teacher, target, **kwargs)
    for a, b in zip(got, want):
        assert_close(a.cpu(), b.cpu(), torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_long_rows(backend, device):
    """Past Triton's column block (several blocks per row) and far past a CPU L1 row."""
    student, teacher, target = make_case((3, 40000), 5, device=device)
    kwargs = dict(soft_weight=0.5, hard_weight=0.5, reduction="sum")
    got = run(backend, student, teacher, target, **kwargs)
    want = oracle(student, teacher, target, **kwargs)
    for a, b in zip(got, want):
        assert_close(a.cpu(), b.cpu(), torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS + [pytest.param("reference", torch.device("cpu"), id="reference")])
def test_spec_numbers(backend, device):
    """Item 8: s = (1, 2, 3), t = (3, 2, 1)."""
    s = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64, device=device)
    t = torch.tensor([[3.0, 2.0, 1.0]], dtype=torch.float64, device=device)
    y = torch.tensor([2], device=device)
    # the spec prints losses to 10 decimals and gradients to 8
    close = lambda a, b: torch.testing.assert_close(a.cpu(), torch.tensor(b, dtype=torch.float64),
                                                    atol=1e-9 if a.dim() == 0 else 5e-9, rtol=0)
    for temperature, want in ((1.0, 1.1504207652), (2.0, 1.2806266713), (4.0, 1.3196299122)):
        close(run(backend, s, t, temperature=temperature)[0], want)
    loss, grad = run(backend, s, t, temperature=2.0)
    close(grad[0], [-0.64031334, 0.0, 0.64031334])
    loss, grad = run(backend, s, t, y, soft_weight=0.0, hard_weight=1.0)
    close(loss, 0.4076059644)
    close(grad[0], [0.09003057, 0.24472847, -0.33475904])
    loss, grad = run(backend, s, t, y, temperature=2.0, soft_weight=0.5, hard_weight=0.5)
    close(loss, 0.8441163179)
    close(grad[0], [-0.27514138, 0.12236424, 0.15277715])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_equals_torch_kl_div_and_cross_entropy(backend, device):
    """Item 9: soft-only (2-D, no ignore) = T^2 kl_div(batchmean); hard-only = F.cross_entropy."""
    student, teacher, target = make_case((11, 23), 2, dtype=torch.float64, device=device)
    temperature = 3.0
    got = run(backend, student, teacher, temperature=temperature)
    s = student.clone().requires_grad_(True)
    want = temperature**2 * F.kl_div(F.log_softmax(s / temperature, 1), F.log_softmax(teacher / temperature, 1),
                                     log_target=True, reduction="batchmean")
    want.backward()
    assert_close(got[0].cpu(), want.detach().cpu(), torch.float64)
    assert_close(got[1].cpu(), s.grad.cpu(), torch.float64)
    got = run(backend, student, teacher, target, soft_weight=0.0, hard_weight=1.0)
    s = student.clone().requires_grad_(True)
    want = F.cross_entropy(s, target, ignore_index=-100)
    want.backward()
    assert_close(got[0].cpu(), want.detach().cpu(), torch.float64)
    assert_close(got[1].cpu(), s.grad.cpu(), torch.float64)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_label_smoothing_identity(backend, device):
    """Item 10: constant teacher, T = 1, soft = eps, hard = 1 - eps is label smoothing minus eps log C."""
    s = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64, device=device)
    loss, _ = run(backend, s, torch.zeros_like(s), torch.tensor([0], device=device), temperature=1.0,
                  soft_weight=0.1, hard_weight=0.9)
    torch.testing.assert_close(loss.cpu(), torch.tensor(2.1977447356, dtype=torch.float64), atol=1e-9, rtol=0)
    student, _, target = make_case((7, 13), 3, dtype=torch.float64, device=device, ignore=False)
    eps = 0.2
    loss, _ = run(backend, student, torch.full_like(student, 0.7), target, temperature=1.0, soft_weight=eps,
                  hard_weight=1 - eps)
    want = F.cross_entropy(student, target, label_smoothing=eps) - eps * math.log(13)
    assert_close(loss.cpu(), want.cpu(), torch.float64)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_shifted_teacher_and_large_temperature(backend, device):
    """Item 11: kd(s, s + c) = 0 with zero gradient; T (q - p) -> centred (s - t)/C as T grows."""
    student, _, _ = make_case((6, 5), 4, dtype=torch.float64, device=device)
    loss, grad = run(backend, student, student + 3.5)
    assert abs(loss.item()) < 1e-12 and grad.abs().max().item() < 1e-12
    s = torch.tensor([[0.3, -1.2, 2.0, 0.5, -0.4]], dtype=torch.float64, device=device)
    t = torch.tensor([[1.1, 0.2, -0.7, 0.0, 0.9]], dtype=torch.float64, device=device)
    limit = ((s - s.mean()) - (t - t.mean())) / 5
    for temperature, bound in ((100.0, 2.4e-3), (1000.0, 2.4e-4)):
        _, grad = run(backend, s, t, temperature=temperature, reduction="sum")  # grad = T (q - p)
        assert (grad - limit).abs().max().item() <= bound * 1.05


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ignore_index_and_reductions(backend, device):
    """Item 12: all rows ignored -> 0 and zero gradient (never NaN), even for a NaN upstream;
    "none" has the leading shape; sum = batchmean * N_valid; ignored rows are out of both terms."""
    student, teacher, target = make_case((4, 3, 9), 5, dtype=torch.float64, device=device)
    kwargs = dict(soft_weight=0.6, hard_weight=0.4)
    ignored = torch.full_like(target, -100)
    for reduction in ("batchmean", "sum"):
        loss, grad = run(backend, student, teacher, ignored, reduction=reduction, **kwargs)
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    upstream = torch.full((4, 3), float("nan"), dtype=torch.float64, device=device)
    loss, grad = run(backend, student, teacher, ignored, upstream, reduction="none", **kwargs)
    assert loss.shape == (4, 3) and torch.equal(loss, torch.zeros_like(loss))
    assert torch.equal(grad, torch.zeros_like(grad))
    n_valid = (target != -100).sum().item()
    mean, _ = run(backend, student, teacher, target, **kwargs)
    total, _ = run(backend, student, teacher, target, reduction="sum", **kwargs)
    rows, _ = run(backend, student, teacher, target, reduction="none", **kwargs)
    assert_close(total.cpu(), (mean * n_valid).cpu(), torch.float64)
    assert rows[target == -100].abs().sum().item() == 0.0
    assert_close(rows.sum().cpu(), total.cpu(), torch.float64)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_infinite_logits(backend, device):
    """Item 12, 3.7: teacher -inf -> p_c = 0, no NaN; student -inf where p_c > 0 -> +inf with a
    finite gradient; rows all -inf -> zero loss and gradient, still counted; NaN / +inf -> NaN."""
    inf, nan = float("inf"), float("nan")
    f64 = dict(dtype=torch.float64, device=device)
    s = torch.tensor([[1.0, 2.0, 3.0], [1.0, -inf, 0.5], [-inf, -inf, -inf], [0.1, 0.2, 0.3],
                      [0.0, nan, 1.0], [0.0, inf, 1.0], [0.5, 0.1, 0.2]], **f64)
    t = torch.tensor([[-inf, 2.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [-inf, -inf, -inf],
                      [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [1.0, nan, 0.0]], **f64)
    loss, grad = run(backend, s, t, reduction="none", temperature=2.0)
    want_loss, want_grad = oracle(s, t, reduction="none", temperature=2.0)
    assert torch.isfinite(loss[0]) and torch.isfinite(grad[0]).all()
    assert_close(loss[0].cpu(), want_loss[0].cpu(), torch.float64)
    assert_close(grad[0].cpu(), want_grad[0].cpu(), torch.float64)
    assert loss[1].item() == inf and torch.isfinite(grad[1]).all()
    assert_close(grad[1].cpu(), want_grad[1].cpu(), torch.float64)
    for i in (2, 3):
        assert loss[i].item() == 0.0 and torch.equal(grad[i], torch.zeros_like(grad[i]))
    for i in (4, 5, 6):
        assert torch.isnan(loss[i]) and torch.isnan(grad[i]).all()
    assert torch.isnan(want_loss[4:]).all()
    # dead rows still count in N_valid: batchmean over 2 rows, one of them all -inf
    mean, _ = run(backend, s[[0, 2]], t[[0, 2]], temperature=2.0)
    assert_close(mean.cpu(), want_loss[0].cpu() / 2, torch.float64)
    # a zero weight switches its term off: a NaN teacher does not reach a hard-only loss
    loss, grad = run(backend, s[[6]], t[[6]], torch.tensor([0], device=device), soft_weight=0.0, hard_weight=1.0)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_large_logits(backend, device):
    student, teacher, target = make_case((5, 17), 6, dtype=torch.float64, device=device)
    kwargs = dict(soft_weight=0.5, hard_weight=0.5)
    got = run(backend, 1e4 + student * 100, 1e4 + teacher * 100, target, **kwargs)
    want = oracle(1e4 + student * 100, 1e4 + teacher * 100, target, **kwargs)
    assert torch.isfinite(got[0])
    for a, b in zip(got, want):
        assert_close(a.cpu(), b.cpu(), torch.float64)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradcheck(backend, device):
    """The backward scales out of place, so gradcheck's repeated backward passes see the same buffer."""
    student, teacher, target = make_case((2, 3, 6), 7, dtype=torch.float64, device=device)
    s = student.clone().requires_grad_(True)
    for reduction in ("batchmean", "none"):
        fn = lambda s: ops.kd_loss(s, teacher, target, temperature=1.7, soft_weight=0.8, hard_weight=0.6,
                                   reduction=reduction, backend=backend)
        assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_second_backward_through_the_same_graph(backend, device):
    """Spec 6.2: the saved gradient is scaled out of place, never in place: a second backward
    with another upstream gets the right gradient."""
    student, teacher, target = make_case((5, 6), 8, device=device)
    s = student.clone().requires_grad_(True)
    loss = ops.kd_loss(s, teacher, target, soft_weight=0.5, hard_weight=0.5, backend=backend)
    (3 * loss).backward(retain_graph=True)
    first = s.grad.clone()
    s.grad = None
    loss.backward()
    assert_close(s.grad.cpu(), (first / 3).cpu(), torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_no_grad_and_student_without_grad(backend, device):
    student, teacher, target = make_case((7, 11), 9, dtype=torch.float64, device=device)
    want = ref.kd_loss(student, teacher, target, soft_weight=0.5, hard_weight=0.5)
    got = ops.kd_loss(student, teacher, target, soft_weight=0.5, hard_weight=0.5, backend=backend)
    assert_close(got.cpu(), want.cpu(), torch.float64)
    t = teacher.clone().requires_grad_(True)  # only the teacher requires grad: no gradient anywhere
    loss = ops.kd_loss(student, t, target, backend=backend)
    if loss.requires_grad:
        loss.backward()
    assert t.grad is None


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs_and_no_mutation(backend, device):
    gen = generator(10)
    big_s = torch.randn(6, 20, 30, generator=gen).to(device)
    big_t = torch.randn(30, 20, 6, generator=gen).to(device)
    student = big_s[::2, :, 1::2]           # strided view [3, 20, 15]
    teacher = big_t.permute(2, 1, 0)[::2, :, :15]  # permuted view [3, 20, 15]
    target = torch.randint(0, 15, (20, 3), generator=gen).t().to(device)  # non-contiguous [3, 20]
    snapshot = [x.clone() for x in (big_s, big_t, target)]
    kwargs = dict(soft_weight=0.5, hard_weight=0.5)
    got = run(backend, student, teacher, target, **kwargs)
    want = oracle(student, teacher, target, **kwargs)
    for a, b in zip(got, want):
        assert_close(a.cpu(), b.cpu(), torch.float32)
    for before, after in zip(snapshot, (big_s, big_t, target)):
        assert torch.equal(before, after)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_and_int32_target(backend, device):
    empty = torch.zeros(0, 5, device=device, requires_grad=True)
    target0 = torch.zeros(0, dtype=torch.long, device=device)
    f = lambda *a, **k: ops.kd_loss(*a, backend=backend, **k)
    assert f(empty, empty.detach(), target0).item() == 0.0
    assert f(empty, empty.detach(), target0, reduction="none").shape == (0,)
    f(empty, empty.detach(), target0, reduction="sum").backward()
    assert empty.grad.shape == (0, 5)
    student, teacher, target = make_case((4, 6), 11, device=device)
    a = run(backend, student, teacher, target.int(), hard_weight=0.5)
    b = run(backend, student, teacher, target, hard_weight=0.5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_deterministic(backend, device):
    student, teacher, target = make_case((300, 101), 12, device=device)
    a = run(backend, student, teacher, target, soft_weight=0.5, hard_weight=0.5)
    b = run(backend, student, teacher, target, soft_weight=0.5, hard_weight=0.5)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_bit_identical_whatever_the_thread_count():
    """Rows are independent and the loss is summed in fixed fp64 blocks: 1 or 2 threads, same bits."""
    student, teacher, target = make_case((2000, 333), 13)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run("cpu", student, teacher, target, soft_weight=0.5, hard_weight=0.5))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", [b.values[0] for b in BACKENDS if b.values[1].type == "cpu"])
def test_torch_compile_fullgraph(backend):
    student, teacher, target = make_case((2, 4, 10), 14)
    fn = torch.compile(lambda s: ops.kd_loss(s, teacher, target, soft_weight=0.5, hard_weight=0.5, backend=backend),
                       fullgraph=True, backend="aot_eager")
    s = student.clone().requires_grad_(True)
    loss = fn(s)
    loss.backward()
    want = oracle(student, teacher, target, soft_weight=0.5, hard_weight=0.5)
    assert_close(loss, want[0], torch.float32)
    assert_close(s.grad, want[1], torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    op = torch.ops.pyfastlab.kd_loss_forward_triton if backend == "triton" else torch.ops.pyfastlab.kd_loss_forward
    student, teacher, target = make_case((6, 9), 15, device=device)
    for requires_grad, reduction, with_target in itertools.product((False, True), (0, 2), (False, True)):
        s = student.clone().requires_grad_(requires_grad)
        args = (s, teacher, target if with_target else None, 2.0, 0.5, 0.5 if with_target else 0.0, -100,
                reduction, requires_grad)
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


BAD_INPUTS = [
    (dict(student_logits=torch.zeros(3, 4, dtype=torch.long)), "student_logits"),
    (dict(student_logits=torch.zeros(3, 0), teacher_logits=torch.zeros(3, 0)), "student_logits"),
    (dict(teacher_logits=torch.zeros(3, 5)), "teacher_logits"),
    (dict(teacher_logits=torch.zeros(3, 4, dtype=torch.long)), "teacher_logits"),
    (dict(student_logits=torch.zeros(3, 1), teacher_logits=torch.zeros(3, 1)), "regression loss"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(soft_weight=float("nan")), "soft_weight"),
    (dict(hard_weight=float("inf")), "hard_weight"),
    (dict(reduction="mean"), "batchmean"),
    (dict(reduction="avg"), "reduction"),
    (dict(target=None, hard_weight=0.5), "target"),
    (dict(target=torch.zeros(4, dtype=torch.long)), "target"),
    (dict(target=torch.zeros(3)), "target"),
    (dict(target=torch.tensor([0, 4, 1])), "target"),
    (dict(target=torch.tensor([0, -2, 1])), "target"),
    (dict(backend="tpu"), "backend"),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("override,name", BAD_INPUTS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_naming_the_argument(backend, device, override, name):
    args = dict(student_logits=torch.randn(3, 4), teacher_logits=torch.randn(3, 4), target=torch.tensor([0, 1, 2]))
    args.update(override)
    kwargs = {k: args.pop(k) for k in list(args) if k not in ("student_logits", "teacher_logits", "target")}
    kwargs.setdefault("backend", backend)
    moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises((ValueError, RuntimeError), match=name):
        ops.kd_loss(moved["student_logits"], moved["teacher_logits"], moved["target"], **kwargs)


@pytest.mark.parametrize("name", ["teacher_logits", "target"])
def test_mixed_devices_raise(name):
    """An argument on another device (the meta device: no GPU needed) is named."""
    args = dict(teacher_logits=torch.randn(2, 3), target=torch.tensor([0, 1]))
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=name):
        ops.kd_loss(torch.randn(2, 3), args["teacher_logits"], args["target"])


def test_kd_loss_is_listed_in_the_distill_family():
    assert ops.OPS["kd_loss"] == "distill"


def test_tolerance_table_covers_all_accepted_dtypes():
    assert set(TOLERANCES) == {torch.float64, torch.float32, torch.float16, torch.bfloat16}
