"""Partner samplers for mixing within a batch (mixup.md 4.1), all on the labels' device with no
host sync; each returns an int64 partner vector [B] for any B >= 0."""
from __future__ import annotations

import torch

PAIRINGS = ("matching", "interclass", "permutation", "flip")


def matching(n: int, device) -> torch.Tensor:
    """A random involution: sigma = randperm(B), sigma[2k] <-> sigma[2k + 1]; an odd B leaves the
    last sigma paired with itself."""
    sigma = torch.randperm(n, device=device)
    partner = torch.arange(n, device=device)
    h = n // 2
    partner[sigma[0:2 * h:2]] = sigma[1:2 * h:2]
    partner[sigma[1:2 * h:2]] = sigma[0:2 * h:2]
    return partner


def interclass(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows ordered by a random class order (random inside a class), each paired with the row half
    the ordering away: every pair is inter-class whenever no class holds more than floor(B/2) rows."""
    n = labels.shape[0]
    device = labels.device
    kappa = torch.randperm(num_classes, device=device)
    order = torch.argsort(kappa[labels] * n + torch.randperm(n, device=device))
    h = n // 2
    partner = torch.arange(n, device=device)
    k = torch.arange(2 * h, device=device)
    partner[order[k]] = order[(k + h) % (2 * h)] if h > 0 else order[k]
    return partner


def sample_partner(pairing: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    n = labels.shape[0]
    if pairing == "matching":
        return matching(n, labels.device)
    if pairing == "interclass":
        return interclass(labels, num_classes)
    if pairing == "permutation":
        return torch.randperm(n, device=labels.device)
    if pairing == "flip":
        return torch.arange(n - 1, -1, -1, device=labels.device)
    raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
