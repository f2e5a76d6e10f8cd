"""Public VAE-family ops: expm (batched matrix exponential), symmetric_expm, ipe_transform (MIPE's
invertible partial-equivariant units) and composite_symmetry (CFASL's composite group action).

The math is vae.md sections 3.0-3.4. Each call validates its arguments (messages name the
argument), computes half types in float32 and casts back, picks a backend ("auto": the compiled CPU
kernel for CPU tensors; CUDA, else Triton, else the reference for CUDA tensors) and dispatches to
torch.ops.pyfastlab. Non-finite policy (3.0): a matrix with a NaN/inf entry gives an all-NaN output
(no host sync); with PYFASTLAB_CHECK=1 such inputs, and finite inputs whose exponential overflows,
raise instead (one host sync per call).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..reference import vae_ops as reference
from . import _backends
from ._checks import device_checks_enabled
from ._vae_registry import op_for

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(name: str, x, *, dim=None, min_dim=None, device=None, dtype=None) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if dim is not None and x.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(x.shape)}")
    if min_dim is not None and x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions [..., n, n], got shape {tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device}, expected {device} (the device of the first argument)")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} must have the dtype of the first argument ({dtype}), got {x.dtype}")


def _check_square(name: str, x: Tensor) -> None:
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} must be square matrices [..., n, n], got shape {tuple(x.shape)}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _checks_on(x: Tensor) -> bool:
    return device_checks_enabled() and not torch.compiler.is_compiling() and x.device.type != "meta"


def _check_finite_input(name: str, x: Tensor) -> None:
    """PYFASTLAB_CHECK=1 only (host sync): raise on NaN/inf entries instead of returning NaN."""
    if _checks_on(x) and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf entries (with PYFASTLAB_CHECK=0 the affected matrices "
                         f"give all-NaN outputs)")


def _check_no_overflow(op: str, out: Tensor, what: str) -> None:
    """PYFASTLAB_CHECK=1 only: a finite input whose result is not finite overflowed its dtype."""
    if _checks_on(out) and out.numel() and not bool(torch.isfinite(out).all()):
        raise ValueError(f"{op}: the result overflows {out.dtype} ({what}); scale the input down or use float64")


def expm(a, *, backend="auto") -> Tensor:
    """Matrix exponential of a [..., n, n] (general square matrices), batched: one scaling-and-
    squaring Taylor program per matrix with its own degree and scaling. Differentiable: the backward
    is the Frechet derivative L_exp(a^T, grad) by the adjoint of the same products."""
    _check("a", a, min_dim=2)
    _check_square("a", a)
    _check_finite_input("a", a)
    chosen = _backends.resolve(backend, a.device)
    if chosen == "reference":  # half types in float32, as the kernels (matrix_exp is wrong in half)
        return reference.expm(a.to(_compute_dtype(a.dtype))).to(a.dtype)
    x = a.to(_compute_dtype(a.dtype))
    out = op_for("expm_forward", chosen)(x.contiguous())
    _check_no_overflow("expm", out, "||a||_1 too large for the exponential")
    return out.to(a.dtype)


def symmetric_expm(w, *, backend="auto") -> Tensor:
    """expm((w + w^T) / 2) for w [..., n, n] through the symmetric eigendecomposition: symmetric
    positive definite, det = exp(trace w). Exact backward (Daleckii-Krein, stable at repeated
    eigenvalues)."""
    _check("w", w, min_dim=2)
    _check_square("w", w)
    _check_finite_input("w", w)
    chosen = _backends.resolve(backend, w.device)
    if chosen == "reference":
        return reference.symmetric_expm(w.to(_compute_dtype(w.dtype))).to(w.dtype)
    x = w.to(_compute_dtype(w.dtype))
    out = op_for("symmetric_expm_forward", chosen)(x.contiguous())[0]
    _check_no_overflow("symmetric_expm", out, "an eigenvalue of sym(w) is too large")
    return out.to(w.dtype)


def ipe_transform(z, w, *, backend="auto") -> tuple[Tensor, Tensor]:
    """MIPE's IPE units: z [B, n], w [U, K, n, n]. z_hat[u] = z @ E_u with E_u = expm(S_u1) ...
    expm(S_uK), S_uk = (w_uk + w_uk^T)/2; logdet[u] = sum_k trace(S_uk). Returns (z_hat [U, B, n],
    logdet [U]), differentiable w.r.t. z and w."""
    _check("z", z, dim=2)
    _check("w", w, dim=4, device=z.device, dtype=z.dtype)
    _check_square("w", w)
    if z.shape[1] != w.shape[-1]:
        raise ValueError(f"z must be [B, n] with n = {w.shape[-1]} (the size of w's matrices), got shape "
                         f"{tuple(z.shape)}")
    _check_finite_input("z", z)
    _check_finite_input("w", w)
    chosen = _backends.resolve(backend, z.device)
    dtype = _compute_dtype(z.dtype)
    if chosen == "reference":
        return tuple(t.to(z.dtype) for t in reference.ipe_transform(z.to(dtype), w.to(dtype)))
    z_hat, logdet = op_for("ipe_transform_forward", chosen)(z.to(dtype).contiguous(), w.to(dtype).contiguous())[:2]
    _check_no_overflow("ipe_transform", z_hat, "an eigenvalue of sym(w) is too large")
    return z_hat.to(z.dtype), logdet.to(z.dtype)


def composite_symmetry(codebook, weights, z1, z2, *, backend="auto") -> tuple[Tensor, Tensor]:
    """CFASL's composite symmetry: codebook [K, n, n], weights [P, K], z1, z2 [P, n]. A_p =
    sum_k weights[p, k] codebook[k]; returns (z1_p expm(A_p), z2_p expm(-A_p)), each [P, n],
    differentiable w.r.t. all four inputs; never forms [P, K, n, n]."""
    _check("codebook", codebook, dim=3)
    _check_square("codebook", codebook)
    K, n = codebook.shape[0], codebook.shape[-1]
    _check("weights", weights, dim=2, device=codebook.device, dtype=codebook.dtype)
    if weights.shape[1] != K:
        raise ValueError(f"weights must be [P, K] with K = {K} (the codebook size), got shape {tuple(weights.shape)}")
    P = weights.shape[0]
    for name, z in (("z1", z1), ("z2", z2)):
        _check(name, z, dim=2, device=codebook.device, dtype=codebook.dtype)
        if tuple(z.shape) != (P, n):
            raise ValueError(f"{name} must be [P, n] = [{P}, {n}] (P from weights, n from codebook), got shape "
                             f"{tuple(z.shape)}")
    for name, t in (("codebook", codebook), ("weights", weights), ("z1", z1), ("z2", z2)):
        _check_finite_input(name, t)
    chosen = _backends.resolve(backend, codebook.device)
    dtype = _compute_dtype(codebook.dtype)
    inputs = [t.to(dtype) for t in (codebook, weights, z1, z2)]
    if chosen == "reference":
        return tuple(t.to(codebook.dtype) for t in reference.composite_symmetry(*inputs))
    y1, y2 = op_for("composite_symmetry_forward", chosen)(*[t.contiguous() for t in inputs])[:2]
    _check_no_overflow("composite_symmetry", torch.stack([y1, y2]),
                       "||A_p||_1 too large for the exponential, A_p = weights @ codebook: scale codebook or weights "
                       "down")
    return y1.to(codebook.dtype), y2.to(codebook.dtype)
