"""linear_cka and cka_matrix: every backend against the float64 reference, the identities of
distill.md section 5 (items 1-7), degenerate sides, edge cases and bad input."""
import functools
import math

import pytest
import torch

from helpers import TOLERANCES, assert_close, generator, kernel_backends
from pyfastlab import ops
from pyfastlab.reference import cka as ref

BACKENDS = kernel_backends()
F64 = torch.float64


def randn(*shape, seed, dtype=F64, device="cpu"):
    return torch.randn(*shape, generator=generator(seed), dtype=F64).to(dtype).to(device)


def run(backend, x, y, upstream=None, **kwargs):
    """CKA, dx and dy of one call."""
    x = x.detach().clone().requires_grad_(True)
    y = y.detach().clone().requires_grad_(True)
    out = ops.linear_cka(x, y, backend=backend, **kwargs)
    out.backward(torch.ones_like(out) if upstream is None else upstream.to(out.dtype))
    return out.detach(), x.grad, y.grad


def oracle(x, y, upstream=None, **kwargs):
    up = None if upstream is None else upstream.double()
    return run("reference", x.double(), y.double(), up, **kwargs)


# (batch, n, p, q): Gram form, feature form (n(p+q) > p^2+q^2+pq), odd sizes, chunked p > 2048
SHAPES = [((3,), 17, 31, 5), ((2, 2), 40, 3, 4), ((), 7, 129, 1), ((2,), 9, 2100, 33), ((1,), 300, 6, 8)]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, device, dtype, debiased, shape):
    batch, n, p, q = shape
    x = randn(*batch, n, p, seed=1, dtype=dtype, device=device)
    y = (x[..., :1] * randn(1, q, seed=3, dtype=dtype, device=device) + randn(*batch, n, q, seed=2, dtype=dtype,
                                                                                 device=device)).to(dtype)
    upstream = torch.linspace(-1, 2, max(1, math.prod(batch)), device=device).reshape(batch)
    got, want = run(backend, x, y, upstream, debiased=debiased), oracle(x, y, upstream, debiased=debiased)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    for name, a, b in zip(("cka", "dx", "dy"), got, want):
        scale = b.abs().max().clamp(min=1e-30) if name != "cka" else 1.0
        assert_close((a.double() / scale).cpu(), (b / scale).cpu(), dtype, name, reduction=n * (p + q), backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_spec_item_1_pearson(backend, device):
    x = torch.tensor([1.0, 2, 3, 4], dtype=F64, device=device)[:, None]
    assert abs(ops.linear_cka(x, x**2, backend=backend).item() - 125 / 129) < 1e-12
    assert abs(ops.linear_cka(x, x**2, debiased=True, backend=backend).item() - 0.9994562262) < 1e-10


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_spec_item_2_numbers_and_gradient(backend, device):
    x = torch.tensor([[1.0, 0], [0, 1], [1, 1], [2, 0], [0, 3]], dtype=F64, device=device)
    y = torch.tensor([[1.0], [2], [2], [4], [3]], dtype=F64, device=device)
    cka, dx, _ = run(backend, x, y)
    assert abs(cka.item() - 0.0723858414) < 1e-10
    assert abs(ops.linear_cka(x, y, debiased=True, backend=backend).item() + 0.6546536707) < 1e-10
    assert torch.allclose(dx[0].cpu(), torch.tensor([-0.10419653, -0.05302204], dtype=F64), atol=1e-8)
    assert torch.allclose(dx[3].cpu(), torch.tensor([0.09466775, 0.10072922], dtype=F64), atol=1e-8)
    want = torch.tensor([[0.05643874, 0.1302773], [0.1302773, -0.05643874]], dtype=F64)
    assert torch.allclose((x.t() @ dx).cpu(), want, atol=1e-8)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("debiased", [False, True])
def test_spec_items_3_and_5_gradient_properties(backend, device, debiased):
    """CKA(X, X) = 1, symmetry, n = 2 gives 1; column sums of dX are 0, <X, dX> = 0, X^T dX symmetric."""
    x, y = randn(4, 12, 5, seed=4, device=device), randn(4, 12, 7, seed=5, device=device)
    assert torch.allclose(ops.linear_cka(x, x, debiased=debiased, backend=backend).cpu(), torch.ones(4, dtype=F64))
    assert torch.allclose(ops.linear_cka(x, y, debiased=debiased, backend=backend),
                          ops.linear_cka(y, x, debiased=debiased, backend=backend), atol=1e-14)
    _, dx, _ = run(backend, x, y, debiased=debiased)
    assert dx.sum(-2).abs().max() < 1e-12
    assert (x * dx).sum((-2, -1)).abs().max() < 1e-12
    xtdx = x.transpose(-1, -2) @ dx
    assert torch.allclose(xtdx, xtdx.transpose(-1, -2), atol=1e-12)
    pair = randn(3, 2, 4, seed=6, device=device)
    assert torch.equal(ops.linear_cka(pair, randn(3, 2, 3, seed=7, device=device), backend=backend).cpu(),
                       torch.ones(3, dtype=F64))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("debiased", [False, True])
def test_spec_item_4_invariances(backend, device, debiased):
    x, y = randn(20, 6, seed=8, device=device), randn(20, 4, seed=9, device=device)
    q, _ = torch.linalg.qr(randn(6, 6, seed=10, device=device))
    f = lambda a, b: ops.linear_cka(a, b, debiased=debiased, backend=backend).item()
    base = f(x, y)
    assert abs(f(3.5 * x @ q + randn(1, 6, seed=11, device=device), y) - base) < 1e-12
    perm = torch.randperm(20, generator=generator(12)).to(device)
    assert abs(f(x[perm], y[perm]) - base) < 1e-12
    assert abs(f(x[perm], y) - base) > 1e-4
    assert abs(f(x * torch.linspace(0.1, 5, 6, dtype=F64, device=device), y) - base) > 1e-4


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_spec_item_5_gram_form_equals_feature_form(backend, device):
    """n = 60, p = q = 3 takes the feature form, p = q = 90 the Gram form: both agree with the
    Kornblith feature-form formulas evaluated directly."""
    for p in (3, 90):
        x, y = randn(60, p, seed=13, device=device), randn(60, p, seed=14, device=device)
        xc, yc = x - x.mean(0), y - y.mean(0)
        want = (yc.t() @ xc).square().sum() / (torch.linalg.matrix_norm(xc.t() @ xc) *
                                               torch.linalg.matrix_norm(yc.t() @ yc))
        assert abs(ops.linear_cka(x, y, backend=backend).item() - want.item()) < 1e-12


def test_debiased_equals_kornblith_u_statistic():
    """C_u of 3.1 from centred features = Kornblith's debiased helper on the raw Gram."""
    x = randn(9, 4, seed=15)
    k = x @ x.t()
    n = 9
    kt = k - torch.diag(torch.diag(k))
    r = kt.sum(1)
    explicit = kt - (r[:, None] + r[None, :]) / (n - 2) + r.sum() / ((n - 1) * (n - 2))
    explicit.fill_diagonal_(0)
    assert torch.allclose(ref.project(ref.centred_gram(x), True), explicit, atol=1e-12)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("debiased", [False, True])
def test_spec_item_6_batched_equals_loop_and_matrix(backend, device, debiased):
    x, y = randn(3, 2, 10, 7, seed=16, device=device), randn(3, 2, 10, 5, seed=17, device=device)
    got = ops.linear_cka(x, y, debiased=debiased, backend=backend)
    loop = torch.stack([torch.stack([ops.linear_cka(x[i, j], y[i, j], debiased=debiased, backend=backend)
                                     for j in range(2)]) for i in range(3)])
    assert torch.allclose(got, loop, atol=1e-13)
    xs = [randn(10, 7, seed=18, device=device), randn(10, 2, 3, seed=19, device=device)]
    ys = [randn(10, 5, seed=20, device=device), xs[0], randn(10, 1, seed=21, device=device)]
    m = ops.cka_matrix(xs, ys, debiased=debiased, backend=backend)
    assert m.shape == (2, 3)
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            want = ops.linear_cka(a.reshape(10, -1), b, debiased=debiased, backend=backend)
            assert abs(m[i, j].item() - want.item()) < 1e-12
    self_sim = ops.cka_matrix(xs, xs, debiased=debiased, backend=backend)
    assert torch.allclose(self_sim, self_sim.t(), atol=1e-14)
    assert torch.allclose(torch.diagonal(self_sim).cpu(), torch.ones(2, dtype=F64), atol=1e-14)
    stacked = ops.cka_matrix(x[0], y[0], debiased=debiased, backend=backend)  # [L, n, p] tensors
    assert torch.allclose(stacked, ref.cka_matrix(list(x[0]), list(y[0]), debiased=debiased), atol=1e-13)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_cka_matrix_matches_reference_with_gradients(backend, device, dtype):
    xs = [randn(33, 40, seed=22, dtype=dtype, device=device), randn(33, 2, 5, seed=23, dtype=dtype, device=device)]
    ys = [randn(33, 17, seed=24, dtype=dtype, device=device), randn(33, 3, seed=25, dtype=dtype, device=device),
          (xs[0][:, :8] + 0.1).to(dtype)]
    upstream = randn(2, 3, seed=26, device=device)

    def grads(fn, layers_x, layers_y):
        lx = [t.detach().clone().requires_grad_(True) for t in layers_x]
        ly = [t.detach().clone().requires_grad_(True) for t in layers_y]
        out = fn(lx, ly)
        out.backward(upstream.to(out.dtype))
        return [out.detach()] + [t.grad for t in lx + ly]

    for debiased in (False, True):
        got = grads(lambda a, b: ops.cka_matrix(a, b, debiased=debiased, backend=backend), xs, ys)
        want = grads(lambda a, b: ref.cka_matrix(a, b, debiased=debiased), [t.double() for t in xs],
                     [t.double() for t in ys])
        for i, (a, b) in enumerate(zip(got, want)):
            scale = b.abs().max() if i else 1.0
            assert_close((a.double() / scale).cpu(), (b / scale).cpu(), dtype, f"output {i}",
                         reduction=sum(t[0].numel() for t in xs + ys) * xs[0].shape[0], backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradcheck(backend, device):
    # Under the Triton interpreter every Jacobian column is seconds: check random projections there.
    gradcheck = functools.partial(torch.autograd.gradcheck, fast_mode=backend == "triton")
    x, y = randn(2, 6, 3, seed=27, device=device), randn(2, 6, 4, seed=28, device=device)
    wide = randn(1, 5, 9, seed=29, device=device)  # Gram form; (n=40, p=2) takes the feature form
    tall_x, tall_y = randn(40, 2, seed=30, device=device), randn(40, 3, seed=31, device=device)
    for debiased in (False, True):
        fn = lambda a, b: ops.linear_cka(a, b, debiased=debiased, backend=backend)
        for a, b in ((x, y), (wide, wide[..., :4].detach() * 2)):
            assert gradcheck(fn, (a.requires_grad_(True), b.requires_grad_(True)))
    assert gradcheck(lambda a, b: ops.linear_cka(a, b, backend=backend),
                                    (tall_x.requires_grad_(True), tall_y.requires_grad_(True)))
    xs = [randn(6, 3, seed=32, device=device), randn(6, 2, 2, seed=33, device=device)]
    ys = [randn(6, 5, seed=34, device=device), randn(6, 1, seed=35, device=device), randn(6, 2, seed=36, device=device)]
    layers = tuple(t.requires_grad_(True) for t in xs + ys)
    for debiased in (False, True):
        fn = lambda *t: ops.cka_matrix(t[:2], t[2:], debiased=debiased, backend=backend)
        assert gradcheck(fn, layers)


def test_spec_item_7_independent_gaussians():
    biased, debiased = [], []
    for seed in range(10):
        x, y = randn(256, 64, seed=100 + seed, dtype=torch.float32), randn(256, 64, seed=200 + seed,
                                                                           dtype=torch.float32)
        biased.append(ops.linear_cka(x, y).item())
        debiased.append(ops.linear_cka(x, y, debiased=True).item())
    assert abs(sum(biased) / 10 - 64 / (256 + 64)) < 0.02
    assert abs(sum(debiased) / 10) < 0.01


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_debiased_near_biased_for_large_n(backend, device):
    z = randn(2000, 3, seed=37, device=device)
    x = z @ randn(3, 6, seed=38, device=device) + 0.1 * randn(2000, 6, seed=39, device=device)
    y = z @ randn(3, 5, seed=40, device=device) + 0.1 * randn(2000, 5, seed=41, device=device)
    b = ops.linear_cka(x, y, backend=backend).item()
    d = ops.linear_cka(x, y, debiased=True, backend=backend).item()
    assert abs(b - d) < 5e-3


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("debiased", [False, True])
def test_degenerate_side_gives_nan_and_zero_gradient(backend, device, debiased):
    x = randn(3, 6, 4, seed=42, device=device)
    y = randn(3, 6, 5, seed=43, device=device)
    x[1] = torch.tensor([1.0, -2.5, 3.0, 0.5], dtype=F64)  # every row equal: beta_x == 0
    y[2] = 7.0
    cka, dx, dy = run(backend, x, y, debiased=debiased)
    want = oracle(x, y, debiased=debiased)
    assert torch.isnan(cka[1:]).all() and torch.isfinite(cka[0])
    assert torch.equal(dx[1:].cpu(), torch.zeros(2, 6, 4, dtype=F64))
    assert torch.equal(dy[1:].cpu(), torch.zeros(2, 6, 5, dtype=F64))
    assert torch.equal(want[1][1:].cpu(), torch.zeros(2, 6, 4, dtype=F64))
    assert torch.allclose(dx[0], want[1][0], atol=1e-12)
    layers = [x[0].clone().requires_grad_(True), x[1].clone().requires_grad_(True)]
    m = ops.cka_matrix(layers, [y[0], y[2]], debiased=debiased, backend=backend)
    assert torch.isnan(m[1]).all() and torch.isnan(m[:, 1]).all() and torch.isfinite(m[0, 0])
    torch.where(torch.isnan(m), torch.zeros_like(m), m).sum().backward()
    assert torch.isfinite(layers[0].grad).all() and torch.equal(layers[1].grad, torch.zeros_like(layers[1]))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nan_input_propagates(backend, device):
    x, y = randn(2, 5, 3, seed=44, device=device), randn(2, 5, 3, seed=45, device=device)
    x[0, 1, 2] = float("nan")
    cka, dx, _ = run(backend, x, y)
    assert torch.isnan(cka[0]) and torch.isfinite(cka[1])
    assert torch.isnan(dx[0]).any() and torch.isfinite(dx[1]).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_batch_and_empty_stack(backend, device):
    x = torch.zeros(0, 3, 5, 4, dtype=F64, device=device, requires_grad=True)
    y = torch.zeros(0, 3, 5, 2, dtype=F64, device=device)
    out = ops.linear_cka(x, y, backend=backend)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert ops.cka_matrix(torch.zeros(0, 5, 3, device=device), [randn(5, 2, seed=46, device=device)],
                          backend=backend).shape == (0, 1)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_mixed_dtypes_and_no_mutation(backend, device):
    big = randn(2, 12, 20, seed=47, device=device)
    x = big[:, ::2, 1::3]  # strided view [2, 6, 6]
    y = randn(2, 10, 6, seed=48, dtype=torch.float32, device=device).transpose(1, 2)[:, :, :6]  # [2, 6, 6]
    snapshot = big.clone()
    got = ops.linear_cka(x, y, backend=backend)
    assert got.dtype == F64
    assert torch.allclose(got, ref.linear_cka(x, y.double()), atol=1e-12)
    assert torch.equal(big, snapshot)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_deterministic(backend, device):
    x, y = randn(5, 64, 3000, seed=49, dtype=torch.float32, device=device), randn(5, 64, 70, seed=50,
                                                                                 dtype=torch.float32, device=device)
    a, b = run(backend, x, y), run(backend, x, y)
    for s, t in zip(a, b):
        assert torch.equal(s, t)


def test_bit_identical_whatever_the_thread_count():
    """The forward's column groups depend on the shapes only: 1 or 2 threads, same bits. The
    gradients and cka_matrix's pair GEMM go through the BLAS, whose results depend on its own
    threading in the last bits (allclose only)."""
    x, y = randn(3, 32, 5000, seed=51, dtype=torch.float32), randn(3, 32, 900, seed=52, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(run("cpu", x, y) + (ops.cka_matrix(list(x), list(y), backend="cpu"),))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    for s, t in zip(*results):
        assert_close(s, t, torch.float32)


def test_centre_first_precision():
    """3.5: 4 of 768 dims with mean 1000 do not spoil fp32 CKA (a Gram centred afterwards does)."""
    x, y = randn(128, 768, seed=53), randn(128, 768, seed=54)
    x[:, :4] += 1000
    want = ref.linear_cka(x, y)
    got = ops.linear_cka(x.float(), y.float(), backend="cpu")
    assert abs(got.double() - want).item() < 1e-5


BAD = [
    (dict(x=torch.zeros(5, 3, dtype=torch.long)), "x"),
    (dict(x=torch.zeros(5)), "x"),
    (dict(y=torch.zeros(4, 2)), "y"),
    (dict(x=torch.zeros(2, 5, 3), y=torch.zeros(3, 5, 2)), "y"),
    (dict(x=torch.zeros(5, 0)), "x"),
    (dict(x=torch.zeros(1, 3), y=torch.zeros(1, 2)), "x"),
    (dict(x=torch.zeros(3, 3), y=torch.zeros(3, 2), debiased=True), "x"),
    (dict(y=[1.0]), "y"),
    (dict(backend="tpu"), "backend"),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("override,name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_input_raises_naming_the_argument(backend, device, override, name):
    args = dict(x=torch.randn(5, 3), y=torch.randn(5, 2), backend=backend)
    args.update(override)
    args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises(ValueError, match=name):
        ops.linear_cka(args.pop("x"), args.pop("y"), **args)


BAD_LAYERS = [
    (dict(xs=[]), "xs"),
    (dict(ys=[]), "ys"),
    (dict(xs=[torch.randn(5, 3), torch.randn(4, 3)]), r"xs\[1\]"),
    (dict(ys=[torch.randn(6, 2)]), r"ys\[0\]"),
    (dict(xs=[torch.randn(5)]), r"xs\[0\]"),
    (dict(xs=torch.randn(5, 3)), "xs"),
    (dict(ys=[torch.ones(5, 2, dtype=torch.long)]), r"ys\[0\]"),
    (dict(xs=3), "xs"),
    (dict(xs=[torch.randn(3, 2)], ys=[torch.randn(3, 2)], debiased=True), r"xs\[0\]"),
]


@pytest.mark.parametrize("override,name", BAD_LAYERS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_LAYERS)])
def test_cka_matrix_bad_input(override, name):
    args = dict(xs=[torch.randn(5, 3)], ys=[torch.randn(5, 2)])
    args.update(override)
    with pytest.raises(ValueError, match=name):
        ops.cka_matrix(args.pop("xs"), args.pop("ys"), **args)


def test_mixed_devices_raise():
    with pytest.raises(ValueError, match="y"):
        ops.linear_cka(torch.randn(5, 3), torch.randn(5, 2, device="meta"))
    with pytest.raises(ValueError, match=r"ys\[0\]"):
        ops.cka_matrix([torch.randn(5, 3)], [torch.randn(5, 2, device="meta")])


def test_unavailable_backend_says_why():
    with pytest.raises(RuntimeError, match="backend='cuda' is not available"):
        ops.linear_cka(torch.randn(5, 3), torch.randn(5, 2), backend="cuda")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    forward = getattr(torch.ops.pyfastlab, "linear_cka_forward" + suffix)
    matrix = getattr(torch.ops.pyfastlab, "cka_matrix_forward" + suffix)
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    for requires_grad in (False, True):
        for debiased, shape in ((False, (2, 7, 9)), (True, (2, 7, 9)), (False, (2, 30, 2))):
            x = randn(*shape, seed=55, device=device).requires_grad_(requires_grad)
            y = randn(*shape[:2], 3, seed=56, device=device)
            torch.library.opcheck(forward, (x, y, debiased, requires_grad), test_utils=tests)
        xs = [randn(6, 3, seed=57, device=device).requires_grad_(requires_grad), randn(6, 4, seed=58, device=device)]
        torch.library.opcheck(matrix, (xs, [randn(6, 2, seed=59, device=device)], False), test_utils=tests)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    x, y = randn(3, 9, 11, seed=60, device=device), randn(3, 9, 4, seed=61, device=device)
    fn = torch.compile(lambda a, b: ops.linear_cka(a, b, debiased=True, backend=backend).sum()
                       + ops.cka_matrix(a, b, backend=backend).sum(), fullgraph=True, backend="aot_eager")
    a = x.clone().requires_grad_(True)
    fn(a, y).backward()
    b = x.clone().requires_grad_(True)
    (ref.linear_cka(b, y, debiased=True).sum() + ref.cka_matrix(list(b), list(y)).sum()).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


def test_tolerance_table_covers_the_dtypes_used():
    assert {F64, torch.float32, torch.bfloat16} <= set(TOLERANCES)
