"""Registrations behind pair_mix, mixed_logits_cross_entropy and uniformity_loss: the Triton custom
ops, the autograd of the compiled and the Triton ops (one formula each: the backward calls the
registered backward op of the same backend), and the fake kernels for torch.compile.

Rules: the forward saves its inputs (and the row lse), never the mixed tensors; backward ops
return only what autograd asks for (grad_lam is an empty tensor when lam needs no gradient).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._loader import has_compiled_ops
from ._reduction import NONE as _NONE


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- Triton twins ---------------------------------------------------------------------------------

@torch.library.custom_op("pyfastlab::pair_mix_triton", mutates_args=())
def pair_mix_triton(x: Tensor, partner: Tensor, lam: Optional[Tensor], lam_scalar: float) -> Tensor:
    from pyfastlab.kernels import mixup  # importing triton is slow: on first call only

    return mixup.pair_mix_forward(x, partner, lam, lam_scalar)


@torch.library.custom_op("pyfastlab::pair_mix_backward_triton", mutates_args=())
def pair_mix_backward_triton(grad: Tensor, x: Tensor, partner: Tensor, lam: Optional[Tensor], lam_scalar: float,
                             lam_grad: bool) -> tuple[Tensor, Tensor]:
    from pyfastlab.kernels import mixup

    return mixup.pair_mix_backward(grad, x, partner, lam, lam_scalar, lam_grad)


@torch.library.custom_op("pyfastlab::mixed_logits_cross_entropy_triton", mutates_args=())
def mixed_logits_cross_entropy_triton(logits: Tensor, partner: Tensor, lam: Optional[Tensor], lam_scalar: float,
                                      target: Tensor, reduction: int) -> tuple[Tensor, Tensor]:
    from pyfastlab.kernels import mixup

    return mixup.mixed_ce_forward(logits, partner, lam, lam_scalar, target, reduction)


@torch.library.custom_op("pyfastlab::mixed_logits_cross_entropy_backward_triton", mutates_args=())
def mixed_logits_cross_entropy_backward_triton(grad_loss: Tensor, logits: Tensor, partner: Tensor,
                                               lam: Optional[Tensor], lam_scalar: float, target: Tensor, lse: Tensor,
                                               reduction: int, lam_grad: bool) -> tuple[Tensor, Tensor]:
    from pyfastlab.kernels import mixup

    return mixup.mixed_ce_backward(grad_loss, logits, partner, lam, lam_scalar, target, lse, reduction, lam_grad)


@torch.library.custom_op("pyfastlab::uniformity_loss_triton", mutates_args=())
def uniformity_loss_triton(x: Tensor, t: float) -> tuple[Tensor, Tensor]:
    from pyfastlab.kernels import mixup

    return mixup.uniformity_forward(x, t)


@torch.library.custom_op("pyfastlab::uniformity_loss_backward_triton", mutates_args=())
def uniformity_loss_backward_triton(grad: Tensor, x: Tensor, t: float, lse: Tensor) -> Tensor:
    from pyfastlab.kernels import mixup

    return mixup.uniformity_backward(grad, x, t, lse)


# ---- fakes ----------------------------------------------------------------------------------------

def _grad_lam_fake(x, lam, lam_grad):
    return lam.new_empty(lam.shape) if (lam_grad and lam is not None) else x.new_empty((0,))


def _pair_mix_fake(x, partner, lam, lam_scalar):
    return x.new_empty(x.shape)


def _pair_mix_backward_fake(grad, x, partner, lam, lam_scalar, lam_grad):
    return x.new_empty(x.shape), _grad_lam_fake(x, lam, lam_grad)


def _mce_fake(logits, partner, lam, lam_scalar, target, reduction):
    loss = logits.new_empty((logits.shape[0],) if reduction == _NONE else ())
    return loss, logits.new_empty((logits.shape[0],), dtype=_opmath(logits.dtype))


def _mce_backward_fake(grad_loss, logits, partner, lam, lam_scalar, target, lse, reduction, lam_grad):
    return logits.new_empty(logits.shape), _grad_lam_fake(logits, lam, lam_grad)


def _uniformity_fake(x, t):
    return x.new_empty(()), x.new_empty((), dtype=_opmath(x.dtype))


def _uniformity_backward_fake(grad, x, t, lse):
    return x.new_empty(x.shape)


# ---- autograd -------------------------------------------------------------------------------------

def _backward_op(name: str, triton: bool):
    return getattr(torch.ops.pyfastlab, f"{name}_backward_triton" if triton else f"{name}_backward")


def _make_pair_mix_autograd(triton: bool):
    def setup_context(ctx, inputs, output):
        x, partner, lam, lam_scalar = inputs
        ctx.lam_scalar = lam_scalar
        ctx.save_for_backward(x, partner, lam)

    def backward(ctx, grad):
        x, partner, lam = ctx.saved_tensors
        lam_grad = lam is not None and ctx.needs_input_grad[2]
        grad_x, grad_lam = _backward_op("pair_mix", triton)(grad, x, partner, lam, ctx.lam_scalar, lam_grad)
        return (grad_x if ctx.needs_input_grad[0] else None), None, (grad_lam if lam_grad else None), None

    return backward, setup_context


def _make_mce_autograd(triton: bool):
    def setup_context(ctx, inputs, output):
        logits, partner, lam, lam_scalar, target, reduction = inputs
        ctx.lam_scalar, ctx.reduction = lam_scalar, reduction
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, partner, lam, target, output[1])

    def backward(ctx, grad_loss, _grad_lse):
        logits, partner, lam, target, lse = ctx.saved_tensors
        if grad_loss is None:
            return (None,) * 6
        lam_grad = lam is not None and ctx.needs_input_grad[2]
        grad_z, grad_lam = _backward_op("mixed_logits_cross_entropy", triton)(
            grad_loss, logits, partner, lam, ctx.lam_scalar, target, lse, ctx.reduction, lam_grad)
        return (grad_z if ctx.needs_input_grad[0] else None), None, (grad_lam if lam_grad else None), None, None, None

    return backward, setup_context


def _make_uniformity_autograd(triton: bool):
    def setup_context(ctx, inputs, output):
        x, t = inputs
        ctx.t = t
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, output[1])

    def backward(ctx, grad, _grad_lse):
        x, lse = ctx.saved_tensors
        if grad is None or not ctx.needs_input_grad[0]:
            return None, None
        return _backward_op("uniformity_loss", triton)(grad, x, ctx.t, lse), None

    return backward, setup_context


_FAKES = {"pair_mix": _pair_mix_fake, "pair_mix_backward": _pair_mix_backward_fake,
          "mixed_logits_cross_entropy": _mce_fake, "mixed_logits_cross_entropy_backward": _mce_backward_fake,
          "uniformity_loss": _uniformity_fake, "uniformity_loss_backward": _uniformity_backward_fake}
_AUTOGRAD = {"pair_mix": _make_pair_mix_autograd, "mixed_logits_cross_entropy": _make_mce_autograd,
             "uniformity_loss": _make_uniformity_autograd}


def _register(suffix: str, triton: bool):
    for name, fake in _FAKES.items():
        torch.library.register_fake(f"pyfastlab::{name}{suffix}")(fake)
    for name, make in _AUTOGRAD.items():
        backward, setup_context = make(triton)
        torch.library.register_autograd(f"pyfastlab::{name}{suffix}", backward, setup_context=setup_context)


_register("_triton", True)
if has_compiled_ops():  # fake kernels for ops that never loaded would crash the import
    _register("", False)


def op_for(name: str, backend: str):
    """The torch.ops entry of op `name` for a compiled ("cpu"/"cuda") or "triton" backend."""
    return getattr(torch.ops.pyfastlab, f"{name}_triton" if backend == "triton" else name)
