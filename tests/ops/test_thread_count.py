"""Every op's CPU kernel, forward and backward, gives the same bits for any torch.set_num_threads:
partitions depend on the shapes only, and GEMMs whose reduction the BLAS would split differently by
thread count go through a fixed-order kernel."""
import pytest
import torch

from helpers import generator
from pyfastlab import ops
from pyfastlab.ops import _backends

F32 = torch.float32
THREADS = (1, 3, 4, 7)


def _cases():
    def randn(gen, *shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=F32) * scale

    def rows(gen, n, c):
        return torch.randint(0, c, (n,), generator=gen)

    def spans(gen, m, length=300):
        begin = torch.randint(0, length - 10, (m,), generator=gen)
        return torch.stack([begin, begin + torch.randint(1, 10, (m,), generator=gen)], 1)

    def boxes(gen, p, t):
        corner = torch.rand(p, t, 2, generator=gen) * 50
        return torch.cat([corner, corner + 1 + torch.rand(p, t, 2, generator=gen) * 30], -1)

    return {
        "masked_cross_entropy": lambda g: (
            lambda z, y=rows(generator(1), 512, 300), active=torch.rand(300, generator=generator(9)) > 0.3:
                ops.masked_cross_entropy(z, y, active, mode="detach", old_grad_scale=0.5, backend="cpu"),
            [randn(g, 512, 300)]),
        "masked_softmax": lambda g: (
            lambda z: ops.masked_softmax(z, torch.rand(300, generator=generator(2)) > 0.3, log=True, backend="cpu"),
            [randn(g, 512, 300)]),
        "kd_loss": lambda g: (
            lambda s, t: ops.kd_loss(s, t, rows(generator(3), 512, 300), hard_weight=0.5, backend="cpu"),
            [randn(g, 512, 300), randn(g, 512, 300)]),
        "linear_cka": lambda g: (lambda x, y: ops.linear_cka(x, y, backend="cpu"),
                                 [randn(g, 3, 64, 500), randn(g, 3, 64, 300)]),
        "linear_cka_debiased_feature": lambda g: (lambda x, y: ops.linear_cka(x, y, debiased=True, backend="cpu"),
                                                  [randn(g, 2, 300, 20), randn(g, 2, 300, 30)]),
        "cka_matrix": lambda g: (lambda a, b, c: ops.cka_matrix([a, b], [c, a], backend="cpu"),
                                 [randn(g, 64, 500), randn(g, 64, 200), randn(g, 64, 300)]),
        "pairwise_mlp_scores": lambda g: (lambda a, b, w: ops.pairwise_mlp_scores(a, b, w, 0.1, backend="cpu"),
                                          [randn(g, 2, 64, 32), randn(g, 2, 48, 32), randn(g, 32)]),
        "pair_mix": lambda g: (lambda x, lam: ops.pair_mix(x, torch.randperm(256, generator=generator(4)), lam,
                                                           backend="cpu"),
                               [randn(g, 256, 300), torch.rand(256, generator=g)]),
        "mixed_logits_cross_entropy": lambda g: (
            lambda z, lam: ops.mixed_logits_cross_entropy(z, torch.randint(0, 256, (256,), generator=generator(5)), lam,
                                                          rows(generator(6), 256, 300), backend="cpu"),
            [randn(g, 256, 300), torch.rand(256, generator=g)]),
        "uniformity_loss": lambda g: (lambda x: ops.uniformity_loss(x, backend="cpu"), [randn(g, 600, 32)]),
        "expm": lambda g: (lambda a: ops.expm(a, backend="cpu"), [randn(g, 300, 6, 6, scale=0.5)]),
        "symmetric_expm": lambda g: (lambda w: ops.symmetric_expm(w, backend="cpu"), [randn(g, 300, 6, 6, scale=0.5)]),
        "ipe_transform": lambda g: (lambda z, w: ops.ipe_transform(z, w, backend="cpu"),
                                    [randn(g, 64, 10), randn(g, 4, 3, 10, 10, scale=0.2)]),
        "composite_symmetry": lambda g: (lambda cb, w, z1, z2: ops.composite_symmetry(cb, w, z1, z2, backend="cpu"),
                                         [randn(g, 160, 10, 10, scale=0.1), randn(g, 64, 160, scale=0.08),
                                          randn(g, 64, 10), randn(g, 64, 10)]),
        # no gradient: forward only
        "pgd_linf_step_": lambda g: (
            lambda x, d, x0: ops.pgd_linf_step_(x.detach().clone(), d.detach(), x0.detach(), eps=0.1, step_size=0.03,
                                                backend="cpu"),
            [torch.rand(256, 1000, generator=g), randn(g, 256, 1000), torch.rand(256, 1000, generator=g)]),
        "temporal_iou": lambda g: (lambda a, b: ops.temporal_iou(a, b, backend="cpu"),
                                   [spans(g, 500).float(), spans(g, 400).float()]),
        "span_nms": lambda g: (lambda s, sc: ops.span_nms(s, sc.detach(), 0.5, backend="cpu"),
                               [spans(g, 2000).float(), torch.rand(2000, generator=g)]),
        "trajectory_viou": lambda g: (lambda a, b: ops.trajectory_viou(a, spans(generator(7), 50, 40), b,
                                                                       spans(generator(8), 60, 40), backend="cpu"),
                                      [boxes(g, 50, 40), boxes(g, 60, 40)]),
    }


def _run(name, threads):
    fn, inputs = _cases()[name](generator(11))
    inputs = [t.requires_grad_(True) if t.is_floating_point() and name not in ("pgd_linf_step_", "span_nms",
                                                                               "temporal_iou", "trajectory_viou")
              else t for t in inputs]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = fn(*inputs)
        outs = list(out) if isinstance(out, tuple) else [out]
        grads = []
        if any(t.requires_grad for t in inputs):
            weights = [torch.linspace(-1, 2, o.numel()).reshape(o.shape) for o in outs]
            total = sum((o * w).sum() for o, w in zip(outs, weights))
            grads = [g for g in torch.autograd.grad(total, [t for t in inputs if t.requires_grad], allow_unused=True)
                     if g is not None]
        return [o.detach() for o in outs] + list(grads)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("name", list(_cases()))
def test_bit_identical_for_any_thread_count(name):
    if _backends.unavailable_reason("cpu", torch.device("cpu")) is not None:
        pytest.skip("the compiled CPU kernels did not load")
    first = _run(name, THREADS[0])
    for threads in THREADS[1:]:
        for k, (a, b) in enumerate(zip(first, _run(name, threads))):
            assert torch.equal(a, b), f"{name}: result {k} differs between 1 and {threads} threads"
