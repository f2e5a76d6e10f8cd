"""pgd_linf_step_: bit-identical to the eager chain, the box and ball invariants, bad input."""
import pytest
import torch

from helpers import generator, kernel_backends
from pyfastlab import ops
from pyfastlab.reference import continual as ref

BACKENDS = kernel_backends()


def make_case(shape, seed, dtype=torch.float32, device="cpu"):
    gen = generator(seed)
    x_clean = torch.rand(shape, generator=gen).to(dtype)
    x_adv = (x_clean + (torch.rand(shape, generator=gen) - 0.5) * 0.1).to(dtype)
    grad = torch.randn(shape, generator=gen).to(dtype)
    grad.view(-1)[::7] = 0  # sign(0) = 0
    return x_adv.to(device), grad.to(device), x_clean.to(device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitwise_equal_to_eager_chain(backend, device, dtype):
    x, g, x0 = make_case((64, 3, 8, 8), 1, dtype, device)
    want = ref.pgd_linf_step_(x.clone(), g, x0, eps=0.03, step_size=0.01)
    got = x.clone()
    out = ops.pgd_linf_step_(got, g, x0, eps=0.03, step_size=0.01, backend=backend)
    assert out is got
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_within_one_ulp(backend, device, dtype):
    x, g, x0 = make_case((5, 77), 2, dtype, device)
    want = ref.pgd_linf_step_(x.float(), g.float(), x0.float(), eps=0.05, step_size=0.02).to(dtype)
    got = ops.pgd_linf_step_(x.clone(), g, x0, eps=0.05, step_size=0.02, backend=backend)
    ulp = torch.finfo(dtype).eps * want.abs().float().clamp(min=1e-3)
    assert ((got.float() - want.float()).abs() <= ulp).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_invariants(backend, device):
    x, g, x0 = make_case((1000,), 3, torch.float64, device)
    eps, lo, hi = 0.04, 0.0, 1.0
    for _ in range(5):
        ops.pgd_linf_step_(x, g, x0, eps=eps, step_size=0.03, lo=lo, hi=hi, backend=backend)
        assert ((x >= lo) & (x <= hi)).all()
        assert ((x - x0).abs() <= eps + 1e-12).all()
    again = x.clone()
    ops.pgd_linf_step_(again, g, x0, eps=eps, step_size=0.0, backend=backend)
    assert torch.equal(again, x)  # step 0 is idempotent on a projected point


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_worked_example_and_nan(backend, device):
    x = torch.tensor([0.50, 0.99, 0.50, float("nan"), 0.3], device=device)
    x0 = torch.tensor([0.48, 0.99, 0.48, 0.5, 0.3], device=device)
    g = torch.tensor([1.0, 2.0, 0.0, 1.0, float("nan")], device=device)
    ops.pgd_linf_step_(x, g, x0, eps=0.03, step_size=0.02, backend=backend)
    assert torch.allclose(x[:3].cpu(), torch.tensor([0.51, 1.00, 0.50]))
    assert torch.isnan(x[3]) and torch.isnan(x[4])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_any_strides_and_only_x_adv_written(backend, device):
    base, g, x0 = make_case((8, 10), 4, device=device)
    x = base.t()  # non-contiguous, written in place
    g, x0 = g.t().contiguous(), x0.t()[:, :]
    g_before, x0_before = g.clone(), x0.clone()
    want = ref.pgd_linf_step_(x.clone(), g, x0, eps=0.02, step_size=0.01, lo=-float("inf"), hi=float("inf"))
    ops.pgd_linf_step_(x, g, x0, eps=0.02, step_size=0.01, lo=-float("inf"), hi=float("inf"), backend=backend)
    assert torch.equal(x, want)
    assert torch.equal(base.t(), want)
    assert torch.equal(g, g_before) and torch.equal(x0, x0_before)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kwargs,name", [
    (dict(eps=-0.1), "eps"), (dict(eps=float("inf")), "eps"), (dict(step_size=float("nan")), "step_size"),
    (dict(lo=1.0, hi=0.0), "lo"), (dict(grad=torch.zeros(3, 3)), "grad"),
    (dict(x_clean=torch.zeros(4, 3, dtype=torch.float64)), "x_clean"),
    (dict(x_adv=torch.zeros(4, 3, dtype=torch.long)), "x_adv"),
    (dict(x_adv=torch.zeros(4, 3, requires_grad=True)), "x_adv"), (dict(backend="npu"), "backend"),
])
def test_bad_input(backend, device, kwargs, name):
    args = dict(x_adv=torch.rand(4, 3), grad=torch.randn(4, 3), x_clean=torch.rand(4, 3), eps=0.1, step_size=0.01,
                backend=backend)
    args.update(kwargs)
    args = {k: (v.detach().to(device).requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v)
            for k, v in args.items()}
    with pytest.raises((ValueError, RuntimeError), match=name):
        ops.pgd_linf_step_(args.pop("x_adv"), args.pop("grad"), args.pop("x_clean"), **args)


def test_x_adv_overlapping_an_input_is_refused():
    x = torch.rand(10)
    with pytest.raises(ValueError, match="share memory"):
        ops.pgd_linf_step_(x, x, torch.rand(10), eps=0.1, step_size=0.1)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    name = "pgd_linf_step_triton_" if backend == "triton" else "pgd_linf_step_"
    x, g, x0 = make_case((6, 5), 5, device=device)
    torch.library.opcheck(getattr(torch.ops.pyfastlab, name), (x, g, x0, 0.1, 0.02, 0.0, 1.0))


def test_torch_compile_fullgraph():
    x, g, x0 = make_case((4, 9), 6)
    want = ref.pgd_linf_step_(x.clone(), g, x0, eps=0.05, step_size=0.01)
    fn = torch.compile(lambda x: ops.pgd_linf_step_(x, g, x0, eps=0.05, step_size=0.01, backend="cpu"),
                       fullgraph=True, backend="aot_eager")
    got = x.clone()
    fn(got)
    assert torch.equal(got, want)
