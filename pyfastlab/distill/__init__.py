"""Distillation: CKA structure distillation (FSD), feature memory by exact k-means, minibatch CKA
across ranks, soft-target KD and matured-dumb-teacher helpers.

Thin modules over :mod:`pyfastlab.ops` (kd_loss, linear_cka, cka_matrix); distill.md section 4."""
from .cka_loss import CKALoss
from .confidence import ConfidenceStats, confidence_stats
from .dumb_teacher import make_dumb_teacher, mature
from .fsd import FSDLoss
from .kd import KDLoss, KDSchedule
from .kmeans import KMeansResult, kmeans
from .memory import GlobalInterFeatureLoss, centroid_relations
from .minibatch_cka import MinibatchCKA
from .structure import IntraFeatureLoss, LocalInterFeatureLoss

__all__ = ["CKALoss", "IntraFeatureLoss", "LocalInterFeatureLoss", "GlobalInterFeatureLoss", "FSDLoss",
           "centroid_relations", "kmeans", "KMeansResult", "MinibatchCKA", "KDLoss", "KDSchedule",
           "make_dumb_teacher", "mature", "confidence_stats", "ConfidenceStats"]
