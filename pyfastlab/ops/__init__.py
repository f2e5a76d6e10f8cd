"""The public ops of pyfastlab (drop-in torch functions with a `backend=` argument)."""
from .continual import masked_cross_entropy, masked_softmax, pgd_linf_step_
from .kd import kd_loss

# op name -> family, for `pyfastlab info` and `pyfastlab check`
OPS = {
    "masked_cross_entropy": "continual",
    "masked_softmax": "continual",
    "pgd_linf_step_": "continual",
    "kd_loss": "distill",
}

__all__ = ["masked_cross_entropy", "masked_softmax", "pgd_linf_step_", "kd_loss", "OPS"]
