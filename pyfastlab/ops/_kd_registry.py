"""Registrations behind kd_loss: the Triton custom op and its autograd, and the fake kernels (for
torch.compile) of the compiled and the Triton ops.

The compiled op's autograd lives in C++ (csrc/autograd/kd_loss.cpp); the Triton op's below follows
the same rule: the forward returns the gradient of each row's loss for a row upstream of 1, and the
backward scales it by the upstream gradient into a new tensor, never in place, so a second backward
through the same graph is right. Only the student gets a gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._loader import has_compiled_ops
from ._reduction import MEAN as _REDUCTION_BATCHMEAN, NONE as _REDUCTION_NONE


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("pyfastlab::kd_loss_forward_triton", mutates_args=())
def kd_loss_forward_triton(student: Tensor, teacher: Tensor, target: Optional[Tensor], temperature: float,
                           soft_weight: float, hard_weight: float, ignore_index: int, reduction: int,
                           compute_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from pyfastlab.kernels import kd_loss  # importing triton is slow: on first call only

    return kd_loss.kd_loss_forward(student, teacher, target, temperature, soft_weight, hard_weight, ignore_index,
                                   reduction, compute_grad)


def _forward_fake(student, teacher, target, temperature, soft_weight, hard_weight, ignore_index, reduction,
                  compute_grad):
    n_rows = student.shape[0]
    loss = student.new_empty((n_rows,) if reduction == _REDUCTION_NONE else ())
    grad = student.new_empty(student.shape if compute_grad else (0,))
    valid = student.new_empty((n_rows,), dtype=torch.bool)
    n_valid = student.new_empty((), dtype=torch.int64)
    return loss, grad, valid, n_valid


def _backward_fake(grad_loss, grad, valid, n_valid, reduction):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def scale_gradient(grad_loss: Tensor, grad: Tensor, valid: Tensor, n_valid: Tensor, reduction: int) -> Tensor:
    """The backward of the Triton op, as csrc/autograd/kd_loss.cpp's kd_loss_backward: row scales
    v_i * (upstream_i | upstream | upstream / max(N_valid, 1)), then one multiply over [N, C]."""
    scale = grad_loss.to(_opmath(grad.dtype))
    if reduction == _REDUCTION_NONE:
        scale = scale.reshape(grad.shape[0])
    elif reduction == _REDUCTION_BATCHMEAN:
        scale = scale / n_valid.clamp(min=1).to(scale.dtype)
    scale = torch.where(valid, scale, torch.zeros((), dtype=scale.dtype, device=scale.device))
    out = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
    return torch.mul(grad, scale[:, None], out=out)


def _setup_context(ctx, inputs, output):
    _, grad, valid, n_valid = output
    ctx.set_materialize_grads(False)  # else autograd fills a zero [N, C] upstream for `grad`
    ctx.reduction = inputs[7]
    ctx.save_for_backward(grad, valid, n_valid)


def _backward(ctx, grad_loss, *unused):
    grad, valid, n_valid = ctx.saved_tensors
    grad_student = None
    if grad_loss is not None and ctx.needs_input_grad[0]:
        grad_student = scale_gradient(grad_loss, grad, valid, n_valid, ctx.reduction)
    return (grad_student,) + (None,) * 8  # the teacher gets None, even if it requires grad


torch.library.register_fake("pyfastlab::kd_loss_forward_triton")(_forward_fake)
torch.library.register_autograd("pyfastlab::kd_loss_forward_triton", _backward, setup_context=_setup_context)
if has_compiled_ops():  # fake kernels for ops that never loaded would crash the import
    torch.library.register_fake("pyfastlab::kd_loss_forward")(_forward_fake)
    torch.library.register_fake("pyfastlab::kd_loss_backward")(_backward_fake)


def op_for(backend: str):
    """The torch.ops entry of kd_loss_forward for a compiled ("cpu"/"cuda") or "triton" backend."""
    return torch.ops.pyfastlab.kd_loss_forward_triton if backend == "triton" else torch.ops.pyfastlab.kd_loss_forward
