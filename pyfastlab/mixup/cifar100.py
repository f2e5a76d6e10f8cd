"""CIFAR-100 fine-to-coarse labels (torchvision exposes only the fine ones): fine ids in the
dataset's alphabetical order -> the 20 superclasses (mixup.md 4.4)."""
from __future__ import annotations

import torch

CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)

CIFAR100_COARSE_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)


def fine_to_coarse(labels) -> torch.Tensor:
    """Coarse labels of fine CIFAR-100 labels (any shape, int64 out, on the labels' device)."""
    labels = torch.as_tensor(labels)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 99):
        raise ValueError("labels must be CIFAR-100 fine ids in [0, 100)")
    table = torch.tensor(CIFAR100_FINE_TO_COARSE, dtype=torch.int64, device=labels.device)
    return table[labels.long()]
