"""CKALoss, the intra-feature and local inter-feature losses against float64 loop references."""
import pytest
import torch

from pyfastlab import ops
from pyfastlab.distill import CKALoss, IntraFeatureLoss, LocalInterFeatureLoss
from pyfastlab.reference import distill as ref


def features(shape, seed, dtype=torch.float64, grad=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_(grad)


@pytest.mark.parametrize("kind", ["neg_log", "one_minus"])
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_loss_matches_its_formula_and_gradchecks(kind, debiased):
    x, y = features((3, 9, 5), 0, grad=True), features((3, 9, 4), 1, grad=True)
    c = torch.stack([ref.linear_cka(x[i], y[i], debiased=debiased) for i in range(3)])
    expected = (-torch.log(c.abs() + 1e-8) if kind == "neg_log" else 1 - c).mean()
    loss = CKALoss(kind, debiased=debiased)
    torch.testing.assert_close(loss(x, y), expected, atol=1e-12, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b), (x, y))


@pytest.mark.parametrize("reduction", ["log_mean", "mean_log"])
@pytest.mark.parametrize("debiased", [False, True])
def test_intra_feature_loss_matches_the_per_sample_loop(reduction, debiased):
    hs, ht = features((4, 10, 6), 2, grad=True), features((4, 10, 8), 3)
    loss = IntraFeatureLoss(reduction, debiased=debiased)
    expected = ref.intra_feature_loss(hs, ht, reduction=reduction, debiased=debiased)
    torch.testing.assert_close(loss(hs, ht), expected, atol=1e-12, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda h: loss(h, ht), (hs,))


def test_intra_feature_loss_float32_is_close_to_the_float64_reference():
    hs, ht = features((8, 16, 12), 4, torch.float32), features((8, 16, 32), 5, torch.float32)
    for reduction in ("log_mean", "mean_log"):
        actual = IntraFeatureLoss(reduction)(hs, ht)
        expected = ref.intra_feature_loss(hs.double(), ht.double(), reduction=reduction)
        torch.testing.assert_close(actual.double(), expected, atol=2e-5, rtol=2e-5)


def test_mean_log_is_at_least_log_mean_and_equal_for_equal_ckas():
    hs, ht = features((6, 12, 5), 6), features((6, 12, 7), 7)
    assert IntraFeatureLoss("mean_log")(hs, ht) > IntraFeatureLoss("log_mean")(hs, ht)
    same_h, same_t = hs[:1].expand(3, -1, -1), ht[:1].expand(3, -1, -1)
    torch.testing.assert_close(IntraFeatureLoss("mean_log")(same_h, same_t),
                               IntraFeatureLoss("log_mean")(same_h, same_t), atol=1e-12, rtol=0)


def test_cnn_maps_are_read_as_position_tokens_and_the_teacher_gets_no_gradient():
    hs, ht = features((3, 4, 2, 3), 8, grad=True), features((3, 7, 2, 3), 9, grad=True)
    tokens_s, tokens_t = hs.flatten(2).transpose(1, 2), ht.flatten(2).transpose(1, 2)
    torch.testing.assert_close(IntraFeatureLoss()(hs, ht), ref.intra_feature_loss(tokens_s, tokens_t))
    IntraFeatureLoss()(hs, ht).backward()
    assert hs.grad is not None and ht.grad is None


def test_local_inter_feature_loss_is_one_cka_over_the_flattened_batch():
    hs, ht = features((7, 5, 3), 10, grad=True), features((7, 5, 4), 11)
    for debiased in (False, True):
        loss = LocalInterFeatureLoss(debiased=debiased)
        torch.testing.assert_close(loss(hs, ht), ref.local_inter_feature_loss(hs, ht, debiased=debiased))
        assert torch.autograd.gradcheck(lambda h: loss(h, ht), (hs,))
    expected = -torch.log(ops.linear_cka(hs.flatten(1), ht.flatten(1)) + 1e-8)
    torch.testing.assert_close(LocalInterFeatureLoss()(hs, ht), expected)


def test_identical_features_give_the_log_of_one_plus_eps():
    h = features((5, 6, 4), 12)
    torch.testing.assert_close(IntraFeatureLoss()(h, h), -torch.log(torch.tensor(1 + 1e-8, dtype=h.dtype)))
    torch.testing.assert_close(LocalInterFeatureLoss(eps=0.0)(h, h), torch.zeros((), dtype=h.dtype), atol=1e-12,
                               rtol=0)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="kind"):
        CKALoss("cosine")
    with pytest.raises(ValueError, match="reduction"):
        IntraFeatureLoss("sum")
    with pytest.raises(ValueError, match="eps"):
        LocalInterFeatureLoss(eps=-1.0)
    with pytest.raises(ValueError, match="tokens"):
        IntraFeatureLoss()(features((4, 5), 0), features((4, 5), 1))
    with pytest.raises(ValueError, match="W = 5 tokens"):
        IntraFeatureLoss()(features((2, 5, 3), 0), features((2, 6, 3), 1))
    with pytest.raises(ValueError, match="batch size"):
        LocalInterFeatureLoss()(features((4, 5), 0), features((3, 5), 1))
