"""Registrations behind the continual ops: the Triton custom ops and their autograd, and the
fake kernels (for torch.compile) of the compiled and the Triton ops.

The compiled ops' autograd lives in C++ (csrc/autograd/continual.cpp); the Triton ops' below
follows the same rule. Each forward returns the gradient for an upstream gradient of 1 beside
the loss and the backward only rescales that buffer: on CPU tensors (the interpreter) a plain
`loss.backward()` takes it as it is; on CUDA it is rescaled in place on the device (no host
sync) and its version bumped, so a second backward through the same graph is refused, never
silently wrong. While tracing, the out-of-place backward op is used.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._loader import has_compiled_ops
from ._memory import check_written_alone
from ._reduction import MEAN as _REDUCTION_MEAN, NONE as _REDUCTION_NONE


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- Triton custom ops (kernels imported on first call: importing triton is slow) -----------

def _triton_kernels():
    from pyfastlab.kernels import continual

    return continual


@torch.library.custom_op("pyfastlab::masked_cross_entropy_triton", mutates_args=())
def masked_cross_entropy_triton(
    logits: Tensor, target: Tensor, active: Optional[Tensor], row_group: Optional[Tensor], weight: Optional[Tensor],
    mode: int, mask_value: float, offset: float, old_grad_scale: float, new_grad_scale: float, ignore_index: int,
    reduction: int, compute_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _triton_kernels().masked_cross_entropy(
        logits, target, active, row_group, weight, mode, mask_value, offset, old_grad_scale, new_grad_scale,
        ignore_index, reduction, compute_grad)


@torch.library.custom_op("pyfastlab::masked_cross_entropy_backward_triton_", mutates_args=("grad",))
def masked_cross_entropy_backward_triton_(grad_loss: Tensor, grad: Tensor, counted: Tensor, counts: Tensor,
                                          reduction: int) -> None:
    _triton_kernels().masked_cross_entropy_backward_(grad_loss, grad, counted, counts, reduction)


@torch.library.custom_op("pyfastlab::masked_cross_entropy_backward_triton", mutates_args=())
def masked_cross_entropy_backward_triton(grad_loss: Tensor, grad: Tensor, counted: Tensor, counts: Tensor,
                                         reduction: int) -> Tensor:
    out = grad.clone(memory_format=torch.contiguous_format)
    _triton_kernels().masked_cross_entropy_backward_(grad_loss, out, counted, counts, reduction)
    return out


@torch.library.custom_op("pyfastlab::masked_softmax_triton", mutates_args=())
def masked_softmax_triton(logits: Tensor, active: Optional[Tensor], row_group: Optional[Tensor], mode: int,
                          mask_value: float, offset: float, old_grad_scale: float, new_grad_scale: float,
                          log: bool) -> Tensor:
    return _triton_kernels().masked_softmax(logits, active, row_group, mode, mask_value, offset, log)


@torch.library.custom_op("pyfastlab::masked_softmax_backward_triton", mutates_args=())
def masked_softmax_backward_triton(grad_out: Tensor, out: Tensor, active: Optional[Tensor],
                                   row_group: Optional[Tensor], mode: int, old_grad_scale: float,
                                   new_grad_scale: float, log: bool) -> Tensor:
    return _triton_kernels().masked_softmax_backward(grad_out, out, active, row_group, mode, old_grad_scale,
                                                     new_grad_scale, log)


@torch.library.custom_op("pyfastlab::pgd_linf_step_triton_", mutates_args=("x_adv",))
def pgd_linf_step_triton_(x_adv: Tensor, grad: Tensor, x_clean: Tensor, eps: float, step_size: float, lo: float,
                          hi: float) -> None:
    check_written_alone("x_adv", x_adv, grad=grad, x_clean=x_clean)  # also reached from compiled graphs
    _triton_kernels().pgd_linf_step_(x_adv, grad, x_clean, eps, step_size, lo, hi)


# ---- fake kernels --------------------------------------------------------------------------------

def _ce_fake(logits, target, active, row_group, weight, mode, mask_value, offset, old_grad_scale,
             new_grad_scale, ignore_index, reduction, compute_grad):
    n_rows = logits.shape[0]
    loss = logits.new_empty((n_rows,) if reduction == _REDUCTION_NONE else ())
    row_loss = logits.new_empty((n_rows,), dtype=_opmath(logits.dtype))
    grad = logits.new_empty(logits.shape if compute_grad else (0,))
    counted = logits.new_empty((n_rows,), dtype=torch.bool)
    counts = logits.new_empty((3,), dtype=torch.int64)
    return loss, row_loss, grad, counted, counts


def _ce_backward_fake_(grad_loss, grad, counted, counts, reduction):
    return None


def _ce_backward_fake(grad_loss, grad, counted, counts, reduction):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _softmax_fake(logits, active, row_group, mode, mask_value, offset, old_grad_scale, new_grad_scale, log):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _softmax_backward_fake(grad_out, out, active, row_group, mode, old_grad_scale, new_grad_scale, log):
    return torch.empty_like(out, memory_format=torch.contiguous_format)


def _pgd_fake(x_adv, grad, x_clean, eps, step_size, lo, hi):
    return None


# ---- autograd of the Triton ops --------------------------------------------------------------------

def _ce_setup_context(ctx, inputs, output):
    weight, reduction = inputs[4], inputs[11]
    _, row_loss, grad, counted, counts = output
    ctx.set_materialize_grads(False)  # else autograd fills a zero [N, C] upstream for the grad output
    ctx.reduction = reduction
    ctx.weight_dtype = weight.dtype if weight is not None else None
    ctx.save_for_backward(grad, row_loss, counted, counts)


def _upstream_scale(grad_loss: Tensor, counts: Tensor, reduction: int) -> float:
    """Host value of the buffer's multiplier (CPU tensors only: reading it costs nothing)."""
    scale = float(grad_loss)
    if reduction == _REDUCTION_MEAN:
        n_pre, n = int(counts[0]), int(counts[1])
        scale *= max(n_pre, 1) / max(n, 1)
    return scale


def _traced(t: Tensor) -> bool:
    """True under torch.compile / make_fx, where values cannot be read on the host."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    modes = torch._C._TorchDispatchModeKey
    return (torch.compiler.is_compiling() or isinstance(t, (FakeTensor, FunctionalTensor))
            or torch._C._get_dispatch_mode(modes.PROXY) is not None
            or torch._C._get_dispatch_mode(modes.FAKE) is not None)


def _ce_backward(ctx, grad_loss, *unused):
    grad, row_loss, counted, counts = ctx.saved_tensors
    grad_logits = grad_weight = None
    if grad_loss is None:  # only the non-differentiable outputs were used
        return (None,) * 13
    if ctx.needs_input_grad[0]:
        args = (grad_loss, grad, counted, counts, ctx.reduction)
        if _traced(grad):
            grad_logits = torch.ops.pyfastlab.masked_cross_entropy_backward_triton(*args)
        elif grad.device.type == "cpu":
            unit = ctx.reduction != _REDUCTION_NONE and _upstream_scale(grad_loss, counts, ctx.reduction) == 1.0
            grad_logits = grad if unit else torch.ops.pyfastlab.masked_cross_entropy_backward_triton(*args)
        else:
            torch.ops.pyfastlab.masked_cross_entropy_backward_triton_(*args)
            torch.autograd.graph.increment_version(grad)
            grad_logits = grad
    if ctx.needs_input_grad[4]:  # dL/dw_i = c_i * r_i * l_i
        upstream = grad_loss.to(row_loss.dtype)
        if ctx.reduction == _REDUCTION_MEAN:
            upstream = upstream / counts[1].clamp(min=1)
        grad_weight = torch.where(counted, upstream * row_loss, torch.zeros_like(row_loss)).to(ctx.weight_dtype)
    return (grad_logits, None, None, None, grad_weight) + (None,) * 8


def _softmax_setup_context(ctx, inputs, output):
    _, active, row_group, mode, _, _, old_grad_scale, new_grad_scale, log = inputs
    ctx.mode, ctx.old_grad_scale, ctx.new_grad_scale, ctx.log = mode, old_grad_scale, new_grad_scale, log
    ctx.save_for_backward(output, active, row_group)


def _softmax_backward(ctx, grad_out):
    out, active, row_group = ctx.saved_tensors
    dz = torch.ops.pyfastlab.masked_softmax_backward_triton(grad_out, out, active, row_group, ctx.mode,
                                                            ctx.old_grad_scale, ctx.new_grad_scale, ctx.log)
    return (dz,) + (None,) * 8


def _register_fakes(fwd, bwd_scale_, bwd_scale, softmax, softmax_backward, pgd):
    torch.library.register_fake(fwd)(_ce_fake)
    torch.library.register_fake(bwd_scale_)(_ce_backward_fake_)
    torch.library.register_fake(bwd_scale)(_ce_backward_fake)
    torch.library.register_fake(softmax)(_softmax_fake)
    torch.library.register_fake(softmax_backward)(_softmax_backward_fake)
    torch.library.register_fake(pgd)(_pgd_fake)


_register_fakes("pyfastlab::masked_cross_entropy_triton", "pyfastlab::masked_cross_entropy_backward_triton_",
                "pyfastlab::masked_cross_entropy_backward_triton", "pyfastlab::masked_softmax_triton",
                "pyfastlab::masked_softmax_backward_triton", "pyfastlab::pgd_linf_step_triton_")
torch.library.register_autograd("pyfastlab::masked_cross_entropy_triton", _ce_backward,
                                setup_context=_ce_setup_context)
torch.library.register_autograd("pyfastlab::masked_softmax_triton", _softmax_backward,
                                setup_context=_softmax_setup_context)
if has_compiled_ops():  # fake kernels for ops that never loaded would crash the import
    # (the compiled ops' autograd is registered in C++: csrc/autograd/continual.cpp)
    _register_fakes("pyfastlab::masked_cross_entropy", "pyfastlab::masked_cross_entropy_backward_",
                    "pyfastlab::masked_cross_entropy_backward", "pyfastlab::masked_softmax",
                    "pyfastlab::masked_softmax_backward", "pyfastlab::pgd_linf_step_")

# op name -> its Triton custom op (the compiled ops keep the public name)
TRITON = {
    "masked_cross_entropy": "masked_cross_entropy_triton",
    "masked_softmax": "masked_softmax_triton",
    "pgd_linf_step_": "pgd_linf_step_triton_",
}


def op_for(name: str, backend: str):
    """The torch.ops entry of op `name` for a compiled ("cpu"/"cuda") or "triton" backend."""
    return getattr(torch.ops.pyfastlab, TRITON[name] if backend == "triton" else name)
