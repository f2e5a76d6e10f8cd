"""AsymptoticMidpointMixup: schedule, pair samplers, loss paths and errors (mixup.md 4.1, 5)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyfastlab import ops
from pyfastlab.mixup import AsymptoticMidpointMixup, interclass, matching


@pytest.mark.parametrize("schedule", ["exp", "linear", "cosine"])
def test_schedule_ends_and_monotone(schedule):
    am = AsymptoticMidpointMixup(10, schedule=schedule, lam_start=0.9, final_gap=0.05)
    assert am.lam_at(0) == pytest.approx(0.9) and am.lam_at(1) == pytest.approx(0.55)
    values = [am.lam_at(q / 50) for q in range(51)]
    assert all(a > b for a, b in zip(values, values[1:])) and all(v > 0.5 for v in values)
    assert am.lam_at(-3) == am.lam_at(0) and am.lam_at(7) == am.lam_at(1)
    assert AsymptoticMidpointMixup(3, schedule="const", lam_start=0.7).lam_at(0.6) == pytest.approx(0.7)
    # exp default: per-epoch factor over 200 epochs
    d = AsymptoticMidpointMixup(3)
    assert (d.lam_at(1 / 200) - 0.5) / (d.lam_at(0) - 0.5) == pytest.approx(0.9840, abs=1e-4)


def test_samplers():
    torch.manual_seed(0)
    for n in (2, 8, 64):
        p = matching(n, "cpu")
        assert torch.equal(p[p], torch.arange(n)) and bool((p != torch.arange(n)).all())
    p = matching(7, "cpu")
    assert torch.equal(p[p], torch.arange(7)) and int((p == torch.arange(7)).sum()) == 1
    for _ in range(20):
        labels = torch.randint(0, 6, (40,))
        counts = torch.bincount(labels)
        p = interclass(labels, 6)
        assert torch.equal(torch.sort(p).values, torch.arange(40))
        if int(counts.max()) <= 20:
            assert bool((labels != labels[p]).all())
    assert interclass(torch.tensor([2]), 3).tolist() == [0]
    am = AsymptoticMidpointMixup(4, pairing="flip")
    partner, valid = am.sample_pairs(torch.tensor([0, 1, 1, 0]))
    assert partner.tolist() == [3, 2, 1, 0] and valid.tolist() == [0, 0, 0, 0]


def _setup(seed=0, B=16, D=6, C=4):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    head = nn.Linear(D, C).double()
    return h, y, head


@pytest.mark.parametrize("target", ["anchor", "soft"])
@pytest.mark.parametrize("lam_mode", ["fixed", "beta"])
def test_logits_path_equals_features_path(target, lam_mode):
    h, y, head = _setup()
    results = []
    for space in ("logits", "features"):
        torch.manual_seed(5)
        am = AsymptoticMidpointMixup(4, mix_space=space, target=target, lam_mode=lam_mode)
        hh = h.clone().requires_grad_(True)
        head.zero_grad()
        loss = am(hh, y, head, progress=0.3)
        loss.backward()
        results.append((loss.detach(), hh.grad, head.weight.grad.clone(), head.bias.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_loss_matches_hand_formula():
    h, y, head = _setup(1)
    torch.manual_seed(3)
    am = AsymptoticMidpointMixup(4, same_class="mask", aug_weight=0.7)
    loss = am(h, y, head, progress=0.5)
    torch.manual_seed(3)
    partner, valid = am.sample_pairs(y)
    lam = am.lam_at(0.5)
    z = head(h)
    rows = F.cross_entropy(head(lam * h + (1 - lam) * h[partner]), y, reduction="none")
    want = F.cross_entropy(z, y) + 0.7 * (valid.double() * rows).sum() / valid.sum().clamp_min(1)
    torch.testing.assert_close(loss, want)
    assert set(am.last) == {"lam", "valid_fraction", "clean", "aug"}


def test_soft_at_midpoint_is_midpoint_mixup():
    h, y, head = _setup(2)
    am = AsymptoticMidpointMixup(4, schedule="const", lam_start=0.5, final_gap=0.0, target="soft", same_class="keep",
                                 keep_clean=False)
    torch.manual_seed(1)
    loss = am(h, y, head, progress=0.0)
    torch.manual_seed(1)
    partner, _ = am.sample_pairs(y)
    mid = head(0.5 * (h + h[partner]))
    soft = 0.5 * F.one_hot(y, 4).double() + 0.5 * F.one_hot(y[partner], 4).double()
    torch.testing.assert_close(loss, F.cross_entropy(mid, soft))


def test_all_labels_equal_and_eval_and_counter():
    h, _, head = _setup(3)
    y = torch.full((16,), 2)
    am = AsymptoticMidpointMixup(4, total_steps=10)
    loss = am(h, y, head)
    assert torch.isfinite(loss) and am.last["aug"] == 0 and am.step == 1
    torch.testing.assert_close(loss, F.cross_entropy(head(h), y))
    am.eval()
    torch.testing.assert_close(am(h, y, head), F.cross_entropy(head(h), y))
    assert am.step == 1


def test_compile_fullgraph():
    h, y, head = _setup(4)
    am = AsymptoticMidpointMixup(4)
    compiled = torch.compile(lambda h, y: am(h, y, head, progress=0.4), fullgraph=True, backend="aot_eager")
    assert torch.isfinite(compiled(h, y))


def test_errors():
    h, y, head = _setup(5)
    with pytest.raises(ValueError, match="lam_start"):
        AsymptoticMidpointMixup(4, lam_start=1.2)
    with pytest.raises(ValueError, match="final_gap"):
        AsymptoticMidpointMixup(4, lam_start=0.6, final_gap=0.2)
    with pytest.raises(ValueError, match="exp"):
        AsymptoticMidpointMixup(4, final_gap=0.0)
    with pytest.raises(ValueError, match="pairing"):
        AsymptoticMidpointMixup(4, pairing="shuffle")
    am = AsymptoticMidpointMixup(4)
    with pytest.raises(ValueError, match="labels must lie"):
        am(h, torch.full((16,), 4), head, progress=0.1)
    with pytest.raises(ValueError, match="labels must be"):
        am(h, y[:3], head, progress=0.1)
    with pytest.raises(ValueError, match="progress"):
        am(h, y, head)
    with pytest.raises(ValueError, match="finite"):
        am(h, y, head, progress=math.nan)
    with pytest.raises(ValueError, match="nn.Linear"):
        AsymptoticMidpointMixup(4, mix_space="logits")(h, y, nn.Sequential(head), progress=0.1)
    assert ops.pair_mix is not None
