"""expm, symmetric_expm, ipe_transform, composite_symmetry (vae.md 3, 5): every kernel backend
against the float64 reference, the closed forms and identities of section 5, gradients (gradcheck,
the block-matrix oracle, Daleckii-Krein at repeated eigenvalues), edge cases and bad input."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import generator, kernel_backends

from pyfastlab import ops
from pyfastlab.reference import vae_ops as ref

BACKENDS = kernel_backends()
FP32_FWD, FP32_GRAD = 1e-5, 1e-4  # relative Frobenius, vae.md 5 and 7


def rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def randm(shape, c, gen, dtype=torch.float64):
    n = shape[-1]
    return (c * torch.randn(*shape, generator=gen, dtype=torch.float64) / math.sqrt(max(n, 1))).to(dtype)


def grads(fn, inputs, upstream):
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    loss = sum((o * u).sum() for o, u in zip(out, upstream))
    return [o.detach() for o in out], list(torch.autograd.grad(loss, inputs))


# ---- expm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("n", [1, 3, 10, 64])
@pytest.mark.parametrize("c", [0.1, 1.0, 3.0])
def test_expm_matches_float64_reference(backend, device, n, c):
    gen = generator(100 + n)
    a = randm((3, n, n), c, gen)
    want = torch.linalg.matrix_exp(a)
    assert rel(ops.expm(a.to(device), backend=backend), want) < 1e-13
    assert rel(ops.expm(a.float().to(device), backend=backend), want) < FP32_FWD
    g = torch.randn(3, n, n, generator=gen, dtype=torch.float64)
    oracle = ref.expm_block_gradient(a, g)
    (_, (got,)) = grads(lambda x: ops.expm(x, backend=backend), [a.to(device)], [g.to(device)])
    assert rel(got, oracle) < 1e-12
    (_, (got32,)) = grads(lambda x: ops.expm(x, backend=backend), [a.float().to(device)], [g.float().to(device)])
    assert rel(got32, oracle) < FP32_GRAD


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_expm_closed_forms(backend, device):
    f = lambda x: ops.expm(x.to(device), backend=backend).cpu()  # noqa: E731
    t = 0.7
    rot = f(torch.tensor([[0.0, t], [-t, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(rot, torch.tensor([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]],
                                                 dtype=torch.float64))
    a, b = 0.3, -1.7
    torch.testing.assert_close(f(torch.tensor([[a, b], [0.0, a]], dtype=torch.float64)),
                               math.exp(a) * torch.tensor([[1.0, b], [0.0, 1.0]], dtype=torch.float64))
    N = torch.triu(torch.ones(4, 4, dtype=torch.float64), 1)
    torch.testing.assert_close(f(N), torch.eye(4, dtype=torch.float64) + N + N @ N / 2 + N @ N @ N / 6)
    d = torch.tensor([0.5, -2.0, 3.0, 4.5], dtype=torch.float64)
    torch.testing.assert_close(f(torch.diag(d)), torch.diag(d.exp()))
    torch.testing.assert_close(f(torch.zeros(2, 5, 5, dtype=torch.float64)), torch.eye(5, dtype=torch.float64).expand(2, 5, 5))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_expm_identities(backend, device):
    gen = generator(7)
    a = randm((4, 6, 6), 2.0, gen)
    f = lambda x: ops.expm(x.to(device), backend=backend).cpu()  # noqa: E731
    eye = torch.eye(6, dtype=torch.float64).expand(4, 6, 6)
    torch.testing.assert_close(f(a) @ f(-a), eye, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(torch.linalg.det(f(a)), torch.diagonal(a, dim1=-2, dim2=-1).sum(-1).exp(), rtol=1e-11,
                               atol=0)
    v = torch.randn(6, 6, generator=gen, dtype=torch.float64) + 3 * torch.eye(6, dtype=torch.float64)
    vi = torch.linalg.inv(v)
    torch.testing.assert_close(f(v @ a @ vi), v @ f(a) @ vi, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_expm_worked_gradient_and_adjoint_identity(backend, device):
    a = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    g = torch.zeros(2, 2, dtype=torch.float64)
    g[0, 1] = 1.0
    bwd = torch.ops.pyfastlab.expm_backward_triton if backend == "triton" else torch.ops.pyfastlab.expm_backward
    got = bwd(g.to(device), a.to(device)).cpu()
    want = torch.zeros(2, 2, dtype=torch.float64)
    want[0, 1] = math.exp(2) - math.exp(1)
    torch.testing.assert_close(got, want)
    g = torch.zeros(2, 2, dtype=torch.float64)
    g[0, 0] = 1.0
    torch.testing.assert_close(bwd(g.to(device), a.to(device)).cpu(), math.e * g)
    # <G, L(A, E)> = <L(A^T, G), E>, with L(A, E) from the block formula
    gen = generator(3)
    a, e, g = (randm((5, 5), 2.0, gen) for _ in range(3))
    l_ae = ref.expm_block_gradient(a.T, e)  # = L_exp(A, E)
    lhs = (g * l_ae).sum()
    rhs = (bwd(g.to(device), a.to(device)).cpu() * e).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * float(lhs.abs() + 1)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("c", [1.0, 8.0])
def test_expm_gradcheck(backend, device, c):
    a = randm((2, 4, 4), c, generator(11)).to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.expm(x, backend=backend), (a,), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_expm_shapes_dtypes_and_empty(backend, device):
    gen = generator(5)
    a = randm((2, 3, 5, 5), 1.0, gen)
    out = ops.expm(a.to(device), backend=backend)
    assert out.shape == (2, 3, 5, 5)
    assert rel(out, torch.linalg.matrix_exp(a)) < 1e-13
    nc = randm((4, 5, 5), 1.0, gen).transpose(-1, -2)  # non-contiguous
    assert rel(ops.expm(nc.to(device), backend=backend), torch.linalg.matrix_exp(nc)) < 1e-13
    for dtype in (torch.float16, torch.bfloat16):
        h = ops.expm(a.to(dtype).to(device), backend=backend)
        assert h.dtype == dtype
        assert rel(h, torch.linalg.matrix_exp(a.to(dtype).double())) < 2e-2
    for shape in ((0, 4, 4), (3, 0, 0)):
        x = torch.zeros(shape, dtype=torch.float64, device=device, requires_grad=True)
        y = ops.expm(x, backend=backend)
        assert y.shape == shape
        y.sum().backward()
        assert x.grad.shape == shape


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_expm_nonfinite_policy_and_input_untouched(backend, device, monkeypatch):
    monkeypatch.setenv("PYFASTLAB_CHECK", "0")
    a = randm((3, 4, 4), 1.0, generator(9)).to(device)
    a[1, 2, 3] = math.nan
    a[2, 0, 0] = math.inf
    before = a.clone()
    out = ops.expm(a, backend=backend).cpu()
    assert torch.equal(a, before) or torch.allclose(a, before, equal_nan=True)
    assert torch.isnan(out[1:]).all() and torch.isfinite(out[0]).all()
    x = a.clone().requires_grad_(True)
    ops.expm(x, backend=backend).sum().backward()
    assert torch.isnan(x.grad[1:].cpu()).all() and torch.isfinite(x.grad[0].cpu()).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_expm_nan_in_small_norm_matrix_gives_all_nan(backend, device, monkeypatch):
    # one NaN column next to zero columns: a NaN-dropping max would see ||A||_1 = 0 (m = 1, s = 0)
    # and return I + A with a single NaN entry instead of the all-NaN matrix
    monkeypatch.setenv("PYFASTLAB_CHECK", "0")
    a = torch.zeros(2, 4, 4, device=device)
    a[1, 1, 2] = math.nan
    out = ops.expm(a, backend=backend).cpu()
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()
    x = a.clone().requires_grad_(True)
    ops.expm(x, backend=backend).sum().backward()
    assert torch.isnan(x.grad[1].cpu()).all()
    y1, y2 = ops.composite_symmetry(a[1:], torch.ones(1, 1, device=device), torch.ones(1, 4, device=device),
                                    torch.ones(1, 4, device=device), backend=backend)
    assert torch.isnan(y1).all() and torch.isnan(y2).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_expm_checks_raise_on_nonfinite_and_overflow(backend, device, monkeypatch):
    monkeypatch.setenv("PYFASTLAB_CHECK", "1")
    a = torch.eye(3, device=device)
    a[0, 1] = math.nan
    with pytest.raises(ValueError, match="a contains NaN or inf"):
        ops.expm(a, backend=backend)
    with pytest.raises(ValueError, match="overflows torch.float32"):
        ops.expm(200 * torch.eye(3, device=device), backend=backend)


def test_expm_bad_input():
    with pytest.raises(ValueError, match="square"):
        ops.expm(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least 2"):
        ops.expm(torch.zeros(3))
    with pytest.raises(ValueError, match="a must be float"):
        ops.expm(torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="a must be a torch.Tensor"):
        ops.expm([[0.0]])
    with pytest.raises(ValueError, match="backend"):
        ops.expm(torch.zeros(3, 3), backend="gpu")


def test_expm_double_backward_raises():
    a = randm((3, 3), 1.0, generator(1)).requires_grad_(True)
    (g,) = torch.autograd.grad(ops.expm(a, backend="cpu").sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_expm_deterministic_opcheck_and_compile(backend, device):
    a = randm((4, 7, 7), 2.0, generator(4)).float().to(device)
    assert torch.equal(ops.expm(a, backend=backend), ops.expm(a, backend=backend))
    name = "expm_forward_triton" if backend == "triton" else "expm_forward"
    op = getattr(torch.ops.pyfastlab, name)
    torch.library.opcheck(op, (a,), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(op, (a.double().requires_grad_(True),), test_utils=("test_schema", "test_faketensor",
                                                                              "test_autograd_registration"))
    if backend == "cpu":
        compiled = torch.compile(lambda x: ops.expm(x, backend=backend), fullgraph=True)
        torch.testing.assert_close(compiled(a), ops.expm(a, backend=backend))


# ---- symmetric_expm --------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("n", [1, 6, 10, 33])
def test_symmetric_expm_matches_reference(backend, device, n):
    gen = generator(200 + n)
    w = randm((3, n, n), 1.5, gen)
    g = torch.randn(3, n, n, generator=gen, dtype=torch.float64)
    out, (gw,) = grads(lambda x: ops.symmetric_expm(x, backend=backend), [w.to(device)], [g.to(device)])
    want = ref.symmetric_expm(w)
    assert rel(out[0], want) < 1e-12
    assert rel(gw, ref.daleckii_krein(w, g)) < 1e-11
    out32, (gw32,) = grads(lambda x: ops.symmetric_expm(x, backend=backend), [w.float().to(device)],
                           [g.float().to(device)])
    assert rel(out32[0], want) < FP32_FWD and rel(gw32, ref.daleckii_krein(w, g)) < 1e-5
    e = out[0].cpu()
    torch.testing.assert_close(e, e.mT)
    assert (torch.linalg.eigvalsh(e) > 0).all()
    torch.testing.assert_close(torch.linalg.det(e), torch.diagonal(w, dim1=-2, dim2=-1).sum(-1).exp(), rtol=1e-10,
                               atol=0)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_symmetric_expm_repeated_eigenvalues(backend, device):
    gen = generator(21)
    g = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    anti = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    anti = anti - anti.T
    c = 0.4
    for w, e_want, gw_want in ((anti, torch.eye(4, dtype=torch.float64), ref.sym(g)),
                               (c * torch.eye(4, dtype=torch.float64), math.exp(c) * torch.eye(4, dtype=torch.float64),
                                math.exp(c) * ref.sym(g))):
        out, (gw,) = grads(lambda x: ops.symmetric_expm(x, backend=backend), [w.to(device)], [g.to(device)])
        torch.testing.assert_close(out[0].cpu(), e_want)
        torch.testing.assert_close(gw.cpu(), gw_want)
    # a double eigenvalue: finite gradcheck, where autograd through eigh is not finite
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))
    w = q @ torch.diag(torch.tensor([0.3, 0.3, -1.0, 2.0], dtype=torch.float64)) @ q.T
    x = w.clone().to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ops.symmetric_expm(t, backend=backend), (x,), eps=1e-6, atol=1e-6)
    y = (0.4 * torch.eye(4, dtype=torch.float64)).requires_grad_(True)
    lam, vec = torch.linalg.eigh(ref.sym(y))
    ((vec * lam.exp()) @ vec.T * g).sum().backward()
    assert not torch.isfinite(y.grad).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_symmetric_expm_nonfinite_and_empty(backend, device, monkeypatch):
    monkeypatch.setenv("PYFASTLAB_CHECK", "0")
    w = randm((2, 3, 3), 1.0, generator(2)).to(device)
    w[1, 0, 2] = math.inf
    out = ops.symmetric_expm(w, backend=backend).cpu()
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()
    x = torch.zeros(0, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    ops.symmetric_expm(x, backend=backend).sum().backward()
    assert x.grad.shape == (0, 3, 3)


# ---- ipe_transform ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("U,K,B,n", [(3, 2, 17, 10), (2, 1, 5, 6), (1, 3, 4, 33)])
def test_ipe_transform_matches_reference(backend, device, U, K, B, n):
    gen = generator(300 + n)
    z = torch.randn(B, n, generator=gen, dtype=torch.float64)
    w = randm((U, K, n, n), 1.0, gen)
    up = [torch.randn(U, B, n, generator=gen, dtype=torch.float64), torch.randn(U, generator=gen, dtype=torch.float64)]
    fn = lambda a, b: ops.ipe_transform(a, b, backend=backend)  # noqa: E731
    out, g = grads(fn, [z.to(device), w.to(device)], [u.to(device) for u in up])
    want, gwant = grads(ref.ipe_transform, [z, w], up)
    for x, y in zip(out + g, want + gwant):
        assert rel(x, y) < 1e-11
    out32, g32 = grads(fn, [z.float().to(device), w.float().to(device)], [u.float().to(device) for u in up])
    for x, y in zip(out32 + g32, want + gwant):
        assert rel(x, y) < FP32_FWD
    e = torch.linalg.solve(z[:n].T @ z[:n], z[:n].T) @ out[0][0].cpu()[:n] if B >= n else None
    if e is not None:
        sign, logabs = torch.linalg.slogdet(e)
        assert sign == 1 and abs(float(logabs - out[1][0].cpu())) < 1e-8


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ipe_transform_k1_logdet_and_inverse(backend, device):
    gen = generator(31)
    z = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    w = randm((2, 1, 5, 5), 1.0, gen)
    z_hat, logdet = ops.ipe_transform(z.to(device), w.to(device), backend=backend)
    e = ops.symmetric_expm(w[:, 0].to(device), backend=backend).cpu()
    torch.testing.assert_close(z_hat.cpu(), z @ e)
    sign, logabs = torch.linalg.slogdet(e)
    assert (sign == 1).all()
    torch.testing.assert_close(logdet.cpu(), logabs)
    lam, q = torch.linalg.eigh(ref.sym(w[:, 0]))
    back = z_hat.cpu() @ (q * (-lam).exp().unsqueeze(-2)) @ q.mT
    torch.testing.assert_close(back, z.expand(2, 8, 5))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ipe_transform_empty_dims(backend, device):
    gen = generator(41)
    z = torch.randn(4, 3, generator=gen, dtype=torch.float64, device=device)
    for shape in ((2, 0, 3, 3), (0, 2, 3, 3)):
        w = torch.zeros(shape, dtype=torch.float64, device=device, requires_grad=True)
        zz = z.clone().requires_grad_(True)
        z_hat, logdet = ops.ipe_transform(zz, w, backend=backend)
        assert z_hat.shape == (shape[0], 4, 3) and logdet.shape == (shape[0],)
        if shape[1] == 0:
            torch.testing.assert_close(z_hat, z.expand(2, 4, 3))
            assert (logdet == 0).all()
        (z_hat.sum() + logdet.sum()).backward()
        assert w.grad.shape == shape and zz.grad.shape == z.shape
    w = randm((2, 2, 3, 3), 1.0, gen).to(device).requires_grad_(True)
    z_hat, logdet = ops.ipe_transform(torch.zeros(0, 3, dtype=torch.float64, device=device), w, backend=backend)
    assert z_hat.shape == (2, 0, 3)
    (logdet * torch.tensor([2.0, 3.0], dtype=torch.float64, device=device)).sum().backward()
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(w.grad.cpu(), torch.stack([2 * eye, 2 * eye, 3 * eye, 3 * eye]).reshape(2, 2, 3, 3))


def test_ipe_transform_gradcheck():
    gen = generator(51)
    z = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = randm((2, 2, 4, 4), 1.0, gen).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ops.ipe_transform(a, b, backend="cpu"), (z, w))


def test_ipe_transform_bad_input():
    z, w = torch.zeros(4, 3), torch.zeros(2, 2, 3, 3)
    with pytest.raises(ValueError, match="z must be \\[B, n\\] with n = 3"):
        ops.ipe_transform(torch.zeros(4, 5), w)
    with pytest.raises(ValueError, match="w must be 4-D"):
        ops.ipe_transform(z, torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="w must be square"):
        ops.ipe_transform(z, torch.zeros(2, 2, 3, 4))
    with pytest.raises(ValueError, match="w must have the dtype"):
        ops.ipe_transform(z, w.double())


# ---- composite_symmetry ----------------------------------------------------------------------
def _composite_inputs(P, K, n, gen):
    G = randm((K, n, n), 1.0, gen)
    W = torch.rand(P, K, generator=gen, dtype=torch.float64) / max(K, 1) * 4
    return [G, W, torch.randn(P, n, generator=gen, dtype=torch.float64),
            torch.randn(P, n, generator=gen, dtype=torch.float64)]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("P,K,n", [(9, 16, 10), (4, 3, 1), (3, 5, 40)])
def test_composite_symmetry_matches_reference(backend, device, P, K, n):
    gen = generator(400 + n)
    inputs = _composite_inputs(P, K, n, gen)
    up = [torch.randn(P, n, generator=gen, dtype=torch.float64) for _ in range(2)]
    fn = lambda *x: ops.composite_symmetry(*x, backend=backend)  # noqa: E731
    out, g = grads(fn, [x.to(device) for x in inputs], [u.to(device) for u in up])
    want, gwant = grads(ref.composite_symmetry, inputs, up)
    for x, y in zip(out + g, want + gwant):
        assert rel(x, y) < 1e-11
    out32, g32 = grads(fn, [x.float().to(device) for x in inputs], [u.float().to(device) for u in up])
    for x, y in zip(out32, want):
        assert rel(x, y) < FP32_FWD
    for x, y in zip(g32, gwant):
        assert rel(x, y) < FP32_GRAD


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_composite_symmetry_identities(backend, device):
    gen = generator(61)
    G, W, z1, z2 = (x.to(device) for x in _composite_inputs(6, 8, 5, gen))
    y1, y2 = ops.composite_symmetry(G, torch.zeros_like(W), z1, z2, backend=backend)
    torch.testing.assert_close(y1, z1)
    torch.testing.assert_close(y2, z2)
    onehot = torch.nn.functional.one_hot(torch.arange(6, device=device) % 8, 8).double()
    y1, _ = ops.composite_symmetry(G, onehot, z1, z2, backend=backend)
    want = torch.bmm(z1.unsqueeze(1), torch.linalg.matrix_exp(G[torch.arange(6) % 8])).squeeze(1)
    torch.testing.assert_close(y1, want)
    G32, W32, z132 = G.float(), W.float(), z1.float()
    y1, _ = ops.composite_symmetry(G32, W32, z132, z2.float(), backend=backend)
    _, back = ops.composite_symmetry(G32, W32, z132, y1, backend=backend)
    assert float((back - z132).abs().max()) <= 1e-5 * max(1.0, float(z132.abs().max()))


def test_composite_symmetry_gradcheck():
    gen = generator(71)
    inputs = [x.requires_grad_(True) for x in _composite_inputs(3, 4, 3, gen)]
    assert torch.autograd.gradcheck(lambda *x: ops.composite_symmetry(*x, backend="cpu"), inputs)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_composite_symmetry_empty(backend, device):
    gen = generator(81)
    G, W, z1, z2 = (x.to(device).requires_grad_(True) for x in _composite_inputs(3, 4, 3, gen))
    e = [torch.zeros(0, 4, dtype=torch.float64, device=device, requires_grad=True)] + \
        [torch.zeros(0, 3, dtype=torch.float64, device=device, requires_grad=True) for _ in range(2)]
    y1, y2 = ops.composite_symmetry(G, e[0], e[1], e[2], backend=backend)
    assert y1.shape == (0, 3)
    (y1.sum() + y2.sum()).backward()
    assert G.grad is not None and (G.grad == 0).all()
    k0 = torch.zeros(0, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    w0 = torch.zeros(3, 0, dtype=torch.float64, device=device, requires_grad=True)
    y1, y2 = ops.composite_symmetry(k0, w0, z1, z2, backend=backend)
    torch.testing.assert_close(y1, z1)
    torch.testing.assert_close(y2, z2)
    (y1.sum() + y2.sum()).backward()
    assert w0.grad.shape == (3, 0)


def test_composite_symmetry_bad_input():
    G, W, z = torch.zeros(4, 3, 3), torch.zeros(5, 4), torch.zeros(5, 3)
    with pytest.raises(ValueError, match="weights must be \\[P, K\\] with K = 4"):
        ops.composite_symmetry(G, torch.zeros(5, 3), z, z)
    with pytest.raises(ValueError, match="z1 must be \\[P, n\\] = \\[5, 3\\]"):
        ops.composite_symmetry(G, W, torch.zeros(5, 4), z)
    with pytest.raises(ValueError, match="z2 must be"):
        ops.composite_symmetry(G, W, z, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="codebook must be square"):
        ops.composite_symmetry(torch.zeros(4, 3, 2), W, z, z)
    with pytest.raises(ValueError, match="codebook must be 3-D"):
        ops.composite_symmetry(torch.zeros(3, 3), W, z, z)


def test_composite_symmetry_checks_raise(monkeypatch):
    monkeypatch.setenv("PYFASTLAB_CHECK", "1")
    G, W, z = torch.zeros(4, 3, 3), torch.zeros(5, 4), torch.zeros(5, 3)
    W[0, 0] = math.nan
    with pytest.raises(ValueError, match="weights contains NaN"):
        ops.composite_symmetry(G, W, z, z)
