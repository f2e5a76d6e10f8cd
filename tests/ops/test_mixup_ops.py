"""pair_mix, mixed_logits_cross_entropy and uniformity_loss: every backend against the float64
reference, the identities and worked examples of mixup.md section 5, edge cases and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close, generator, kernel_backends
from pyfastlab import ops
from pyfastlab.reference import mixup as ref

BACKENDS = kernel_backends()
ALL = BACKENDS + [pytest.param("reference", torch.device("cpu"), id="reference")]
FLOATS = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def partner_of(kind, B, gen):
    if kind == "perm":
        return torch.randperm(B, generator=gen)
    if kind == "repeat":
        return torch.randint(0, B, (B,), generator=gen)
    if kind == "matching":
        sigma, p = torch.randperm(B, generator=gen), torch.arange(B)
        h = B // 2
        p[sigma[0:2 * h:2]], p[sigma[1:2 * h:2]] = sigma[1:2 * h:2], sigma[0:2 * h:2]
        return p
    return torch.arange(B)


def lam_of(kind, B, gen, dtype=torch.float32):
    if kind == "scalar":
        return 0.3
    if kind == "0dim":
        return torch.tensor(0.6, dtype=dtype)
    lam = torch.rand(B, generator=gen, dtype=torch.float64).to(dtype)
    lam[:: 5] = 1.0  # end rule rows
    lam[1:: 7] = 0.0
    return lam


def run(fn, tensors, lam, upstream):
    """Value and gradients of every floating tensor input and of a tensor lam."""
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    lam_in = lam.detach().clone().requires_grad_(True) if isinstance(lam, torch.Tensor) else lam
    out = fn(*tensors, lam_in)
    out.backward(upstream.to(out.dtype) if upstream is not None else torch.ones_like(out))
    grads = [t.grad for t in tensors] + ([lam_in.grad] if isinstance(lam, torch.Tensor) else [])
    return [out.detach()] + grads


def as64(lam):
    return lam.double() if isinstance(lam, torch.Tensor) else lam


# ---- pair_mix ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("lam_kind", ["rows", "scalar", "0dim"])
@pytest.mark.parametrize("p_kind", ["perm", "repeat", "matching"])
@pytest.mark.parametrize("D", [45, 1100])  # 1100: past one column chunk (512 on a GPU, 1024 interpreted)
def test_pair_mix_matches_reference(backend, device, dtype, lam_kind, p_kind, D):
    gen = generator(11)
    B = 37
    x = torch.randn(B, D, generator=gen).to(dtype)
    p = partner_of(p_kind, B, gen)
    lam = lam_of(lam_kind, B, gen, torch.float64 if dtype == torch.float64 else torch.float32)
    G = torch.randn(B, D, generator=gen).to(dtype)  # the upstream as the op sees it
    got = run(lambda x, l: ops.pair_mix(x, p.to(device), l, backend=backend), [x.to(device)],
              lam.to(device) if isinstance(lam, torch.Tensor) else lam, G.to(device))
    want = run(lambda x, l: ref.pair_mix(x, p, l), [x.double()], as64(lam), G.double())
    assert got[0].dtype == dtype and got[1].dtype == dtype
    for name, a, b in zip(("out", "grad x", "grad lam"), got, want):
        assert a.shape == b.shape, name
        # grad lam sums D products in fp32, rounded once to lam's dtype (fp32 for half inputs)
        lam_dtype = dtype if name != "grad lam" or dtype == torch.float64 else torch.float32
        assert_close(a.cpu(), b, lam_dtype, name, reduction=D if name == "grad lam" else 1, backend=backend)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("shape", [(6, 3, 5, 4), (6,), (6, 2, 7)], ids=str)
def test_pair_mix_mixes_whole_samples_of_any_shape(backend, device, shape):
    """Input mixup on images [B, C, H, W] (and [B] or [B, T, D]): each sample mixed as a whole, the
    same as mixing the flattened rows, value and gradients."""
    gen = generator(31)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    p, lam = torch.randperm(6, generator=gen), torch.rand(6, generator=gen, dtype=torch.float64)
    G = torch.randn(shape, generator=gen, dtype=torch.float64)
    got = run(lambda x, l: ops.pair_mix(x, p.to(device), l, backend=backend), [x.to(device)], lam.to(device),
              G.to(device))
    want = run(lambda x, l: ref.pair_mix(x.reshape(6, -1), p, l).reshape(shape), [x], lam, G)
    assert got[0].shape == shape
    for a, b in zip(got, want):
        assert_close(a.cpu(), b, torch.float64, reduction=x[0].numel())


@pytest.mark.parametrize("backend,device", ALL)
def test_pair_mix_spec_example(backend, device):
    x = torch.tensor([[1.0, 2], [3, 4], [5, 6]], device=device)
    lam = torch.tensor([0.75, 0.5, 1.0], device=device)
    out, gx, gl = run(lambda x, l: ops.pair_mix(x, torch.tensor([2, 0, 0], device=device), l, backend=backend),
                      [x], lam, None)
    torch.testing.assert_close(out.cpu(), torch.tensor([[2.0, 3], [2, 3], [5, 6]]))
    torch.testing.assert_close(gx.cpu(), torch.tensor([[1.25, 1.25], [0.5, 0.5], [1.25, 1.25]]))
    torch.testing.assert_close(gl.cpu(), torch.tensor([-8.0, 4, 8]))


@pytest.mark.parametrize("backend,device", ALL)
def test_pair_mix_identities(backend, device):
    gen = generator(3)
    B, D = 23, 17
    x = torch.randn(B, D, generator=gen, dtype=torch.float64).to(device)
    p = torch.randint(0, B, (B,), generator=gen).to(device)
    f = lambda x, p, l: ops.pair_mix(x, p, l, backend=backend)
    # end rule: lam 1 gives x exactly even with inf in partner rows; lam 0 gives x[p] exactly
    xi = x.clone()
    xi[0] = math.inf
    keep = p != 0
    assert torch.equal(f(xi, p, 1.0)[keep], xi[keep])
    assert torch.equal(f(x, p, 0.0), x[p])
    # p = arange: x for any lam, grad lam 0, grad x = G
    lam = torch.rand(B, generator=gen, dtype=torch.float64).to(device)
    G = torch.randn(B, D, generator=gen, dtype=torch.float64).to(device)
    out, gx, gl = run(lambda x, l: f(x, torch.arange(B, device=device), l), [x], lam, G)
    torch.testing.assert_close(out, x)
    torch.testing.assert_close(gx, G)
    assert torch.all(gl == 0)
    # column sums of grad_x equal those of G for any partner
    _, gx, _ = run(lambda x, l: f(x, p, l), [x], lam, G)
    torch.testing.assert_close(gx.sum(0), G.sum(0))
    # row relabelling
    sigma = torch.randperm(B, generator=gen).to(device)
    inv = torch.argsort(sigma)
    torch.testing.assert_close(f(x[sigma], inv[p[sigma]], lam[sigma]), f(x, p, lam)[sigma])


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("B,D", [(1, 5), (3, 1), (127, 33), (1031, 7)])
def test_pair_mix_shapes(backend, device, B, D):
    gen = generator(B + D)
    x = torch.randn(B, D, generator=gen)
    p, lam = torch.randint(0, B, (B,), generator=gen), torch.rand(B, generator=gen)
    got = run(lambda x, l: ops.pair_mix(x, p.to(device), l, backend=backend), [x.to(device)], lam.to(device), None)
    want = run(lambda x, l: ref.pair_mix(x, p, l), [x.double()], lam.double(), None)
    for a, b in zip(got, want):
        assert_close(a.cpu(), b, torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pair_mix_gradcheck_and_opcheck(backend, device):
    gen = generator(5)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64, device=device).requires_grad_(True)
    p = torch.tensor([3, 3, 0, 5, 1, 3], device=device)
    lam = torch.rand(6, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, l: ops.pair_mix(x, p, l, backend=backend), (x, lam))
    lam0 = torch.tensor(0.3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, l: ops.pair_mix(x, p, l, backend=backend), (x, lam0))
    name = "pair_mix_triton" if backend == "triton" else "pair_mix"
    op = getattr(torch.ops.pyfastlab, name)
    for args in [(x, p, lam, 0.0), (x.detach(), p, None, 0.25), (x, p, lam0.detach(), 0.0)]:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pair_mix_empty_bad_input_and_no_mutation(backend, device):
    x = torch.randn(0, 5, device=device, requires_grad=True)
    out = ops.pair_mix(x, torch.empty(0, dtype=torch.int64, device=device), 0.5, backend=backend)
    out.sum().backward()
    assert out.shape == (0, 5) and x.grad.shape == (0, 5)
    x = torch.randn(4, 0, device=device, requires_grad=True)
    lam = torch.rand(4, device=device, requires_grad=True)
    ops.pair_mix(x, torch.tensor([1, 0, 3, 2], device=device), lam, backend=backend).sum().backward()
    assert torch.all(lam.grad == 0)
    x = torch.randn(4, 3, device=device)
    x0, p = x.clone(), torch.tensor([1, 0, 3, 2], device=device)
    with pytest.raises(ValueError, match=r"partner\[2\] = 4 is out of range: expected \[0, 4\)"):
        ops.pair_mix(x, torch.tensor([1, 0, 4, 2], device=device), 0.5, backend=backend)
    with pytest.raises(ValueError, match="out of range"):
        ops.pair_mix(x, torch.tensor([1, -1, 3, 2], device=device), 0.5, backend=backend)
    with pytest.raises(ValueError, match="partner must be"):
        ops.pair_mix(x, p[:3], 0.5, backend=backend)
    with pytest.raises(ValueError, match="partner must have dtype int64"):
        ops.pair_mix(x, p.int(), 0.5, backend=backend)
    with pytest.raises(ValueError, match="lam must be"):
        ops.pair_mix(x, p, torch.rand(3, device=device), backend=backend)
    with pytest.raises(ValueError, match="lam must be"):
        ops.pair_mix(x, p, "0.5", backend=backend)
    with pytest.raises(ValueError, match=r"x must be \[B, \.\.\.\]"):
        ops.pair_mix(x[0, 0], p, 0.5, backend=backend)
    with pytest.raises(ValueError, match="x must be a floating"):
        ops.pair_mix(x.long(), p, 0.5, backend=backend)
    xt = torch.randn(3, 4, device=device).t()  # non-contiguous
    torch.testing.assert_close(ops.pair_mix(xt, p, 0.3, backend=backend), ref.pair_mix(xt, p, 0.3))
    assert torch.equal(x, x0)
    # determinism
    lam = torch.rand(4, device=device, requires_grad=True)
    g1 = torch.autograd.grad(ops.pair_mix(x, p, lam, backend=backend).square().sum(), lam)[0]
    g2 = torch.autograd.grad(ops.pair_mix(x, p, lam, backend=backend).square().sum(), lam)[0]
    assert torch.equal(g1, g2)


# ---- mixed_logits_cross_entropy ------------------------------------------------------------------

def mce(backend, reduction="mean"):
    return lambda z, p, l, y: ops.mixed_logits_cross_entropy(z, p, l, y, reduction=reduction, backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("lam_kind,p_kind", [("rows", "repeat"), ("scalar", "perm"), ("0dim", "matching")])
def test_mixed_ce_matches_reference(backend, device, dtype, reduction, lam_kind, p_kind):
    gen = generator(21)
    B, C = 29, 1100  # more than one column chunk
    z = (3 * torch.randn(B, C, generator=gen)).to(dtype)
    p, y = partner_of(p_kind, B, gen), torch.randint(0, C, (B,), generator=gen)
    lam = lam_of(lam_kind, B, gen, torch.float64 if dtype == torch.float64 else torch.float32)
    up = (torch.randn(B, generator=gen) if reduction == "none" else torch.tensor(1.75)).to(dtype)
    got = run(lambda z, l: mce(backend, reduction)(z, p.to(device), l, y.to(device)), [z.to(device)],
              lam.to(device) if isinstance(lam, torch.Tensor) else lam, up.to(device))
    want = run(lambda z, l: ref.mixed_logits_cross_entropy(z, p, l, y, reduction), [z.double()], as64(lam),
               up.double())
    assert got[0].dtype == dtype
    for name, a, b in zip(("loss", "grad logits", "grad lam"), got, want):
        assert a.shape == b.shape, name
        tol = dtype if dtype == torch.float64 else (torch.float32 if dtype == torch.float32 else torch.bfloat16)
        if name == "loss" and dtype in (torch.float16, torch.bfloat16):
            b = b.to(dtype)  # the loss is rounded to the logits dtype
        assert_close(a.cpu(), b, tol, name)


@pytest.mark.parametrize("backend,device", ALL)
def test_mixed_ce_spec_example(backend, device):
    z = torch.tensor([[2.0, 0, 0], [0, 1, 0]], device=device)
    p, y = torch.tensor([1, 0], device=device), torch.tensor([0, 1], device=device)
    lam = torch.tensor([0.75, 0.75], device=device)
    rows = ops.mixed_logits_cross_entropy(z, p, lam, y, reduction="none", backend=backend)
    torch.testing.assert_close(rows.cpu(), torch.tensor([0.411868, 0.811449]), atol=1e-6, rtol=0)
    loss, gz, gl = run(lambda z, l: mce(backend)(z, p, l, y), [z], lam, None)
    torch.testing.assert_close(loss.cpu(), torch.tensor(0.611658), atol=1e-6, rtol=0)
    torch.testing.assert_close(gz.cpu(), torch.tensor([[-0.083351, 0.001696, 0.081655],
                                                       [0.087534, -0.184697, 0.097162]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(gl.cpu(), torch.tensor([-0.432480, -0.623847]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend,device", ALL)
def test_mixed_ce_identities(backend, device):
    gen = generator(8)
    B, C, D = 20, 7, 9
    z = torch.randn(B, C, generator=gen, dtype=torch.float64).to(device)
    p, y = torch.randint(0, B, (B,), generator=gen).to(device), torch.randint(0, C, (B,), generator=gen).to(device)
    f = lambda z, l, reduction="mean", p=p: ops.mixed_logits_cross_entropy(z, p, l, y, reduction=reduction,
                                                                           backend=backend)
    torch.testing.assert_close(f(z, 1.0), F.cross_entropy(z, y))
    torch.testing.assert_close(f(z, 0.0), F.cross_entropy(z[p], y))
    lam = torch.rand(B, generator=gen, dtype=torch.float64).to(device)
    _, _, gl = run(lambda z, l: f(z, l, p=torch.arange(B, device=device)), [z], lam, None)
    assert torch.all(gl == 0)
    torch.testing.assert_close(f(z, lam, p=torch.arange(B, device=device)), F.cross_entropy(z, y))
    # shift invariance, rows of grad sum to 0, sum = sum of none, mean = sum / B
    shifted = z + torch.randn(B, 1, generator=gen, dtype=torch.float64).to(device)
    torch.testing.assert_close(f(shifted, lam, "none"), f(z, lam, "none"))
    _, gz, _ = run(lambda z, l: f(z, l), [z], lam, None)
    torch.testing.assert_close(gz.sum(1), torch.zeros(B, dtype=torch.float64, device=device))
    torch.testing.assert_close(f(z, lam, "sum"), f(z, lam, "none").sum())
    torch.testing.assert_close(f(z, lam, "mean"), f(z, lam, "sum") / B)
    # linear-head identity: values and grads w.r.t. h, W, b and lam
    h = torch.randn(B, D, generator=gen, dtype=torch.float64).to(device)
    W = torch.randn(C, D, generator=gen, dtype=torch.float64).to(device)
    bias = torch.randn(C, generator=gen, dtype=torch.float64).to(device)
    via_op = run(lambda h, W, bias, l: f(F.linear(h, W, bias), l), [h, W, bias], lam, None)
    via_mix = run(lambda h, W, bias, l: F.cross_entropy(F.linear(ops.pair_mix(h, p, l), W, bias), y),
                  [h, W, bias], lam, None)
    for a, b in zip(via_op, via_mix):
        torch.testing.assert_close(a, b)
    # matching at lam 1/2: l_i + l_{p_i} = 2 CE(midpoint, soft 1/2 - 1/2 target)
    m = torch.tensor([3, 2, 1, 0], device=device)
    zz, yy = z[:4], torch.tensor([0, 1, 2, 3], device=device)
    rows = ops.mixed_logits_cross_entropy(zz, m, 0.5, yy, reduction="none", backend=backend)
    mid = 0.5 * (zz + zz[m])
    soft = 0.5 * F.one_hot(yy, C).double() + 0.5 * F.one_hot(yy[m], C).double()
    torch.testing.assert_close(rows + rows[m], 2 * F.cross_entropy(mid, soft, reduction="none"))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_mixed_ce_gradcheck_and_opcheck(backend, device):
    gen = generator(9)
    z = torch.randn(6, 5, generator=gen, dtype=torch.float64, device=device).requires_grad_(True)
    p, y = torch.tensor([2, 2, 0, 5, 1, 2], device=device), torch.tensor([0, 4, 1, 1, 3, 2], device=device)
    lam = torch.rand(6, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(lambda z, l: mce(backend, reduction)(z, p, l, y), (z, lam))
    name = "mixed_logits_cross_entropy_triton" if backend == "triton" else "mixed_logits_cross_entropy"
    op = getattr(torch.ops.pyfastlab, name)
    for args in [(z, p, lam, 0.0, y, 1), (z.detach(), p, None, 0.4, y, 0), (z, p, lam.detach(), 0.0, y, 2)]:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_mixed_ce_edges_and_bad_input(backend, device):
    f = mce(backend, "none")
    z = torch.tensor([[1e4, -1e4, 0.0], [-math.inf, 0.0, 1.0], [0.0, 1.0, math.nan], [2.0, 1.0, 0.0]], device=device)
    p, lam = torch.tensor([0, 1, 2, 3], device=device), torch.full((4,), 0.5, device=device)
    rows = f(z, p, lam, torch.tensor([0, 2, 0, 0], device=device))
    assert torch.isfinite(rows[:2]).all() and torch.isnan(rows[2]) and rows[0] == 0
    zi = z[1:2].clone().requires_grad_(True)
    loss = ops.mixed_logits_cross_entropy(zi, torch.tensor([0], device=device), 0.5, torch.tensor([0], device=device),
                                          backend=backend)
    loss.backward()
    assert loss == math.inf and torch.isfinite(zi.grad).all()
    empty = torch.empty(0, 3, device=device)
    e_p, e_y = torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, dtype=torch.int64, device=device)
    assert f(empty, e_p, 0.5, e_y).shape == (0,)
    assert mce(backend, "sum")(empty, e_p, 0.5, e_y) == 0
    assert torch.isnan(mce(backend, "mean")(empty, e_p, 0.5, e_y))
    z = torch.randn(4, 3, device=device)
    y = torch.tensor([0, 1, 2, 0], device=device)
    with pytest.raises(ValueError, match="C = 0"):
        f(torch.empty(4, 0, device=device), p, 0.5, y)
    with pytest.raises(ValueError, match="out of range"):
        f(z, torch.tensor([0, 1, 2, 9], device=device), 0.5, y)
    with pytest.raises(ValueError, match="target.*out of range"):
        f(z, p, 0.5, torch.tensor([0, 1, 3, 0], device=device))
    with pytest.raises(ValueError, match="target must be"):
        f(z, p, 0.5, y[:2])
    with pytest.raises(ValueError, match="reduction must be"):
        mce(backend, "batchmean")(z, p, 0.5, y)


# ---- uniformity_loss ------------------------------------------------------------------------------

def _uniformity_gradient_terms(x, t, upstream):
    """Largest entry of the two terms the uniformity gradient is the difference of, 2 t g r_a x_a and
    2 t g sum_b p_ab x_b (p_ab = exp(-t d_ab^2 - lse) over the pairs a != b, r_a = sum_b p_ab)."""
    e = -t * torch.cdist(x, x).pow(2)
    e.fill_diagonal_(-math.inf)
    p = (e - torch.logsumexp(e.triu(1).masked_fill(torch.ones_like(e).tril().bool(), -math.inf).flatten(), 0)).exp()
    own, others = p.sum(1, keepdim=True) * x, p @ x
    return 2 * t * abs(upstream) * max(own.abs().max().item(), others.abs().max().item())


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("N,D", [(2, 3), (3, 1), (67, 20), (300, 130)])
def test_uniformity_matches_reference(backend, device, dtype, N, D):
    gen = generator(N + D)
    x = F.normalize(torch.randn(N, D, generator=gen), dim=1).to(dtype)
    got = run(lambda x, l: ops.uniformity_loss(x, t=2.0, backend=backend), [x.to(device)], 0.0,
              torch.tensor(1.25, device=device))
    want = run(lambda x, l: ref.uniformity_loss(x, 2.0), [x.double()], 0.0, torch.tensor(1.25, dtype=torch.float64))
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[0].shape == ()
    # relative to the float64 reference, the Gram form's sums over N D terms (fp32: ~1e-4, spec 5). The
    # gradient -2 t g (r_a x_a - sum_b p_ab x_b) is a difference: its error is relative to those terms;
    # it reads the half-precision input twice (Gram and sum_b p_ab x_b)
    assert_close(got[0].cpu(), want[0], dtype, "loss", reduction=N * D, backend=backend)
    assert_close(got[1].cpu(), want[1], dtype, "grad", reduction=N * D, roundings=2, backend=backend,
                 scale=_uniformity_gradient_terms(x.double(), t=2.0, upstream=1.25))


@pytest.mark.parametrize("backend,device", ALL)
def test_uniformity_spec_values(backend, device):
    f = lambda x, t=2.0: ops.uniformity_loss(x.to(device), t=t, backend=backend)
    x = torch.tensor([[0.0, 0], [1, 0], [0, 2]], device=device)
    _, gx, = run(lambda x, l: f(x), [x], 0.0, None)
    torch.testing.assert_close(f(x).cpu(), torch.tensor(-3.095802), atol=1e-6, rtol=0)
    torch.testing.assert_close(gx.cpu(), torch.tensor([[3.988775, 0.019774], [-3.990113, 0.002676],
                                                       [0.001338, -0.022451]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(f(100 * x).cpu(), torch.tensor(-20001.098612), atol=2e-3, rtol=0)
    ang = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
    tri = torch.stack([ang.cos(), ang.sin()], 1)
    torch.testing.assert_close(f(tri).cpu(), torch.tensor(-6.0, dtype=torch.float64))
    torch.testing.assert_close(f(torch.eye(5, dtype=torch.float64)).cpu(), torch.tensor(-4.0, dtype=torch.float64))
    pair = torch.tensor([[0.3, -1.0], [1.1, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(f(pair, 1.5).cpu(), -1.5 * (pair[0] - pair[1]).pow(2).sum())
    same = torch.ones(7, 3, dtype=torch.float64)
    assert f(same) == 0 and f(torch.randn(9, 4), 0.0) == 0
    assert f(torch.randn(9, 0)) == 0


@pytest.mark.parametrize("backend,device", ALL)
def test_uniformity_identities(backend, device):
    gen = generator(31)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64).to(device)
    f = lambda x, t=2.0: ops.uniformity_loss(x, t=t, backend=backend)
    L = f(x, 0.7)
    n = x.shape[0]
    mean_d2 = (n * x.pow(2).sum() - x.sum(0).pow(2).sum()) / (n * (n - 1) / 2)
    assert L <= 0 and L >= -0.7 * mean_d2 - 1e-12  # Jensen
    shift = torch.randn(1, 6, generator=gen, dtype=torch.float64).to(device)
    torch.testing.assert_close(f(x + shift, 0.7), L)
    Q = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))[0].to(device)
    torch.testing.assert_close(f(x @ Q, 0.7), L)
    torch.testing.assert_close(f(x[torch.randperm(n, generator=gen).to(device)], 0.7), L)
    torch.testing.assert_close(f(1.7 * x, 0.7), f(x, 0.7 * 1.7**2))
    (g,) = torch.autograd.grad(f(x.requires_grad_(True), 0.7), x)
    torch.testing.assert_close(g.sum(0), torch.zeros(6, dtype=torch.float64, device=device))
    # the benchmark's pdist formula agrees where it does not underflow
    torch.testing.assert_close(L, ref.uniformity_loss_pdist(x.detach(), 0.7))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_uniformity_gradcheck_opcheck_and_bad_input(backend, device):
    gen = generator(12)
    x = torch.randn(9, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.uniformity_loss(x, t=1.3, backend=backend), (x,))
    name = "uniformity_loss_triton" if backend == "triton" else "uniformity_loss"
    torch.library.opcheck(getattr(torch.ops.pyfastlab, name), (x, 2.0))
    torch.library.opcheck(getattr(torch.ops.pyfastlab, name), (x.detach(), 0.5))
    dup = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], dtype=torch.float64, device=device, requires_grad=True)
    ops.uniformity_loss(dup, backend=backend).backward()
    assert torch.isfinite(dup.grad).all()
    xn = x.detach().clone()
    xn[3, 1] = math.nan
    assert torch.isnan(ops.uniformity_loss(xn, backend=backend))
    with pytest.raises(ValueError, match="at least 2 rows"):
        ops.uniformity_loss(x[:1], backend=backend)
    for bad_t in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="t must be"):
            ops.uniformity_loss(x, t=bad_t, backend=backend)
    with pytest.raises(ValueError, match="x must be 2-D"):
        ops.uniformity_loss(x[0], backend=backend)
    a = ops.uniformity_loss(x.detach(), backend=backend)
    assert torch.equal(a, ops.uniformity_loss(x.detach(), backend=backend))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compile_fullgraph(backend, device):
    gen = generator(13)
    x = torch.randn(12, 8, generator=gen, device=device, requires_grad=True)
    p = torch.randperm(12, generator=gen).to(device)
    lam = torch.rand(12, generator=gen).to(device)
    y = torch.randint(0, 8, (12,), generator=gen).to(device)

    def step(x, lam):
        h = ops.pair_mix(x, p, lam, backend=backend)
        return (ops.mixed_logits_cross_entropy(h, p, lam, y, backend=backend)
                + ops.uniformity_loss(F.normalize(h, dim=1), backend=backend))

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, lam), step(x, lam))
    compiled(x, lam).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.slow
def test_uniformity_16k_under_2gib_cap():
    """N = 16384, D = 128 fp32 fwd+bwd in a subprocess whose address space grows by at most 2 GiB."""
    import subprocess
    import sys
    code = (
        "import resource, torch, pyfastlab\n"
        "from pyfastlab import ops\n"
        "x = torch.nn.functional.normalize(torch.randn(16384, 128), dim=1).requires_grad_(True)\n"
        "ops.uniformity_loss(x[:64]).backward()\n"
        "vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 2 * 2**30, resource.RLIM_INFINITY))\n"
        "x.grad = None\n"
        "loss = ops.uniformity_loss(x)\n"
        "loss.backward()\n"
        "assert torch.isfinite(loss) and torch.isfinite(x.grad).all()\n"
        "print('ok', float(loss))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
