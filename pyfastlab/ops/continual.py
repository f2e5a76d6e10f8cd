"""Public continual-learning ops: general masked softmax / cross-entropy and the PGD step.

The math is continual.md section 3. Each call validates its arguments, picks a backend
("auto": the compiled CPU kernel for CPU tensors; CUDA, else Triton, else the reference for
CUDA tensors) and dispatches to torch.ops.pyfastlab.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..reference import continual as reference
from . import _backends
from ._checks import check_bool, check_choice, check_float, check_index_range, check_int, check_tensor
from ._continual_registry import op_for
from ._memory import check_written_alone
from ._reduction import CODES as _REDUCTIONS

_MODES = {"const": 0, "detach": 1}
_INDEX_DTYPES = (torch.int32, torch.int64)


def _canonical_mask(active, row_group, logits: Tensor):
    """(active as [G, C] bool, row_group as int64 [N]) per the table of 3.1 (kernels make them
    contiguous themselves)."""
    n_rows, n_classes = logits.shape
    if active is None:
        if row_group is not None:
            raise ValueError("row_group was given without active: pass the [G, C] mask table too")
        return None, None
    check_tensor("active", active, dtypes=(torch.bool,), device=logits.device)
    if active.dim() not in (1, 2) or active.shape[-1] != n_classes:
        raise ValueError(f"active must be [C], [N, C] or [G, C] with C={n_classes}, got shape {tuple(active.shape)}")
    table = active.reshape(1, n_classes) if active.dim() == 1 else active
    if row_group is None:
        if active.dim() == 2 and table.shape[0] != n_rows:
            raise ValueError(f"active has G={table.shape[0]} rows but logits have N={n_rows}: pass row_group")
        return table, None
    check_tensor("row_group", row_group, dtypes=_INDEX_DTYPES, dim=1, device=logits.device)
    if row_group.shape[0] != n_rows:
        raise ValueError(f"row_group must be [N={n_rows}], got shape {tuple(row_group.shape)}")
    return table, (row_group if row_group.dtype == torch.int64 else row_group.long())


def _check_logits(logits):
    check_tensor("logits", logits, floating=True, dim=2)
    if logits.shape[1] == 0:
        raise ValueError("logits must have at least one class (C = 0)")


def _mask_scalars(mode, mask_value, offset, old_grad_scale, new_grad_scale) -> tuple:
    """The four float arguments of the schema, checked."""
    check_choice("mode", mode, _MODES)
    return (check_float("mask_value", mask_value, allow_neg_inf=True), check_float("offset", offset),
            check_float("old_grad_scale", old_grad_scale), check_float("new_grad_scale", new_grad_scale))


def _check_indices(table, groups, target=None, n_classes=0, ignore_index=None):
    """Host-side index checks for the backends whose kernels drop bad rows instead of raising (the
    CPU kernel raises itself): always for CPU tensors, on a GPU under PYFASTLAB_CHECK=1."""
    if target is not None:
        check_index_range("target", target, 0, n_classes, except_value=ignore_index)
    if groups is not None:
        check_index_range("row_group", groups, -1, table.shape[0])


def masked_cross_entropy(logits, target, active=None, row_group=None, *, mode="const", mask_value=float("-inf"),
                         offset=0.0, old_grad_scale=0.0, new_grad_scale=1.0, weight=None, ignore_index=-100,
                         reduction="mean", backend="auto") -> Tensor:
    """Cross-entropy over the masked logits v with per-entry gradient control.

    Masked entries take `mask_value` (mode="const", no gradient) or keep their value plus
    `offset` with the gradient scaled by `old_grad_scale` (mode="detach"); active entries'
    gradient is scaled by `new_grad_scale`. Rows whose target is ignore_index or masked, and
    rows that are all -inf, are not counted: zero loss, zero gradient, out of the mean.

    A target outside [0, C) other than ignore_index, or a row_group outside [-1, G), raises
    ValueError for CPU tensors (on a GPU under PYFASTLAB_CHECK=1); otherwise the CUDA and Triton
    kernels never read it and leave that row out like an ignored one.
    """
    _check_logits(logits)
    check_tensor("target", target, dtypes=(torch.int64,), dim=1, device=logits.device)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must be [N={logits.shape[0]}], got shape {tuple(target.shape)}")
    if weight is not None:
        check_tensor("weight", weight, floating=True, dim=1, device=logits.device)
        if weight.shape[0] != logits.shape[0]:
            raise ValueError(f"weight must be [N={logits.shape[0]}], got shape {tuple(weight.shape)}")
    scalars = _mask_scalars(mode, mask_value, offset, old_grad_scale, new_grad_scale)
    ignore_index = check_int("ignore_index", ignore_index)
    check_choice("reduction", reduction, _REDUCTIONS)
    table, groups = _canonical_mask(active, row_group, logits)
    chosen = _backends.resolve(backend, logits.device)
    if chosen != "cpu":
        _check_indices(table, groups, target, logits.shape[1], ignore_index)
    if chosen == "reference":
        return reference.masked_cross_entropy(
            logits, target, active, row_group, mode=mode, mask_value=mask_value, offset=offset,
            old_grad_scale=old_grad_scale, new_grad_scale=new_grad_scale, weight=weight, ignore_index=ignore_index,
            reduction=reduction)
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    return op_for("masked_cross_entropy", chosen)(logits, target, table, groups, weight, _MODES[mode], *scalars,
                                                  ignore_index, _REDUCTIONS[reduction], compute_grad)[0]


def masked_softmax(logits, active=None, row_group=None, *, mode="const", mask_value=float("-inf"), offset=0.0,
                   old_grad_scale=0.0, new_grad_scale=1.0, log=False, backend="auto") -> Tensor:
    """softmax(v) (log_softmax with log=True) over the masked logits, same gradient rule as
    masked_cross_entropy. Rows that are all -inf return 0 (log: -inf) with zero gradient."""
    _check_logits(logits)
    scalars = _mask_scalars(mode, mask_value, offset, old_grad_scale, new_grad_scale)
    check_bool("log", log)
    table, groups = _canonical_mask(active, row_group, logits)
    chosen = _backends.resolve(backend, logits.device)
    if chosen != "cpu":
        _check_indices(table, groups)
    if chosen == "reference":
        return reference.masked_softmax(logits, active, row_group, mode=mode, mask_value=mask_value, offset=offset,
                                        old_grad_scale=old_grad_scale, new_grad_scale=new_grad_scale, log=log)
    return op_for("masked_softmax", chosen)(logits, table, groups, _MODES[mode], *scalars, log)


def pgd_linf_step_(x_adv, grad, x_clean, *, eps, step_size, lo=0.0, hi=1.0, backend="auto") -> Tensor:
    """One PGD L-inf step in place: x_adv <- clamp(clamp(x_adv + step_size * sign(grad),
    x_clean - eps, x_clean + eps), lo, hi). Returns x_adv."""
    check_tensor("x_adv", x_adv, floating=True)
    for name, t in (("grad", grad), ("x_clean", x_clean)):
        check_tensor(name, t, dtypes=(x_adv.dtype,), device=x_adv.device)
        if t.shape != x_adv.shape:
            raise ValueError(f"{name} must have the shape of x_adv {tuple(x_adv.shape)}, got {tuple(t.shape)}")
    if x_adv.requires_grad:
        raise ValueError("x_adv must not require grad: pgd_linf_step_ writes it in place and is not differentiable")
    if not torch.compiler.is_compiling():
        check_written_alone("x_adv", x_adv, grad=grad, x_clean=x_clean)
    else:  # a trace sees only tensor identity; views that overlap are caught by the kernels themselves
        for name, t in (("grad", grad), ("x_clean", x_clean)):
            if t is x_adv:
                raise ValueError(f"x_adv must not share memory with {name} (it is written in place)")
    eps = check_float("eps", eps, minimum=0.0)
    step_size = check_float("step_size", step_size)
    lo = check_float("lo", lo, allow_inf=True)
    hi = check_float("hi", hi, allow_inf=True)
    if isinstance(lo, float) and isinstance(hi, float) and lo > hi:
        raise ValueError(f"lo must be <= hi (use +-inf for no box), got lo={lo}, hi={hi}")
    chosen = _backends.resolve(backend, x_adv.device)
    if chosen == "reference":
        return reference.pgd_linf_step_(x_adv, grad, x_clean, eps=eps, step_size=step_size, lo=lo, hi=hi)
    op_for("pgd_linf_step_", chosen)(x_adv, grad, x_clean, eps, step_size, lo, hi)
    return x_adv
