"""The global inter-feature loss (memories, relations, memory CKA) and FSDLoss against float64
references; the derived relation gradients of distill.md 4.2 against autograd."""
import math

import pytest
import torch

from pyfastlab import ops
from pyfastlab.distill import FSDLoss, GlobalInterFeatureLoss, IntraFeatureLoss, LocalInterFeatureLoss, \
    centroid_relations
from pyfastlab.reference import distill as ref


def randn(*shape, seed, grad=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(grad)


def test_relations_match_explicit_differences():
    h, m = randn(6, 5, seed=0), randn(4, 5, seed=1)
    euclid, cosine = centroid_relations(h, m)
    e_ref, c_ref = ref.relations(h, m)
    torch.testing.assert_close(euclid, e_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(cosine, c_ref, atol=1e-12, rtol=1e-10)


def test_derived_relation_gradients_match_autograd():
    """distill.md 4.2: with Gm = 2 (Psi_S - Psi_T) / (B C) the upstream of F = mean (Psi_T - Psi_S)^2."""
    h, m = randn(6, 5, seed=2, grad=True), randn(4, 5, seed=3, grad=True)
    target_e, target_c = randn(6, 4, seed=4).abs() + 1, randn(6, 4, seed=5).tanh()
    n_rows, n_slots = h.shape[0], m.shape[0]
    psi, cos = centroid_relations(h, m)
    gh, gm = torch.autograd.grad(((target_e - psi) ** 2).mean(), (h, m))
    g = (2 * (psi - target_e) / (n_rows * n_slots)).detach() / psi.detach()
    hd, md = h.detach(), m.detach()
    torch.testing.assert_close(gh, g.sum(1, keepdim=True) * hd - g @ md)
    torch.testing.assert_close(gm, g.sum(0)[:, None] * md - g.t() @ hd)
    _, cos = centroid_relations(h, m)
    gh, gm = torch.autograd.grad(((target_c - cos) ** 2).mean(), (h, m))
    upstream = (2 * (cos - target_c) / (n_rows * n_slots)).detach()
    n_h, n_m = hd.norm(dim=1), md.norm(dim=1)
    scaled, weighted = upstream / (n_h[:, None] * n_m[None, :]), upstream * cos.detach()
    torch.testing.assert_close(gh, scaled @ md - (weighted.sum(1) / n_h**2)[:, None] * hd)
    torch.testing.assert_close(gm, scaled.t() @ hd - (weighted.sum(0) / n_m**2)[:, None] * md)


@pytest.mark.parametrize("distance_norm", ["none", "mean"])
@pytest.mark.parametrize("debiased", [False, True])
def test_global_loss_matches_the_reference_and_gradchecks(distance_norm, debiased):
    torch.manual_seed(0)
    loss = GlobalInterFeatureLoss(randn(6, 7, seed=6), 5, gamma_m=0.3, distance_norm=distance_norm,
                                  debiased=debiased)
    hs, ht = randn(8, 5, seed=7, grad=True), randn(8, 7, seed=8)
    expected = ref.global_inter_feature_loss(hs, ht, loss.teacher_memory, loss.student_memory, gamma_m=0.3,
                                             distance_norm=distance_norm, debiased=debiased)
    torch.testing.assert_close(loss(hs, ht), expected, atol=1e-12, rtol=1e-10)
    memory = loss.student_memory
    gh, gm = torch.autograd.grad(loss(hs, ht), (hs, memory))
    rh, rm = torch.autograd.grad(ref.global_inter_feature_loss(
        hs, ht, loss.teacher_memory, memory, gamma_m=0.3, distance_norm=distance_norm, debiased=debiased), (hs, memory))
    torch.testing.assert_close(gh, rh, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(gm, rm, atol=1e-12, rtol=1e-9)
    assert torch.autograd.gradcheck(lambda h: loss(h, ht), (hs,))


def test_cached_memory_cka_equals_the_op_and_student_equal_to_teacher_gives_the_floor():
    memory = randn(5, 4, seed=9)
    loss = GlobalInterFeatureLoss(memory, 4, eps=1e-8)
    torch.testing.assert_close(loss.memory_cka(), ops.linear_cka(memory, loss.student_memory.detach()))
    with torch.no_grad():
        loss.student_memory.copy_(memory)
    h = randn(3, 4, seed=10)
    value = loss(h, h)
    assert loss.components["euclid"] == 0 and loss.components["cosine"] == 0
    torch.testing.assert_close(value, torch.tensor(-math.log(1 + 1e-8), dtype=torch.float64))


def test_teacher_memory_is_a_buffer_and_the_student_memory_a_parameter():
    loss = GlobalInterFeatureLoss(randn(4, 6, seed=11), 3)
    assert [name for name, _ in loss.named_parameters()] == ["student_memory"]
    assert {"teacher_memory", "teacher_gram"} <= set(loss.state_dict())
    assert loss.student_memory.shape == (4, 3)


def test_global_loss_bad_input():
    memory = randn(4, 6, seed=12)
    with pytest.raises(ValueError, match="teacher memory width 6 differs"):
        GlobalInterFeatureLoss(memory, 3)(randn(2, 3, seed=0), randn(2, 5, seed=1))
    with pytest.raises(ValueError, match="student memory width 3"):
        GlobalInterFeatureLoss(memory, 3)(randn(2, 4, seed=0), randn(2, 6, seed=1))
    with pytest.raises(ValueError, match="C >= 2 centroids"):
        GlobalInterFeatureLoss(randn(0, 6, seed=0), 3)
    with pytest.raises(ValueError, match="C >= 4 centroids"):
        GlobalInterFeatureLoss(memory[:3], 3, debiased=True)
    with pytest.raises(ValueError, match="centroids are all equal"):
        GlobalInterFeatureLoss(torch.ones(4, 6, dtype=torch.float64), 3)
    with pytest.raises(ValueError, match="student_dim"):
        GlobalInterFeatureLoss(memory, 0)
    with pytest.raises(ValueError, match="gamma_m"):
        GlobalInterFeatureLoss(memory, 3, gamma_m=-0.1)
    with pytest.raises(ValueError, match="distance_norm"):
        GlobalInterFeatureLoss(memory, 3, distance_norm="max")


def test_fsd_loss_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(1)
    hs, ht = randn(6, 4, 3, seed=13, grad=True), randn(6, 4, 5, seed=14)
    memory = GlobalInterFeatureLoss(randn(5, 20, seed=15), 12)
    fsd = FSDLoss(0.5, 2.0, 0.25, global_loss=memory, intra_reduction="mean_log")
    total = fsd(hs, ht)
    expected = (0.5 * IntraFeatureLoss("mean_log")(hs, ht) + 2.0 * LocalInterFeatureLoss()(hs, ht)
                + 0.25 * memory(hs, ht))
    torch.testing.assert_close(total, expected)
    assert set(fsd.components) == {"intra", "local", "global"}
    assert all(not v.requires_grad for v in fsd.components.values())
    assert torch.autograd.gradcheck(lambda h: fsd(h, ht), (hs,))
    only_intra = FSDLoss(1.0, 0.0, 0.0)
    only_intra(hs, ht)
    assert set(only_intra.components) == {"intra"}
    torch.testing.assert_close(FSDLoss(1.0, 1.0, 1.0)(hs, ht), FSDLoss(1.0, 1.0, 0.0)(hs, ht))


def test_official_ilg_weights():
    fsd = FSDLoss.from_official_ilg(30.0, 0.2, 0.25, intra_reduction="mean_log")
    assert fsd.gamma_global == pytest.approx(6.0)
    assert fsd.gamma_intra == pytest.approx(30.0 * 0.8 * 0.25 / 2)
    assert fsd.gamma_local == pytest.approx(30.0 * 0.8 * 0.75 / 2)
    assert fsd.intra.reduction == "mean_log"
    with pytest.raises(ValueError, match="sigma"):
        FSDLoss.from_official_ilg(1.0, 1.5, 0.5)


def test_fsd_loss_bad_weights():
    for kwargs, name in (({"gamma_intra": -1.0}, "gamma_intra"), ({"gamma_local": -0.5}, "gamma_local"),
                         ({"gamma_global": float("nan")}, "gamma_global")):
        with pytest.raises(ValueError, match=name):
            FSDLoss(**kwargs)
    with pytest.raises(ValueError, match="epsilon"):
        FSDLoss.from_official_ilg(-1.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="no active term"):
        FSDLoss(0.0, 0.0, 1.0)(randn(4, 3, 2, seed=0), randn(4, 3, 2, seed=1))
    with pytest.raises(ValueError, match="global_loss"):
        FSDLoss(global_loss=torch.nn.Linear(2, 2))
