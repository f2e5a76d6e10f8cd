"""Registrations behind the CKA ops: the Triton custom ops and their autograd, and the fake
kernels (for torch.compile) of the compiled and the Triton ops.

The compiled ops' autograd lives in C++ (csrc/autograd/cka.cpp); the Triton ops' below follows
the same rule: the forward saves the stats and the normalised projected Grams, the backward is a
registered op of its own.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._loader import has_compiled_ops


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def use_gram_form(n, p, q, debiased: bool) -> bool:
    """distill.md 3.2: Gram form iff n(p+q) <= p^2+q^2+pq, always for the debiased estimator."""
    return debiased or n * (p + q) <= p * p + q * q + p * q


# ---- Triton custom ops (kernels imported on first call: importing triton is slow) -----------

def _triton_kernels():
    from pyfastlab.kernels import cka

    return cka


@torch.library.custom_op("pyfastlab::linear_cka_forward_triton", mutates_args=())
def linear_cka_forward_triton(x: Tensor, y: Tensor, debiased: bool, save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _triton_kernels().linear_cka_forward(x, y, debiased, save)


@torch.library.custom_op("pyfastlab::linear_cka_backward_triton", mutates_args=())
def linear_cka_backward_triton(grad: Tensor, x: Tensor, y: Tensor, stats: Tensor, u_hat: Tensor, v_hat: Tensor,
                               need_x: bool, need_y: bool) -> tuple[Tensor, Tensor]:
    return _triton_kernels().linear_cka_backward(grad, x, y, stats, u_hat, v_hat, need_x, need_y)


@torch.library.custom_op("pyfastlab::cka_matrix_forward_triton", mutates_args=())
def cka_matrix_forward_triton(xs: list[Tensor], ys: list[Tensor],
                              debiased: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _triton_kernels().cka_matrix_forward(xs, ys, debiased)


@torch.library.custom_op("pyfastlab::cka_matrix_backward_triton", mutates_args=())
def cka_matrix_backward_triton(grad: Tensor, xs: list[Tensor], ys: list[Tensor], cka: Tensor, gx: Tensor, gy: Tensor,
                               beta_x: Tensor, beta_y: Tensor, need_x: bool,
                               need_y: bool) -> tuple[list[Tensor], list[Tensor]]:
    return _triton_kernels().cka_matrix_backward(grad, xs, ys, cka, gx, gy, beta_x, beta_y, need_x, need_y)


# ---- fake kernels --------------------------------------------------------------------------------

def _forward_fake(x, y, debiased, save):
    batch, n, p = x.shape
    opmath = _opmath(x.dtype)
    saved = (batch, n, n) if save and use_gram_form(n, p, y.shape[2], debiased) else (0,)
    return (x.new_empty((batch,)), x.new_empty((batch, 3), dtype=opmath), x.new_empty(saved, dtype=opmath),
            x.new_empty(saved, dtype=opmath))


def _backward_fake(grad, x, y, stats, u_hat, v_hat, need_x, need_y):
    return (x.new_empty(x.shape if need_x else (0,)), y.new_empty(y.shape if need_y else (0,)))


def _matrix_fake(xs, ys, debiased):
    n, opmath = xs[0].shape[0], _opmath(xs[0].dtype)
    lx, ly = len(xs), len(ys)
    return (xs[0].new_empty((lx, ly)), xs[0].new_empty((lx, n, n), dtype=opmath),
            xs[0].new_empty((ly, n, n), dtype=opmath), xs[0].new_empty((lx,), dtype=opmath),
            xs[0].new_empty((ly,), dtype=opmath))


def _matrix_backward_fake(grad, xs, ys, cka, gx, gy, beta_x, beta_y, need_x, need_y):
    like = lambda layers, need: [t.new_empty(t.shape) for t in layers] if need else []
    return like(xs, need_x), like(ys, need_y)


# ---- autograd of the Triton ops --------------------------------------------------------------------

def _forward_setup_context(ctx, inputs, output):
    x, y = inputs[0], inputs[1]
    _, stats, u_hat, v_hat = output
    ctx.set_materialize_grads(False)  # else autograd fills zero [B, n, n] upstreams for the saved Grams
    ctx.save_for_backward(x, y, stats, u_hat, v_hat)


def _forward_backward(ctx, grad, *unused):
    if grad is None:
        return None, None, None, None
    x, y, stats, u_hat, v_hat = ctx.saved_tensors
    need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx, gy = torch.ops.pyfastlab.linear_cka_backward_triton(grad, x, y, stats, u_hat, v_hat, need_x, need_y)
    return (gx if need_x else None), (gy if need_y else None), None, None


def _matrix_setup_context(ctx, inputs, output):
    xs, ys, _ = inputs
    cka, gx, gy, beta_x, beta_y = output
    ctx.set_materialize_grads(False)
    ctx.layers_x = len(xs)
    ctx.save_for_backward(*xs, *ys, cka, gx, gy, beta_x, beta_y)


def _matrix_backward(ctx, grad, *unused):
    saved = ctx.saved_tensors
    lx = ctx.layers_x
    xs, ys, stats = list(saved[:lx]), list(saved[lx:-5]), saved[-5:]
    need_x, need_y = any(ctx.needs_input_grad[0]), any(ctx.needs_input_grad[1])
    none_x, none_y = [None] * len(xs), [None] * len(ys)  # the structure of the inputs
    if grad is None or not (need_x or need_y):
        return none_x, none_y, None
    gxs, gys = torch.ops.pyfastlab.cka_matrix_backward_triton(grad, xs, ys, *stats, need_x, need_y)
    return (list(gxs) if need_x else none_x), (list(gys) if need_y else none_y), None


def _register_fakes(forward, backward, matrix, matrix_backward):
    torch.library.register_fake(forward)(_forward_fake)
    torch.library.register_fake(backward)(_backward_fake)
    torch.library.register_fake(matrix)(_matrix_fake)
    torch.library.register_fake(matrix_backward)(_matrix_backward_fake)


_register_fakes("pyfastlab::linear_cka_forward_triton", "pyfastlab::linear_cka_backward_triton",
                "pyfastlab::cka_matrix_forward_triton", "pyfastlab::cka_matrix_backward_triton")
torch.library.register_autograd("pyfastlab::linear_cka_forward_triton", _forward_backward,
                                setup_context=_forward_setup_context)
torch.library.register_autograd("pyfastlab::cka_matrix_forward_triton", _matrix_backward,
                                setup_context=_matrix_setup_context)
if has_compiled_ops():  # fake kernels for ops that never loaded would crash the import
    # (the compiled ops' autograd is registered in C++: csrc/autograd/cka.cpp)
    _register_fakes("pyfastlab::linear_cka_forward", "pyfastlab::linear_cka_backward",
                    "pyfastlab::cka_matrix_forward", "pyfastlab::cka_matrix_backward")

# op name -> (compiled forward op, Triton forward op)
_OPS = {"linear_cka": ("linear_cka_forward", "linear_cka_forward_triton"),
        "cka_matrix": ("cka_matrix_forward", "cka_matrix_forward_triton")}


def op_for(name: str, backend: str):
    """The torch.ops entry of op `name`'s forward for a compiled ("cpu"/"cuda") or "triton" backend."""
    compiled, triton = _OPS[name]
    return getattr(torch.ops.pyfastlab, triton if backend == "triton" else compiled)
