"""KDLoss, KDSchedule, dumb teachers and confidence statistics."""
import pytest
import torch
from torch import nn

from pyfastlab import ops
from pyfastlab.distill import KDLoss, KDSchedule, confidence_stats, make_dumb_teacher, mature
from pyfastlab.reference import kd as kd_ref


def logits(n, c, seed, grad=False):
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(n, c, generator=gen, dtype=torch.float64)).requires_grad_(grad)


def test_kd_loss_module_is_the_op_and_leaves_the_teacher_alone():
    s, t = logits(7, 5, 0, grad=True), logits(7, 5, 1, grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, -100, 1])
    loss = KDLoss(temperature=2.0, soft_weight=0.4, hard_weight=0.6)
    value = loss(s, t, y)
    expected = kd_ref.kd_loss(s, t, y, temperature=2.0, soft_weight=0.4, hard_weight=0.6)
    torch.testing.assert_close(value, expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(value, ops.kd_loss(s, t, y, temperature=2.0, soft_weight=0.4, hard_weight=0.6))
    value.backward()
    assert s.grad is not None and t.grad is None
    assert torch.autograd.gradcheck(lambda a: loss(a, t.detach(), y), (s.detach().clone().requires_grad_(),))
    with pytest.raises(ValueError, match="batchmean"):
        KDLoss(reduction="mean")
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=0.0)


def test_kd_schedules():
    assert [KDSchedule("constant", 0.3)(t) for t in (0, 5)] == [0.3, 0.3]
    linear = KDSchedule("linear", weight=0.8, start=2, ramp=4)
    assert [linear(t) for t in (0, 2, 4, 6, 10)] == pytest.approx([0, 0, 0.4, 0.8, 0.8])
    step = KDSchedule("step", weight=0.5, start=3)
    assert [step(t) for t in (2, 3)] == [0.0, 0.5]
    loss = linear.apply(KDLoss(), 4)
    assert (loss.soft_weight, loss.hard_weight) == pytest.approx((0.4, 0.6))
    for kwargs, name in (({"kind": "cosine"}, "kind"), ({"weight": 1.5}, "weight"), ({"weight": -0.1}, "weight"),
                         ({"start": -1}, "start"), ({"ramp": 0}, "ramp")):
        with pytest.raises(ValueError, match=name):
            KDSchedule(**kwargs)


def small_net():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_random_dumb_teacher_is_a_frozen_reinitialised_copy():
    torch.manual_seed(0)
    student = small_net()
    before = [p.detach().clone() for p in student.parameters()]
    rng = torch.get_rng_state()
    teacher = make_dumb_teacher(student, "random", seed=3)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is untouched
    again = make_dumb_teacher(student, seed=3)
    other = make_dumb_teacher(student, seed=4)
    for p, q, r, s, b in zip(teacher.parameters(), again.parameters(), other.parameters(), student.parameters(),
                             before):
        assert p.shape == s.shape and torch.equal(p, q) and not torch.equal(p, r) and not torch.equal(p, s)
        assert not p.requires_grad and torch.equal(s, b) and s.requires_grad
    assert not teacher.training and student.training


def test_matured_teacher_is_trained_for_its_budget_then_frozen():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    student = small_net()
    random = make_dumb_teacher(student, seed=0)
    matured = make_dumb_teacher(student, "matured", seed=0, train_fn=lambda m: mature(m, loader, steps=60, lr=1e-2))
    ce = lambda m: float(nn.functional.cross_entropy(m(x), y))  # noqa: E731
    assert ce(matured) < ce(random) - 0.2
    assert not matured.training and not any(p.requires_grad for p in matured.parameters())
    with pytest.raises(ValueError, match="train_fn"):
        make_dumb_teacher(student, "matured")
    with pytest.raises(ValueError, match="train_fn is only used"):
        make_dumb_teacher(student, "random", train_fn=lambda m: None)
    with pytest.raises(ValueError, match="mode"):
        make_dumb_teacher(student, "frozen")
    with pytest.raises(ValueError, match="steps"):
        mature(small_net(), loader, steps=-1)
    with pytest.raises(ValueError, match="no batches"):
        mature(small_net(), [], steps=1)


def test_confidence_stats_match_a_loop():
    z, y = logits(200, 6, 2), torch.randint(6, (200,), generator=torch.Generator().manual_seed(3))
    stats = confidence_stats(z, y, bins=10)
    p = torch.softmax(z, 1)
    conf, pred = p.max(1)
    torch.testing.assert_close(stats.confidence, conf)
    torch.testing.assert_close(stats.entropy, -(p * p.log()).sum(1))
    ece = 0.0
    for b in range(10):
        inside = (conf > b / 10) & (conf <= (b + 1) / 10)
        if inside.any():
            ece += inside.double().mean() * ((pred[inside] == y[inside]).double().mean() - conf[inside].mean()).abs()
    assert stats.ece == pytest.approx(float(ece), abs=1e-12)
    assert stats.accuracy == pytest.approx(float((pred == y).double().mean()))
    assert int(stats.histogram.sum()) == 200
    assert torch.equal(stats.histogram_correct + stats.histogram_incorrect, stats.histogram)
    assert stats.mean_confidence == pytest.approx(float(conf.mean()))
    plain = confidence_stats(z)
    assert plain.ece is None and plain.histogram_correct is None


def test_confidence_stats_edge_cases():
    certain = torch.tensor([[0.0, float("-inf")], [5.0, 5.0]])
    stats = confidence_stats(certain, torch.tensor([0, 1]), bins=4)
    assert stats.entropy[0] == 0 and stats.confidence.tolist() == [1.0, 0.5]
    assert stats.histogram.tolist() == [0, 1, 0, 1]  # 0.5 falls in (0.25, 0.5]
    with pytest.raises(ValueError, match="bins"):
        confidence_stats(certain, bins=0)
    with pytest.raises(ValueError, match="target must have the N = 2 rows"):
        confidence_stats(certain, torch.tensor([0]))
