"""Public distillation op kd_loss: soft-target KL at temperature T plus hard-label cross-entropy.

The math is distill.md section 3.7. The call validates its arguments, flattens the leading dims
into rows, picks a backend ("auto": the compiled CPU kernel for CPU tensors; CUDA, else Triton,
else the reference for CUDA tensors) and dispatches to torch.ops.pyfastlab.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..reference import kd as reference
from . import _backends, _reduction
from ._checks import check_choice, check_float, check_index_range, check_int, check_tensor
from ._kd_registry import op_for

_REDUCTIONS = {"none": _reduction.NONE, "sum": _reduction.SUM, "batchmean": _reduction.MEAN}
_INDEX_DTYPES = (torch.int32, torch.int64)


def _check_scalars(temperature, soft_weight, hard_weight, reduction):
    check_float("temperature", temperature, positive=True)
    check_float("soft_weight", soft_weight)
    check_float("hard_weight", hard_weight)
    if reduction == "mean":
        raise ValueError("reduction='mean' is not supported: kl_div's 'mean' divides by N*C, not by the "
                         "number of rows; use reduction='batchmean' (the per-row mean)")
    check_choice("reduction", reduction, _REDUCTIONS)


def _check_target(target, lead, n_classes, ignore_index):
    check_tensor("target", target, dtypes=_INDEX_DTYPES)
    if tuple(target.shape) != tuple(lead):
        raise ValueError(f"target must have the leading shape {tuple(lead)} of the logits, got {tuple(target.shape)}")
    check_index_range("target", target, 0, n_classes, except_value=ignore_index)


def kd_loss(student_logits, teacher_logits, target=None, *, temperature=4.0, soft_weight=1.0, hard_weight=0.0,
            ignore_index=-100, reduction="batchmean", backend="auto") -> Tensor:
    """soft_weight * T^2 * KL(softmax(t/T) || softmax(s/T)) + hard_weight * CE(s, target), per row
    of the logits [..., C]; rows whose target is ignore_index are out of both terms.

    reduction: "batchmean" (sum over the N_valid rows not ignored, 0 if none), "sum" or "none"
    (the leading shape). Only the student gets a gradient. A zero weight switches its term off;
    rows whose student (or, with the soft term, teacher) logits are all -inf give 0 and a zero
    gradient; NaN or +inf in a row give NaN.
    """
    check_tensor("student_logits", student_logits, floating=True)
    if student_logits.dim() == 0 or student_logits.shape[-1] == 0:
        raise ValueError(f"student_logits must be [..., C] with C >= 1, got shape {tuple(student_logits.shape)}")
    check_tensor("teacher_logits", teacher_logits, floating=True, device=student_logits.device)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits {tuple(student_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")
    _check_scalars(temperature, soft_weight, hard_weight, reduction)
    ignore_index = check_int("ignore_index", ignore_index)
    n_classes = student_logits.shape[-1]
    lead = student_logits.shape[:-1]
    if n_classes == 1 and soft_weight != 0:
        raise ValueError("student_logits has C = 1 class: the KL between one-class softmaxes is identically 0, "
                         "so soft_weight would silently do nothing; for a single output use a regression loss "
                         "(e.g. F.mse_loss on the logits), or pass soft_weight=0")
    if target is None:
        if hard_weight != 0:
            raise ValueError(f"hard_weight={hard_weight} needs a target (pass target, or hard_weight=0)")
    else:
        check_tensor("target", target, device=student_logits.device)
        _check_target(target, lead, n_classes, ignore_index)
    if soft_weight != 0 and not torch.compiler.is_compiling():
        # the kernels take soft_weight * T^2 in the logits' math type: it must not overflow there
        opmath = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
        if temperature > math.sqrt(torch.finfo(opmath).max / abs(soft_weight)):
            raise ValueError(f"temperature={temperature} is too large: soft_weight * temperature**2 overflows "
                             f"{opmath}")
    kwargs = dict(temperature=float(temperature), soft_weight=float(soft_weight), hard_weight=float(hard_weight))
    chosen = _backends.resolve(backend, student_logits.device)
    if chosen == "reference":
        return reference.kd_loss(student_logits, teacher_logits, target, ignore_index=ignore_index,
                                 reduction=reduction, **kwargs)
    s = student_logits.reshape(-1, n_classes)
    t = teacher_logits.to(s.dtype).reshape(-1, n_classes)
    y = None if target is None else target.reshape(-1).long()
    compute_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss = op_for(chosen)(s, t, y, kwargs["temperature"], kwargs["soft_weight"], kwargs["hard_weight"],
                          int(ignore_index), _REDUCTIONS[reduction], compute_grad)[0]
    return loss.reshape(lead) if reduction == "none" else loss
