"""Alignment/uniformity metrics, long-tailed subsets and the CIFAR-100 table (mixup.md 4.2-4.4, 5)."""
import math

import pytest
import torch
import torch.nn.functional as F

from pyfastlab.mixup import (CIFAR100_COARSE_NAMES, CIFAR100_FINE_TO_COARSE, alignment, class_alignment,
                             fine_to_coarse, long_tailed_counts, long_tailed_indices, uniformity)


def brute_class_alignment(x, labels, alpha):
    f = F.normalize(x, dim=1)
    total, n = 0.0, 0
    for a in range(len(x)):
        for b in range(len(x)):
            if a != b and labels[a] == labels[b]:
                total += (f[a] - f[b]).norm() ** alpha
                n += 1
    return total / n


@pytest.mark.parametrize("alpha", [2.0, 1.0, 3.0])
def test_class_alignment_closed_form(alpha):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (30,), generator=g)
    labels[0] = 9  # a singleton class adds no pairs
    torch.testing.assert_close(class_alignment(x, labels, alpha=alpha), brute_class_alignment(x, labels, alpha))
    assert math.isnan(class_alignment(x[:3], torch.tensor([0, 1, 2])))


def test_alignment_and_uniformity():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(20, 4, generator=g), torch.randn(20, 4, generator=g)
    want = (F.normalize(a, dim=1) - F.normalize(b, dim=1)).norm(dim=1).pow(2).mean()
    torch.testing.assert_close(alignment(a, b), want)
    torch.testing.assert_close(alignment(a, b, normalize=False), (a - b).norm(dim=1).pow(2).mean())
    z = a.clone().requires_grad_(True)
    alignment(z, z.detach(), alpha=1.0).backward()
    assert torch.isfinite(z.grad).all()
    u = uniformity(100 * a)  # normalised first: finite and in [-8, 0]
    assert -8 <= float(u) <= 0
    torch.testing.assert_close(u, uniformity(F.normalize(a, dim=1), normalize=False))


def test_long_tailed_counts_match_ldam():
    c10 = long_tailed_counts(5000, 10, 100)
    assert c10[:3] == [5000, 2997, 1796] and c10[-3:] == [139, 83, 50]
    table = {(10, 10): 20431, (10, 50): 13996, (10, 100): 12406, (10, 200): 11203,
             (100, 10): 19573, (100, 50): 12608, (100, 100): 10847, (100, 200): 9502}
    for (C, rho), total in table.items():
        assert sum(long_tailed_counts(5000 if C == 10 else 500, C, rho)) == total
    assert long_tailed_counts(7, 4, 1) == [7] * 4 and long_tailed_counts(9, 1, 50) == [9]
    assert long_tailed_counts(124, 10, 50) == [124, 80, 51, 33, 21, 14, 9, 5, 3, 2]


def test_long_tailed_indices():
    labels = torch.arange(5).repeat_interleave(30)[torch.randperm(150, generator=torch.Generator().manual_seed(0))]
    idx = long_tailed_indices(labels, 10, seed=3)
    assert torch.bincount(labels[idx]).tolist() == long_tailed_counts(30, 5, 10)
    assert torch.equal(idx, long_tailed_indices(labels, 10, seed=3))
    assert not torch.equal(idx, long_tailed_indices(labels, 10, seed=4))
    with pytest.raises(ValueError, match="class 0 needs 31"):
        long_tailed_indices(labels, 10, n_max=31)
    with pytest.raises(ValueError, match="imbalance_factor"):
        long_tailed_counts(10, 3, 0.5)


def test_cifar100_table():
    assert len(CIFAR100_FINE_TO_COARSE) == 100 and len(CIFAR100_COARSE_NAMES) == 20
    assert torch.bincount(torch.tensor(CIFAR100_FINE_TO_COARSE)).tolist() == [5] * 20
    members = lambda name: sorted(i for i, c in enumerate(CIFAR100_FINE_TO_COARSE)
                                  if CIFAR100_COARSE_NAMES[c] == name)
    assert members("aquatic_mammals") == [4, 30, 55, 72, 95]
    assert members("people") == [2, 11, 35, 46, 98]
    assert members("vehicles_1") == [8, 13, 48, 58, 90]
    assert fine_to_coarse(torch.tensor([[4, 98]])).tolist() == [[0, 14]]
    with pytest.raises(ValueError):
        fine_to_coarse(torch.tensor([100]))
