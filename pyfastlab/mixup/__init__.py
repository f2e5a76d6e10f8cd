"""Mixup family: Asymptotic Midpoint Mixup, pair samplers, alignment/uniformity metrics,
long-tailed subsets and the CIFAR-100 superclass table. Thin modules over :mod:`pyfastlab.ops`
(mixup.md section 4)."""
from .am_mixup import AsymptoticMidpointMixup
from .cifar100 import CIFAR100_COARSE_NAMES, CIFAR100_FINE_TO_COARSE, fine_to_coarse
from .long_tailed import long_tailed_counts, long_tailed_indices
from .metrics import alignment, class_alignment, uniformity
from .pairing import PAIRINGS, interclass, matching, sample_partner
from .schedule import SCHEDULES

__all__ = ["AsymptoticMidpointMixup", "alignment", "class_alignment", "uniformity", "long_tailed_counts",
           "long_tailed_indices", "CIFAR100_FINE_TO_COARSE", "CIFAR100_COARSE_NAMES", "fine_to_coarse",
           "PAIRINGS", "SCHEDULES", "matching", "interclass", "sample_partner"]
