"""The public ops of pyfastlab (drop-in torch functions with a `backend=` argument)."""
from .cka import cka_matrix, linear_cka
from .continual import masked_cross_entropy, masked_softmax, pgd_linf_step_
from .kd import kd_loss
from .mixup import mixed_logits_cross_entropy, pair_mix, uniformity_loss
from .vae import composite_symmetry, expm, ipe_transform, symmetric_expm
from .vidvrd import pairwise_mlp_scores, span_nms, temporal_iou
from .viou import trajectory_viou

# op name -> family, for `pyfastlab info` and `pyfastlab check`
OPS = {
    "masked_cross_entropy": "continual",
    "masked_softmax": "continual",
    "pgd_linf_step_": "continual",
    "kd_loss": "distill",
    "linear_cka": "distill",
    "cka_matrix": "distill",
    "pairwise_mlp_scores": "vidvrd",
    "temporal_iou": "vidvrd",
    "span_nms": "vidvrd",
    "trajectory_viou": "vidvrd",
    "pair_mix": "mixup",
    "mixed_logits_cross_entropy": "mixup",
    "uniformity_loss": "mixup",
    "expm": "vae",
    "symmetric_expm": "vae",
    "ipe_transform": "vae",
    "composite_symmetry": "vae",
}

__all__ = ["masked_cross_entropy", "masked_softmax", "pgd_linf_step_", "kd_loss", "linear_cka", "cka_matrix",
           "pairwise_mlp_scores", "temporal_iou", "span_nms", "trajectory_viou",
           "pair_mix", "mixed_logits_cross_entropy", "uniformity_loss",
           "expm", "symmetric_expm", "ipe_transform", "composite_symmetry", "OPS"]
