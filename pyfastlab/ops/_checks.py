"""Argument validation shared by the op wrappers: every message names the argument."""
from __future__ import annotations

import math
import os

import torch


def check_tensor(name: str, x, *, dtypes=None, floating=False, dim=None, device=None):
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {x.dtype}")
    if dtypes is not None and x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype {names}, got {x.dtype}")
    if dim is not None and x.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device}, expected {device} (the device of the first argument)")


def check_choice(name: str, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_finite(name: str, value: float, *, allow_neg_inf=False):
    value = float(value)
    if math.isnan(value) or value == math.inf or (value == -math.inf and not allow_neg_inf):
        expected = "finite or -inf" if allow_neg_inf else "finite"
        raise ValueError(f"{name} must be {expected}, got {value}")


def device_checks_enabled() -> bool:
    """PYFASTLAB_CHECK=1: raise on device-side index errors (costs a host sync per call)."""
    return os.environ.get("PYFASTLAB_CHECK", "0") == "1"
