"""Continual learning: general masked softmax, replay, ER / ER-ACE / DER / DER++ and EAT.

Thin modules over :mod:`pyfastlab.ops` (continual.md section 4)."""
from .adversarial import ExternalAdversarialTraining, accuracy, pgd_linf, robust_accuracy
from .buffer import BufferSample, ReplayBuffer
from .data import Task, split_digits
from .learner import ReplayLearner
from .losses import DERLoss, DERPPLoss, ERACELoss, ERLoss
from .masking import POLICIES, GeneralMaskedCrossEntropy
from .metrics import final_average_accuracy, forgetting

__all__ = ["GeneralMaskedCrossEntropy", "POLICIES", "ReplayBuffer", "BufferSample", "ERLoss", "ERACELoss",
           "DERLoss", "DERPPLoss", "ReplayLearner", "pgd_linf", "robust_accuracy", "accuracy",
           "ExternalAdversarialTraining", "final_average_accuracy", "forgetting", "split_digits", "Task"]
