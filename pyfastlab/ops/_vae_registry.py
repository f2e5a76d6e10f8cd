"""Registrations behind expm, symmetric_expm, ipe_transform and composite_symmetry: the Triton custom
ops, the fake kernels (for torch.compile) of the compiled and the Triton ops, and one autograd rule
per op shared by both (each backward is its own registered op; vae.md 3.0).

Saved for the backward: expm its input (the backward recomputes the forward's products with the
same m and s); symmetric_expm Q and lam; ipe_transform z, the factors, their products, Q and lam;
composite_symmetry its inputs and A = W G. Double backward is not supported: the backward ops have
no autograd of their own, and asking for it raises.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._loader import has_compiled_ops


def _triton():
    from pyfastlab.kernels import vae_ops  # importing triton is slow: on first call only

    return vae_ops


# ---- Triton custom ops -----------------------------------------------------------------------
@torch.library.custom_op("pyfastlab::expm_forward_triton", mutates_args=())
def expm_forward_triton(a: Tensor) -> Tensor:
    return _triton().expm_forward(a)


@torch.library.custom_op("pyfastlab::expm_backward_triton", mutates_args=())
def expm_backward_triton(grad: Tensor, a: Tensor) -> Tensor:
    return _triton().expm_backward(grad, a)


@torch.library.custom_op("pyfastlab::symmetric_expm_forward_triton", mutates_args=())
def symmetric_expm_forward_triton(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _triton().symmetric_expm_forward(w)


@torch.library.custom_op("pyfastlab::symmetric_expm_backward_triton", mutates_args=())
def symmetric_expm_backward_triton(grad: Tensor, q: Tensor, lam: Tensor) -> Tensor:
    return _triton().symmetric_expm_backward(grad, q, lam)


@torch.library.custom_op("pyfastlab::ipe_transform_forward_triton", mutates_args=())
def ipe_transform_forward_triton(z: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _triton().ipe_transform_forward(z, w)


@torch.library.custom_op("pyfastlab::ipe_transform_backward_triton", mutates_args=())
def ipe_transform_backward_triton(grad_z_hat: Tensor, grad_logdet: Tensor, z: Tensor, x: Tensor, e: Tensor, q: Tensor,
                                  lam: Tensor, need_z: bool, need_w: bool) -> tuple[Tensor, Tensor]:
    return _triton().ipe_transform_backward(grad_z_hat, grad_logdet, z, x, e, q, lam, need_z, need_w)


@torch.library.custom_op("pyfastlab::composite_symmetry_forward_triton", mutates_args=())
def composite_symmetry_forward_triton(codebook: Tensor, weights: Tensor, z1: Tensor,
                                      z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _triton().composite_symmetry_forward(codebook, weights, z1, z2)


@torch.library.custom_op("pyfastlab::composite_symmetry_backward_triton", mutates_args=())
def composite_symmetry_backward_triton(grad_y1: Tensor, grad_y2: Tensor, codebook: Tensor, weights: Tensor, z1: Tensor,
                                       z2: Tensor, a: Tensor, need_codebook: bool, need_weights: bool, need_z1: bool,
                                       need_z2: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _triton().composite_symmetry_backward(grad_y1, grad_y2, codebook, weights, z1, z2, a, need_codebook,
                                                 need_weights, need_z1, need_z2)


# ---- fake kernels ----------------------------------------------------------------------------
def _empty_or(x: Tensor, need: bool) -> Tensor:
    return x.new_empty(x.shape if need else (0,))


def _expm_forward_fake(a):
    return torch.empty_like(a)


def _expm_backward_fake(grad, a):
    return torch.empty_like(a)


def _symmetric_forward_fake(w):
    return torch.empty_like(w), torch.empty_like(w), w.new_empty(w.shape[:-1])


def _symmetric_backward_fake(grad, q, lam):
    return torch.empty_like(q)


def _ipe_forward_fake(z, w):
    U, K, n = w.shape[0], w.shape[1], w.shape[-1]
    return (z.new_empty((U, z.shape[0], n)), w.new_empty((U,)), torch.empty_like(w), w.new_empty((U, n, n)),
            torch.empty_like(w), w.new_empty((U, K, n)))


def _ipe_backward_fake(grad_z_hat, grad_logdet, z, x, e, q, lam, need_z, need_w):
    return _empty_or(z, need_z), _empty_or(x, need_w)


def _composite_forward_fake(codebook, weights, z1, z2):
    n = codebook.shape[-1]
    return torch.empty_like(z1), torch.empty_like(z2), z1.new_empty((weights.shape[0], n, n))


def _composite_backward_fake(grad_y1, grad_y2, codebook, weights, z1, z2, a, need_codebook, need_weights, need_z1,
                             need_z2):
    return (_empty_or(codebook, need_codebook), _empty_or(weights, need_weights), _empty_or(z1, need_z1),
            _empty_or(z2, need_z2))


_FAKES = {
    "expm_forward": _expm_forward_fake,
    "expm_backward": _expm_backward_fake,
    "symmetric_expm_forward": _symmetric_forward_fake,
    "symmetric_expm_backward": _symmetric_backward_fake,
    "ipe_transform_forward": _ipe_forward_fake,
    "ipe_transform_backward": _ipe_backward_fake,
    "composite_symmetry_forward": _composite_forward_fake,
    "composite_symmetry_backward": _composite_backward_fake,
}


# ---- autograd --------------------------------------------------------------------------------
def _suffix(ctx) -> str:
    return "_triton" if ctx.triton else ""


def _backward_op(ctx, name):
    return getattr(torch.ops.pyfastlab, name + _suffix(ctx))


def _expm_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _expm_backward(ctx, grad):
    (a,) = ctx.saved_tensors
    return _backward_op(ctx, "expm_backward")(grad.contiguous(), a)


def _symmetric_setup(ctx, inputs, output):
    _, q, lam = output
    ctx.mark_non_differentiable(q, lam)
    ctx.save_for_backward(q, lam)


def _symmetric_backward(ctx, grad, _gq, _glam):
    q, lam = ctx.saved_tensors
    return _backward_op(ctx, "symmetric_expm_backward")(grad.contiguous(), q, lam)


def _ipe_setup(ctx, inputs, output):
    z, _ = inputs
    _, _, x, e, q, lam = output
    ctx.mark_non_differentiable(x, e, q, lam)
    ctx.save_for_backward(z, x, e, q, lam)


def _ipe_backward(ctx, grad_z_hat, grad_logdet, *_):
    need_z, need_w = ctx.needs_input_grad[:2]
    if not (need_z or need_w):
        return None, None
    z, x, e, q, lam = ctx.saved_tensors
    grad_z_hat = torch.zeros((x.shape[0], z.shape[0], z.shape[1]), dtype=z.dtype, device=z.device) \
        if grad_z_hat is None else grad_z_hat.contiguous()
    grad_logdet = torch.zeros(x.shape[0], dtype=z.dtype, device=z.device) if grad_logdet is None else grad_logdet
    gz, gw = _backward_op(ctx, "ipe_transform_backward")(grad_z_hat, grad_logdet.contiguous(), z, x, e, q, lam, need_z,
                                                         need_w)
    return (gz if need_z else None), (gw if need_w else None)


def _composite_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[2])
    ctx.save_for_backward(*inputs, output[2])


def _composite_backward(ctx, grad_y1, grad_y2, _ga):
    needs = ctx.needs_input_grad[:4]
    if not any(needs):
        return None, None, None, None
    codebook, weights, z1, z2, a = ctx.saved_tensors
    grad_y1 = torch.zeros_like(z1) if grad_y1 is None else grad_y1.contiguous()
    grad_y2 = torch.zeros_like(z2) if grad_y2 is None else grad_y2.contiguous()
    grads = _backward_op(ctx, "composite_symmetry_backward")(grad_y1, grad_y2, codebook, weights, z1, z2, a, *needs)
    return tuple(g if need else None for g, need in zip(grads, needs))


_AUTOGRAD = {
    "expm_forward": (_expm_backward, _expm_setup),
    "symmetric_expm_forward": (_symmetric_backward, _symmetric_setup),
    "ipe_transform_forward": (_ipe_backward, _ipe_setup),
    "composite_symmetry_forward": (_composite_backward, _composite_setup),
}


def _no_double_backward(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"pyfastlab::{op}: double backward (differentiating a gradient of this op) is not "
                           f"supported")

    return backward


def _register(suffix: str) -> None:
    for name, fake in _FAKES.items():
        torch.library.register_fake(f"pyfastlab::{name}{suffix}")(fake)
        if name.endswith("_backward"):  # a clear error instead of a silently wrong second derivative
            torch.library.register_autograd(f"pyfastlab::{name}{suffix}", _no_double_backward(name))
    for name, (backward, setup) in _AUTOGRAD.items():
        def setup_with_backend(ctx, inputs, output, _setup=setup):
            ctx.triton = suffix == "_triton"
            _setup(ctx, inputs, output)

        torch.library.register_autograd(f"pyfastlab::{name}{suffix}", backward, setup_context=setup_with_backend)


_register("_triton")
if has_compiled_ops():  # fake kernels for ops that never loaded would crash the import
    _register("")


def op_for(name: str, backend: str):
    """The torch.ops entry of op `name` for a compiled ("cpu"/"cuda") or "triton" backend."""
    return getattr(torch.ops.pyfastlab, f"{name}_triton" if backend == "triton" else name)
