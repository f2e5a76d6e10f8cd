"""Argument validation shared by the op wrappers.

The error contract: a bad argument (not a tensor, wrong dtype, rank or size, an index out of range,
a scalar of the wrong kind or value) raises ValueError, and the message names the argument and says
what was expected. Scalars are checked for their kind before their value, so None, a str or 1.5
where an int is expected never reach float() / int() with a bare error of their own.
"""
from __future__ import annotations

import math
import numbers
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
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _readable(name: str, value, kind, symbolic, what: str) -> bool:
    """Raise unless value is a number of `kind` (a bool is not); True when its value can be checked.
    While torch.compile traces, a number may be symbolic (dynamic=True): its value is unknown, and
    reading it would specialise the graph or break it, so only its kind is checked then."""
    if isinstance(value, symbolic):
        return False
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
    return not torch.compiler.is_compiling()


def check_int(name: str, value, *, minimum=None) -> int:
    """An int64 (not a bool, not a float such as 1.5 that int() would truncate)."""
    if not _readable(name, value, numbers.Integral, torch.SymInt, "an int"):
        return value
    value = int(value)
    if not -2**63 <= value < 2**63:
        raise ValueError(f"{name} must fit in int64, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def check_float(name: str, value, *, allow_neg_inf=False, allow_inf=False, minimum=None, positive=False) -> float:
    """A real number (int or float, not a bool), finite unless -inf / +-inf are allowed."""
    if not _readable(name, value, numbers.Real, torch.SymFloat, "a float"):
        return value
    value = float(value)
    infinite_ok = allow_inf or (allow_neg_inf and value == -math.inf)
    if math.isnan(value) or (math.isinf(value) and not infinite_ok):
        expected = "finite or +-inf" if allow_inf else "finite or -inf" if allow_neg_inf else "finite"
        raise ValueError(f"{name} must be {expected}, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_finite(name: str, value, *, allow_neg_inf=False) -> float:
    return check_float(name, value, allow_neg_inf=allow_neg_inf)


def check_state_keys(state, keys: set, owner: str) -> None:
    """A state dict for `owner.load_state_dict`: a dict with exactly `keys`."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict from {owner}.state_dict(), got {type(state).__name__}")
    missing, unknown = sorted(keys - set(state)), sorted(set(state) - keys, key=str)
    if missing or unknown:
        raise ValueError(f"state must have exactly the keys {sorted(keys)}: missing {missing}, unknown {unknown}")


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return value


def check_index_range(name: str, index: torch.Tensor, low: int, high: int, *, except_value=None) -> None:
    """Raise if an index tensor has values outside [low, high) (other than `except_value`).
    CPU tensors are always checked; on a device the check costs a host sync, so it runs only under
    PYFASTLAB_CHECK=1 (the kernels themselves never read out of bounds: see each op's docstring)."""
    if index.numel() == 0 or torch.compiler.is_compiling() or index.device.type == "meta":
        return
    if index.device.type != "cpu" and not device_checks_enabled():
        return
    bad = (index < low) | (index >= high)
    if except_value is not None:
        bad &= index != except_value
    if bool(bad.any()):
        at = tuple(int(i) for i in bad.nonzero()[0])
        value = int(index[at])
        allowed = f"[{low}, {high})" + ("" if except_value is None else f" or {except_value}")
        raise ValueError(f"{name}{list(at)} = {value} is out of range: expected {allowed}")


def device_checks_enabled() -> bool:
    """PYFASTLAB_CHECK=1: raise on device-side index errors (costs a host sync per call)."""
    return os.environ.get("PYFASTLAB_CHECK", "0") == "1"
