"""Public continual-learning ops: general masked softmax / cross-entropy and the PGD step.

The math is continual.md section 3. Each call validates its arguments, picks a backend
("auto": the compiled CPU kernel for CPU tensors; CUDA, else Triton, else the reference for
CUDA tensors) and dispatches to torch.ops.pyfastlab.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..reference import continual as reference
from . import _backends
from ._checks import check_choice, check_finite, check_tensor, device_checks_enabled
from ._continual_registry import op_for

_MODES = {"const": 0, "detach": 1}
_REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
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


def _check_mask_scalars(mode, mask_value, offset, old_grad_scale, new_grad_scale):
    check_choice("mode", mode, _MODES)
    check_finite("mask_value", mask_value, allow_neg_inf=True)
    check_finite("offset", offset)
    check_finite("old_grad_scale", old_grad_scale)
    check_finite("new_grad_scale", new_grad_scale)


def _raise_on_device_flags(counts: Tensor, logits: Tensor, active: Tensor | None):
    bad = int(counts[2])
    if bad:
        groups = 0 if active is None else active.shape[0]
        raise ValueError(f"target/row_group: {bad} row(s) have a target outside [0, {logits.shape[1]}) "
                         f"(other than ignore_index) or a row_group outside [-1, {groups})")


def masked_cross_entropy(logits, target, active=None, row_group=None, *, mode="const", mask_value=float("-inf"),
                         offset=0.0, old_grad_scale=0.0, new_grad_scale=1.0, weight=None, ignore_index=-100,
                         reduction="mean", backend="auto") -> Tensor:
    """Cross-entropy over the masked logits v of continual.md 3.2 with per-entry gradient control.

    Masked entries take `mask_value` (mode="const", no gradient) or keep their value plus
    `offset` with the gradient scaled by `old_grad_scale` (mode="detach"); active entries'
    gradient is scaled by `new_grad_scale`. Rows whose target is ignore_index or masked, and
    rows that are all -inf, are not counted: zero loss, zero gradient, out of the mean.
    """
    _check_logits(logits)
    check_tensor("target", target, dtypes=(torch.int64,), dim=1, device=logits.device)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must be [N={logits.shape[0]}], got shape {tuple(target.shape)}")
    if weight is not None:
        check_tensor("weight", weight, floating=True, dim=1, device=logits.device)
        if weight.shape[0] != logits.shape[0]:
            raise ValueError(f"weight must be [N={logits.shape[0]}], got shape {tuple(weight.shape)}")
    _check_mask_scalars(mode, mask_value, offset, old_grad_scale, new_grad_scale)
    check_choice("reduction", reduction, _REDUCTIONS)
    table, groups = _canonical_mask(active, row_group, logits)
    chosen = _backends.resolve(backend, logits.device)
    if chosen == "reference":
        return reference.masked_cross_entropy(
            logits, target, active, row_group, mode=mode, mask_value=mask_value, offset=offset,
            old_grad_scale=old_grad_scale, new_grad_scale=new_grad_scale, weight=weight, ignore_index=ignore_index,
            reduction=reduction)
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, _, _, _, counts = op_for("masked_cross_entropy", chosen)(
        logits, target, table, groups, weight, _MODES[mode], float(mask_value), float(offset),
        float(old_grad_scale), float(new_grad_scale), int(ignore_index), _REDUCTIONS[reduction], compute_grad)
    if chosen != "cpu" and device_checks_enabled():
        _raise_on_device_flags(counts, logits, table)
    return loss


def masked_softmax(logits, active=None, row_group=None, *, mode="const", mask_value=float("-inf"), offset=0.0,
                   old_grad_scale=0.0, new_grad_scale=1.0, log=False, backend="auto") -> Tensor:
    """softmax(v) (log_softmax with log=True) over the masked logits, same gradient rule as
    masked_cross_entropy. Rows that are all -inf return 0 (log: -inf) with zero gradient."""
    _check_logits(logits)
    _check_mask_scalars(mode, mask_value, offset, old_grad_scale, new_grad_scale)
    table, groups = _canonical_mask(active, row_group, logits)
    chosen = _backends.resolve(backend, logits.device)
    if chosen == "reference":
        return reference.masked_softmax(logits, active, row_group, mode=mode, mask_value=mask_value, offset=offset,
                                        old_grad_scale=old_grad_scale, new_grad_scale=new_grad_scale, log=bool(log))
    if groups is not None and chosen != "cpu" and device_checks_enabled():
        if bool(((groups < -1) | (groups >= table.shape[0])).any()):
            raise ValueError(f"row_group has values outside [-1, {table.shape[0]})")
    return op_for("masked_softmax", chosen)(logits, table, groups, _MODES[mode], float(mask_value), float(offset),
                                            float(old_grad_scale), float(new_grad_scale), bool(log))


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    return a.numel() > 0 and b.numel() > 0


def pgd_linf_step_(x_adv, grad, x_clean, *, eps, step_size, lo=0.0, hi=1.0, backend="auto") -> Tensor:
    """One PGD L-inf step in place: x_adv <- clamp(clamp(x_adv + step_size * sign(grad),
    x_clean - eps, x_clean + eps), lo, hi). Returns x_adv."""
    check_tensor("x_adv", x_adv, floating=True)
    for name, t in (("grad", grad), ("x_clean", x_clean)):
        check_tensor(name, t, dtypes=(x_adv.dtype,), device=x_adv.device)
        if t.shape != x_adv.shape:
            raise ValueError(f"{name} must have the shape of x_adv {tuple(x_adv.shape)}, got {tuple(t.shape)}")
        if not torch.compiler.is_compiling() and _shares_memory(x_adv, t):
            raise ValueError(f"x_adv must not share memory with {name} (it is written in place)")
    if x_adv.requires_grad:
        raise ValueError("x_adv must not require grad: pgd_linf_step_ writes it in place and is not differentiable")
    eps, step_size, lo, hi = float(eps), float(step_size), float(lo), float(hi)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    check_finite("step_size", step_size)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"lo must be <= hi (use +-inf for no box), got lo={lo}, hi={hi}")
    chosen = _backends.resolve(backend, x_adv.device)
    if chosen == "reference":
        return reference.pgd_linf_step_(x_adv, grad, x_clean, eps=eps, step_size=step_size, lo=lo, hi=hi)
    op_for("pgd_linf_step_", chosen)(x_adv, grad, x_clean, eps, step_size, lo, hi)
    return x_adv
