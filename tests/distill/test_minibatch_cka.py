"""MinibatchCKA against Song's U-statistic (and the plug-in HSIC) summed over batches, in float64."""
import warnings

import pytest
import torch

from pyfastlab import ops
from pyfastlab.distill import MinibatchCKA
from pyfastlab.reference import distill as ref


def layers(n, widths, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 4, generator=gen, dtype=dtype)
    return [base @ torch.randn(4, w, generator=gen, dtype=dtype) + 0.5 * torch.randn(n, w, generator=gen, dtype=dtype)
            for w in widths]


def split(xs, ys, size):
    n = xs[0].shape[0]
    return [([x[i:i + size] for x in xs], [y[i:i + size] for y in ys]) for i in range(0, n, size)]


@pytest.mark.parametrize("debiased", [True, False])
def test_sums_of_hsic_terms_match_the_u_statistic_reference(debiased):
    xs, ys = layers(60, (3, 7), 0), layers(60, (5, 2, 4), 1)
    metric = MinibatchCKA(debiased=debiased)
    batches = split(xs, ys, 20)
    for bx, by in batches:
        metric.update(bx, by)
    assert metric.num_batches == 3
    torch.testing.assert_close(metric.compute(), ref.minibatch_cka(batches, debiased=debiased), atol=1e-12, rtol=1e-10)


def test_one_batch_is_linear_cka_and_batch_order_does_not_matter():
    xs, ys = layers(48, (6, 3), 2), layers(48, (4,), 3)
    one = MinibatchCKA()
    one.update(xs, ys)
    expected = torch.stack([ops.linear_cka(x, ys[0], debiased=True) for x in xs])[:, None]
    torch.testing.assert_close(one.compute(), expected, atol=1e-12, rtol=1e-10)
    forward, backward = MinibatchCKA(), MinibatchCKA()
    batches = split(xs, ys, 12)
    for bx, by in batches:
        forward.update(bx, by)
    for bx, by in reversed(batches):
        backward.update(bx, by)
    torch.testing.assert_close(forward.compute(), backward.compute(), atol=1e-14, rtol=1e-13)


def test_self_comparison_has_a_unit_diagonal_and_repeated_compute_is_stable():
    xs = layers(64, (5, 9, 2), 4, torch.float32)
    metric = MinibatchCKA()
    for bx, _ in split(xs, xs, 16):
        metric.update(bx, bx)
    first = metric.compute()
    torch.testing.assert_close(first.diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.equal(first, metric.compute())
    assert first.dtype == torch.float64


def test_many_batches_converge_to_full_batch_cka_while_biased_batches_do_not():
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(2048, 64, generator=gen, dtype=torch.float64), torch.randn(2048, 64, generator=gen,
                                                                                 dtype=torch.float64)
    unbiased, naive = MinibatchCKA(), []
    for bx, by in split([x], [y], 64):
        unbiased.update(bx, by)
        naive.append(ops.linear_cka(bx[0], by[0]))
    assert abs(float(unbiased.compute())) < 0.02  # independent: true CKA 0
    assert float(torch.stack(naive).mean()) > 0.4  # biased: ~ d / (n + d) = 0.5


def test_small_batches_are_skipped_with_one_warning():
    xs = layers(11, (3,), 6)
    metric = MinibatchCKA()
    with pytest.warns(UserWarning, match="fewer than 4 rows"):
        metric.update([xs[0][:3]], [xs[0][:3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.update([xs[0][3:5]], [xs[0][3:5]])
    metric.update([xs[0][5:]], [xs[0][5:]])
    assert (metric.num_skipped, metric.num_batches) == (2, 1)


def test_state_dict_round_trip_and_reset():
    xs, ys = layers(32, (3,), 7), layers(32, (4, 2), 8)
    metric = MinibatchCKA()
    metric.update(xs, ys)
    copy = MinibatchCKA()
    copy.load_state_dict(metric.state_dict())
    assert torch.equal(copy.compute(), metric.compute())
    with pytest.raises(ValueError, match="debiased"):
        MinibatchCKA(debiased=False).load_state_dict(metric.state_dict())
    metric.reset()
    with pytest.raises(ValueError, match="before any"):
        metric.compute()


def test_bad_input():
    xs, ys = layers(16, (3, 2), 9), layers(16, (4,), 10)
    metric = MinibatchCKA()
    metric.update(xs, ys)
    with pytest.raises(ValueError, match="this batch has 1 x 1 layers, earlier batches had 2 x 1"):
        metric.update(xs[:1], ys)
    with pytest.raises(ValueError, match="ys has b = 8 rows, xs has b = 16"):
        metric.update(xs, [ys[0][:8]])
    with pytest.raises(ValueError, match=r"xs\[1\] has b = 8 rows"):
        metric.update([xs[0], xs[1][:8]], ys)
    with pytest.raises(ValueError, match="xs is empty"):
        metric.update([], ys)
    with pytest.raises(ValueError, match="floating"):
        metric.update([torch.ones(16, 2, dtype=torch.long)], ys)


def test_state_dict_is_a_copy_both_ways():
    xs, ys = layers(32, (3,), 11), layers(32, (4, 2), 12)
    metric = MinibatchCKA()
    metric.update(xs, ys)
    state = metric.state_dict()
    saved = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    metric.update(xs, ys)  # a later update must not change the saved state
    for k, v in saved.items():
        assert torch.equal(state[k], v), k
    copy = MinibatchCKA()
    copy.load_state_dict(state)
    expected = copy.compute()
    state["hsic_xy"].zero_()  # nor may the caller's dict alias the loaded accumulators
    assert torch.equal(copy.compute(), expected)
    copy.update(xs, ys)
    assert torch.equal(state["hsic_xx"], saved["hsic_xx"])


@pytest.mark.parametrize("change,match", [
    (lambda s: {k: v for k, v in s.items() if k != "hsic_yy"}, r"missing \['hsic_yy'\]"),
    (lambda s: dict(s, extra=0), r"unknown \['extra'\]"),
    (lambda s: dict(s, hsic_xy=s["hsic_xy"][:, :1]), r"state\['hsic_xy'\] must be \[L, M\]"),
    (lambda s: dict(s, hsic_xx=s["hsic_xx"][None]), r"state\['hsic_xx'\] must be 1-D"),
    (lambda s: dict(s, hsic_yy=None), r"state\['hsic_yy'\] must be a torch.Tensor"),
    (lambda s: dict(s, hsic_xy=s["hsic_xy"].long()), r"state\['hsic_xy'\] must be a floating"),
    (lambda s: dict(s, num_batches=-1), r"state\['num_batches'\] must be an int >= 0"),
    (lambda s: dict(s, num_skipped=1.5), r"state\['num_skipped'\] must be an int"),
    (lambda s: dict(s, num_batches=0), r"num_batches'\] must be >= 1"),
    (lambda s: dict(s, hsic_xy=None, hsic_xx=None, hsic_yy=None), r"num_batches'\] = 1 but"),
    (lambda s: dict(s, debiased="yes"), r"state\['debiased'\] must be a bool"),
])
def test_load_state_dict_rejects_a_bad_state_and_changes_nothing(change, match):
    xs, ys = layers(32, (3, 5), 13), layers(32, (4, 2), 14)
    source, target = MinibatchCKA(), MinibatchCKA()
    source.update(xs, ys)
    target.update(xs[:1], ys[:1])
    before = target.compute()
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(change(source.state_dict()))
    assert torch.equal(target.compute(), before) and target.num_batches == 1
    empty = MinibatchCKA()
    empty.load_state_dict(MinibatchCKA().state_dict())  # a fresh state loads
    assert empty.num_batches == 0
