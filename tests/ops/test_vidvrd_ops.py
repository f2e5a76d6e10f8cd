"""pairwise_mlp_scores, temporal_iou and span_nms: every backend against the float64 reference, the
identities and examples of vidvrd.md section 5, edge cases and bad input."""
import itertools
import math

import pytest
import torch

from helpers import assert_close, generator, kernel_backends
from pyfastlab import ops
from pyfastlab.reference import vidvrd_ops as ref

BACKENDS = kernel_backends()
CPU_BACKENDS = [b.values[0] for b in BACKENDS if b.values[1].type == "cpu"]
FLOATS = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


# ---- pairwise_mlp_scores -------------------------------------------------------------------------

def pairwise_case(B, N, M, H, seed, dtype=torch.float32, device="cpu"):
    gen = generator(seed)
    a = torch.randn(B, N, H, generator=gen).to(dtype).to(device)
    b = torch.randn(B, M, H, generator=gen).to(dtype).to(device)
    w = torch.randn(H, generator=gen).to(dtype).to(device)
    return a, b, w


def run_pairwise(backend, a, b, w, bias=0.3, upstream=None):
    a, b, w = (x.detach().clone().requires_grad_(True) for x in (a, b, w))
    s = ops.pairwise_mlp_scores(a, b, w, bias, backend=backend)
    s.backward(torch.ones_like(s) if upstream is None else upstream.to(s.dtype))
    return s.detach(), a.grad, b.grad, w.grad


def pairwise_oracle(a, b, w, bias=0.3, upstream=None):
    up = None if upstream is None else upstream.double()
    return run_pairwise("reference", a.double(), b.double(), w.double(), bias, up)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_pairwise_matches_reference(backend, device, dtype):
    a, b, w = pairwise_case(2, 5, 7, 19, 1, dtype, device)
    upstream = torch.randn(2, 5, 7, generator=generator(2)).to(device)
    got = run_pairwise(backend, a, b, w, upstream=upstream)
    want = pairwise_oracle(a, b, w, upstream=upstream)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    # half: the k-term sums of the gradients amplify the input rounding of g
    tol_dtype = torch.float32 if dtype == torch.float64 else dtype
    for name, x, y in zip(("s", "grad a", "grad b", "grad w"), got, want):
        assert x.shape == y.shape
        assert_close(x.cpu(), y.cpu(), dtype if name == "s" or dtype == torch.float64 else tol_dtype, name)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 1, 4, 8), (1, 9, 2, 33), (2, 13, 11, 127), (1, 3, 2, 1000)])
def test_pairwise_shapes(backend, device, shape):
    a, b, w = pairwise_case(*shape, sum(shape), torch.float32, device)
    got = run_pairwise(backend, a, b, w)
    want = pairwise_oracle(a, b, w)
    for x, y in zip(got, want):
        assert_close(x.cpu(), y.cpu(), torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pairwise_spec_example(backend, device):
    a = torch.tensor([[[1.0, -2.0]]], device=device)
    b = torch.tensor([[[0.5, 3.0], [-2.0, 1.0]]], device=device)
    w = torch.tensor([2.0, -1.0], device=device)
    s, ga, gb, gw = run_pairwise(backend, a, b, w, bias=0.1)
    torch.testing.assert_close(s.cpu(), torch.tensor([[[2.1, 0.1]]]))
    torch.testing.assert_close(ga.cpu(), torch.tensor([[[2.0, -1.0]]]))
    torch.testing.assert_close(gb.cpu(), torch.tensor([[[2.0, -1.0], [0.0, 0.0]]]))
    torch.testing.assert_close(gw.cpu(), torch.tensor([1.5, 1.0]))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pairwise_identities(backend, device):
    a, b, w = pairwise_case(2, 6, 4, 17, 3, torch.float64, device)
    f = lambda *args, bias=0.25: ops.pairwise_mlp_scores(*args, bias, backend=backend)
    s = f(a, b, w)
    # the one-hidden-layer MLP on [h_i; h_j]
    x = torch.cat([a[:, :, None].expand(-1, -1, 4, -1), b[:, None].expand(-1, 6, -1, -1)], -1)
    W1 = torch.cat([torch.eye(17), torch.eye(17)], 1).double().to(device)
    torch.testing.assert_close(s, torch.relu(x @ W1.T) @ w + 0.25)
    torch.testing.assert_close(f(b, a, w).transpose(1, 2), s)
    torch.testing.assert_close(f(2.5 * a, 2.5 * b, w) - 0.25, 2.5 * (s - 0.25))
    torch.testing.assert_close(f(a, b, 3 * w) - 0.25, 3 * (s - 0.25))
    neg = run_pairwise(backend, -a.abs() - 0.1, -b.abs(), w, bias=0.25)
    assert torch.all(neg[0] == 0.25) and torch.all(neg[1] == 0) and torch.all(neg[2] == 0)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pairwise_gradcheck(backend, device):
    gen = generator(4)
    # kink-free: a in 0.25 + 0.5Z, b in 0.5Z, so a + b is never 0
    a = (0.25 + 0.5 * torch.randint(-4, 4, (2, 3, 5), generator=gen)).double().to(device).requires_grad_(True)
    b = (0.5 * torch.randint(-4, 4, (2, 4, 5), generator=gen)).double().to(device).requires_grad_(True)
    w = torch.randn(5, generator=gen).double().to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *x: ops.pairwise_mlp_scores(*x, 0.5, backend=backend), (a, b, w))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pairwise_needs_input_grad_and_empty(backend, device):
    a, b, w = pairwise_case(2, 3, 4, 5, 5, torch.float32, device)
    bb = b.clone().requires_grad_(True)
    ops.pairwise_mlp_scores(a, bb, w, backend=backend).sum().backward()
    assert_close(bb.grad.cpu(), pairwise_oracle(a, b, w)[2].cpu(), torch.float32)
    for shape in [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5)]:
        got = run_pairwise(backend, *pairwise_case(*shape, 6, torch.float32, device))
        assert got[0].shape == shape[:3]
        assert torch.all(got[3] == 0) and got[1].shape == (shape[0], shape[1], 5)
    s = ops.pairwise_mlp_scores(*pairwise_case(2, 3, 4, 0, 7, torch.float32, device), 0.7, backend=backend)
    assert s.shape == (2, 3, 4) and torch.all(s == 0.7)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pairwise_nan_non_contiguous_and_no_mutation(backend, device):
    a, b, w = pairwise_case(2, 8, 6, 9, 8, torch.float32, device)
    at, bt = a.transpose(1, 2).contiguous().transpose(1, 2), b[:, ::2]
    copies = [x.clone() for x in (at, bt, w)]
    got = ops.pairwise_mlp_scores(at, bt, w, backend=backend)
    assert_close(got.cpu(), pairwise_oracle(at, bt, w, bias=0.0)[0].cpu(), torch.float32)
    assert all(torch.equal(x, y) for x, y in zip((at, bt, w), copies))
    a[0, 1, 2] = float("nan")
    s = ops.pairwise_mlp_scores(a, b, w, backend=backend)
    assert torch.isnan(s[0, 1]).all() and not torch.isnan(s[0, 0]).any() and not torch.isnan(s[1]).any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_pairwise_deterministic(backend):
    a, b, w = pairwise_case(3, 17, 13, 45, 9)
    first, second = run_pairwise(backend, a, b, w), run_pairwise(backend, a, b, w)
    assert all(torch.equal(x, y) for x, y in zip(first, second))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_pairwise_torch_compile_fullgraph(backend):
    a, b, w = pairwise_case(2, 4, 3, 6, 10)
    fn = torch.compile(lambda x: ops.pairwise_mlp_scores(x, b, w, 0.2, backend=backend), fullgraph=True,
                       backend="aot_eager")
    x = a.clone().requires_grad_(True)
    s = fn(x)
    s.sum().backward()
    want = pairwise_oracle(a, b, w, bias=0.2)
    assert_close(s, want[0], torch.float32)
    assert_close(x.grad, want[1], torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pairwise_opcheck(backend, device):
    fwd = torch.ops.pyfastlab.pairwise_mlp_scores_forward_triton if backend == "triton" else \
        torch.ops.pyfastlab.pairwise_mlp_scores_forward
    bwd = torch.ops.pyfastlab.pairwise_mlp_scores_backward_triton if backend == "triton" else \
        torch.ops.pyfastlab.pairwise_mlp_scores_backward
    a, b, w = pairwise_case(2, 3, 4, 5, 11, torch.float64, device)
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    for requires_grad in (False, True):
        args = tuple(x.clone().requires_grad_(requires_grad) for x in (a, b, w)) + (0.5,)
        torch.library.opcheck(fwd, args, test_utils=utils)
    g = torch.randn(2, 3, 4, dtype=torch.float64, device=device)
    for need in itertools.product((False, True), repeat=3):
        torch.library.opcheck(bwd, (g, a, b, w) + need, test_utils=utils[:2])


# ---- temporal_iou --------------------------------------------------------------------------------

def random_spans(n, seed, T=100, dtype=torch.float32, device="cpu"):
    gen = generator(seed)
    begin = torch.randint(0, T, (n,), generator=gen)
    length = torch.randint(-3, T // 2, (n,), generator=gen)  # some inverted and empty spans
    return torch.stack([begin, begin + length], 1).to(dtype).to(device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", FLOATS + [torch.int32, torch.int64])
def test_tiou_matches_reference(backend, device, dtype):
    a = random_spans(37, 1, dtype=dtype, device=device)
    b = random_spans(29, 2, dtype=dtype, device=device)
    if dtype.is_floating_point:
        a = a + torch.rand(a.shape, generator=generator(3)).to(dtype).to(device)
    got = ops.temporal_iou(a, b, backend=backend)
    assert got.dtype == (dtype if dtype.is_floating_point else torch.float32) and got.shape == (37, 29)
    want = ref.temporal_iou(a.double(), b.double())
    assert_close(got.cpu(), want.cpu(), got.dtype)
    if dtype in (torch.float32, torch.float64) and device.type == "cpu":
        assert torch.equal(got, ref.temporal_iou(a, b))  # bit for bit, NaN-free inputs


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_tiou_spec_examples_and_identities(backend, device):
    a = torch.tensor([[0, 10], [0, 10], [3, 3], [3, 3], [5, 3]], device=device)
    b = torch.tensor([[5, 20], [10, 20], [0, 10], [3, 3], [0, 10]], device=device)
    got = ops.temporal_iou(a, b, backend=backend).diagonal()
    torch.testing.assert_close(got.cpu(), torch.tensor([0.25, 0.0, 0.0, 0.0, 0.0]))
    spans = random_spans(50, 4, device=device).double()
    spans = spans[spans[:, 1] > spans[:, 0]]
    iou = ops.temporal_iou(spans, spans, backend=backend)
    torch.testing.assert_close(iou, iou.T)
    assert torch.all(iou.diagonal() == 1) and iou.min() >= 0 and iou.max() <= 1
    other = random_spans(20, 5, device=device).double()
    torch.testing.assert_close(ops.temporal_iou(3.5 * spans + 7, 3.5 * other + 7, backend=backend),
                               ops.temporal_iou(spans, other, backend=backend))
    ints = random_spans(30, 6, dtype=torch.int64, device=device)
    torch.testing.assert_close(ops.temporal_iou(ints, ints.int(), backend=backend),
                               ops.temporal_iou(ints.float(), ints.float(), backend=backend))


def test_tiou_equals_torchvision_box_iou():
    torchvision = pytest.importorskip("torchvision")
    a, b = random_spans(40, 7).double(), random_spans(30, 8).double()
    a, b = a[a[:, 1] >= a[:, 0]], b[b[:, 1] >= b[:, 0]]
    boxes = lambda s: torch.stack([s[:, 0], torch.zeros_like(s[:, 0]), s[:, 1], torch.ones_like(s[:, 0])], 1)
    want = torchvision.ops.box_iou(boxes(a), boxes(b)).nan_to_num(0)
    torch.testing.assert_close(ops.temporal_iou(a, b), want)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_tiou_nan_inf_empty_and_no_grad(backend, device):
    nan, inf = float("nan"), float("inf")
    a = torch.tensor([[nan, 10.0], [0.0, inf], [0.0, 10.0]], device=device)
    b = torch.tensor([[0.0, 5.0], [-inf, 5.0]], device=device)
    got = ops.temporal_iou(a, b, backend=backend)
    want = ref.temporal_iou(a, b)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert torch.isnan(got[0]).all()
    for p, q in [(0, 3), (3, 0), (0, 0)]:
        assert ops.temporal_iou(torch.zeros(p, 2, device=device), torch.zeros(q, 2, device=device),
                                backend=backend).shape == (p, q)
    x = torch.tensor([[0.0, 4.0]], device=device, requires_grad=True)
    assert not ops.temporal_iou(x, x, backend=backend).requires_grad


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_tiou_opcheck_and_compile(backend, device):
    op = torch.ops.pyfastlab.temporal_iou_triton if backend == "triton" else torch.ops.pyfastlab.temporal_iou
    for dtype in (torch.float32, torch.int64):
        torch.library.opcheck(op, (random_spans(5, 9, dtype=dtype, device=device),
                                   random_spans(4, 10, dtype=dtype, device=device)))
    if device.type == "cpu":
        a, b = random_spans(6, 11), random_spans(5, 12)
        fn = torch.compile(lambda x, y: ops.temporal_iou(x, y, backend=backend), fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(fn(a, b), ref.temporal_iou(a, b))


# ---- span_nms ------------------------------------------------------------------------------------

def nms_case(n, seed, n_groups=3, dtype=torch.float32, device="cpu"):
    spans = random_spans(n, seed, dtype=dtype, device=device)
    gen = generator(seed + 100)
    scores = torch.rand(n, generator=gen).to(device)
    groups = (torch.randint(0, n_groups, (n,), generator=gen) * 7 - 5).to(device)
    return spans, scores, groups


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", FLOATS + [torch.int32, torch.int64])
@pytest.mark.parametrize("max_keep", [-1, 3])
def test_nms_matches_greedy_oracle(backend, device, dtype, max_keep):
    spans, scores, groups = nms_case(60, 1, dtype=dtype, device=device)
    scores[5] = scores[7]  # a tie: the lower index first
    for thr, g in itertools.product((0.0, 0.3, 0.7), (None, groups)):
        got = ops.span_nms(spans, scores, thr, groups=g, max_keep=max_keep, backend=backend)
        want = ref.span_nms(spans, scores, thr, groups=g, max_keep=max_keep)
        assert got.dtype == torch.int64 and got.device == spans.device
        assert got.tolist() == want.tolist(), (thr, g is None)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nms_spec_examples(backend, device):
    spans = torch.tensor([[0, 10], [1, 11], [20, 30], [2, 9], [21, 29]], dtype=torch.float32, device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6], device=device)
    groups = torch.tensor([0, 0, 1, 1, 1], device=device)
    assert ops.span_nms(spans, scores, 0.5, backend=backend).tolist() == [3, 2]
    assert ops.span_nms(spans, scores, 0.5, groups=groups, backend=backend).tolist() == [3, 0, 2]
    assert ops.span_nms(spans, scores, 0.5, groups=groups, max_keep=1, backend=backend).tolist() == [3, 0]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nms_properties(backend, device):
    spans, scores, groups = nms_case(80, 2, device=device)
    thr = 0.4
    kept = ops.span_nms(spans, scores, thr, groups=groups, backend=backend)
    # relabelling groups and permuting the inputs change nothing but the indices
    relabelled = ops.span_nms(spans, scores, thr, groups=groups * -3 + 11, backend=backend)
    assert kept.tolist() == relabelled.tolist()
    perm = torch.randperm(80, generator=generator(3)).to(device)
    permuted = ops.span_nms(spans[perm], scores[perm], thr, groups=groups[perm], backend=backend)
    assert perm[permuted].tolist() == kept.tolist()
    # kept spans of one group overlap at most thr; every dropped one has a higher-ranked kept suppressor
    iou = ref.temporal_iou(spans.cpu(), spans.cpu())
    kept_set, g = set(kept.tolist()), groups.cpu()
    for i in range(80):
        mates = [k for k in kept_set if g[k] == g[i] and k != i]
        if i in kept_set:
            assert all(iou[i, k] <= thr for k in mates)
        else:
            assert any(iou[i, k] > thr and scores[k] >= scores[i] for k in mates)
    capped = ops.span_nms(spans, scores, thr, groups=groups, max_keep=2, backend=backend).tolist()
    for label in g.unique():
        full = [k for k in kept.tolist() if g[k] == label]
        assert [k for k in capped if g[k] == label] == full[:2]
    assert len(ops.span_nms(spans, scores, 1.0, groups=groups, backend=backend)) == 80
    top = ops.span_nms(spans, scores, -0.5, groups=groups, backend=backend)
    assert len(top) == len(g.unique())


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nms_nan_zero_length_and_empty(backend, device):
    nan = float("nan")
    spans = torch.tensor([[0, 10], [0, 10], [5, 5], [nan, 4], [1, 9]], dtype=torch.float32, device=device)
    scores = torch.tensor([0.5, nan, 0.9, 0.8, 0.4], device=device)
    # order 2, 3, 0, 4, 1 (the NaN score last); the zero-length span 2 and the NaN span 3 suppress
    # nothing, 0 suppresses 4 and its twin 1
    got = ops.span_nms(spans, scores, 0.5, backend=backend).tolist()
    assert got == ref.span_nms(spans, scores, 0.5).tolist() == [2, 3, 0]
    empty = ops.span_nms(torch.zeros(0, 2, device=device), torch.zeros(0, device=device), 0.5, backend=backend)
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_nms_equals_torchvision_on_distinct_scores():
    torchvision = pytest.importorskip("torchvision")
    spans, scores, groups = nms_case(200, 4)
    spans = spans[:, :].clone()
    spans[:, 1] = torch.maximum(spans[:, 1], spans[:, 0] + 1)
    boxes = torch.stack([spans[:, 0], torch.zeros(200), spans[:, 1], torch.ones(200)], 1)
    want = torchvision.ops.batched_nms(boxes, scores, groups, 0.5)
    got = ops.span_nms(spans, scores, 0.5, groups=groups)
    assert sorted(got.tolist()) == sorted(want.tolist())


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nms_opcheck_and_compile(backend, device):
    op = torch.ops.pyfastlab.span_nms_triton if backend == "triton" else torch.ops.pyfastlab.span_nms
    spans, scores, groups = nms_case(20, 5, device=device)
    for g, cap in [(None, -1), (groups, 2)]:
        torch.library.opcheck(op, (spans, scores, 0.5, g, cap), test_utils=("test_schema", "test_faketensor"))
    if device.type == "cpu":
        fn = torch.compile(lambda s, c: ops.span_nms(s, c, 0.5, groups=groups, backend=backend), fullgraph=True,
                           backend="aot_eager")
        assert fn(spans, scores).tolist() == ref.span_nms(spans, scores, 0.5, groups=groups).tolist()


# ---- bad input -----------------------------------------------------------------------------------

BAD_PAIRWISE = [
    (dict(a=torch.zeros(2, 3, 4, dtype=torch.long)), "a"),
    (dict(a=torch.zeros(3, 4)), "a"),
    (dict(b=torch.zeros(2, 5)), "b"),
    (dict(b=torch.zeros(3, 5, 4)), "b"),
    (dict(b=torch.zeros(2, 5, 3)), "b"),
    (dict(b=torch.zeros(2, 5, 4, dtype=torch.float64)), "b"),
    (dict(w=torch.zeros(5)), "w"),
    (dict(w=torch.zeros(1, 4)), "w"),
    (dict(bias=float("nan")), "bias"),
    (dict(backend="tpu"), "backend"),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("override,name", BAD_PAIRWISE, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_PAIRWISE)])
def test_pairwise_bad_input_names_the_argument(backend, device, override, name):
    args = dict(a=torch.randn(2, 3, 4), b=torch.randn(2, 5, 4), w=torch.randn(4), bias=0.0, backend=backend)
    args.update(override)
    args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises((ValueError, RuntimeError), match=rf"\b{name}\b"):
        ops.pairwise_mlp_scores(args.pop("a"), args.pop("b"), args.pop("w"), args.pop("bias"), **args)


BAD_SPANS = [
    (dict(a=torch.zeros(3, 3)), "a"),
    (dict(a=torch.zeros(3)), "a"),
    (dict(b=torch.zeros(3, 2, dtype=torch.bool)), "b"),
    (dict(b=torch.zeros(2, 2, 1)), "b"),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("override,name", BAD_SPANS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_SPANS)])
def test_tiou_bad_input_names_the_argument(backend, device, override, name):
    args = dict(a=torch.zeros(3, 2), b=torch.zeros(4, 2))
    args.update(override)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        ops.temporal_iou(args["a"].to(device), args["b"].to(device), backend=backend)


BAD_NMS = [
    (dict(spans=torch.zeros(4, 3)), "spans"),
    (dict(spans=torch.zeros(4, 2, dtype=torch.bool)), "spans"),
    (dict(scores=torch.zeros(5)), "scores"),
    (dict(scores=torch.zeros(4, dtype=torch.long)), "scores"),
    (dict(groups=torch.zeros(4, dtype=torch.int32)), "groups"),
    (dict(groups=torch.zeros(3, dtype=torch.long)), "groups"),
    (dict(iou_threshold=float("nan")), "iou_threshold"),
    (dict(iou_threshold=torch.tensor(0.5)), "iou_threshold"),
    (dict(max_keep=2.0), "max_keep"),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("override,name", BAD_NMS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_NMS)])
def test_nms_bad_input_names_the_argument(backend, device, override, name):
    args = dict(spans=torch.zeros(4, 2), scores=torch.zeros(4), iou_threshold=0.5, groups=None, max_keep=-1)
    args.update(override)
    args = {k: (v.to(device) if isinstance(v, torch.Tensor) and k != "iou_threshold" else v) for k, v in args.items()}
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        ops.span_nms(args.pop("spans"), args.pop("scores"), args.pop("iou_threshold"), backend=backend, **args)


@pytest.mark.parametrize("name", ["b", "w"])
def test_pairwise_mixed_devices_raise(name):
    args = dict(a=torch.randn(1, 2, 3), b=torch.randn(1, 2, 3), w=torch.randn(3))
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        ops.pairwise_mlp_scores(args["a"], args["b"], args["w"])


def test_vidvrd_ops_are_listed_in_the_family():
    assert all(ops.OPS[name] == "vidvrd" for name in ("pairwise_mlp_scores", "temporal_iou", "span_nms"))
