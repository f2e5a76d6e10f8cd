"""The public ops of pyfastlab (drop-in torch functions with a `backend=` argument)."""
from .cka import cka_matrix, linear_cka
from .continual import masked_cross_entropy, masked_softmax, pgd_linf_step_
from .kd import kd_loss
from .viou import trajectory_viou

# op name -> family, for `pyfastlab info` and `pyfastlab check`
OPS = {
    "masked_cross_entropy": "continual",
    "masked_softmax": "continual",
    "pgd_linf_step_": "continual",
    "kd_loss": "distill",
    "linear_cka": "distill",
    "cka_matrix": "distill",
    "trajectory_viou": "vidvrd",
}

__all__ = ["masked_cross_entropy", "masked_softmax", "pgd_linf_step_", "kd_loss", "linear_cka", "cka_matrix", "trajectory_viou",
           "OPS"]
