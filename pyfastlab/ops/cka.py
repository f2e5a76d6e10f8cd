"""Public CKA ops of the distillation family: linear_cka and cka_matrix (distill.md 3.1-3.6).

Each call validates its arguments (shape-based: no host sync), computes in
torch.result_type(x, y), picks a backend ("auto": the compiled CPU kernel for CPU tensors; CUDA,
else Triton, else the reference for CUDA tensors) and dispatches to torch.ops.pyfastlab.
A degenerate side (all rows equal: beta == 0) gives NaN for that element and a zero gradient.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor

from ..reference import cka as reference
from . import _backends
from ._checks import check_bool, check_tensor
from ._cka_registry import _opmath, op_for

Layers = Union[Tensor, Sequence[Tensor]]


def _min_rows(debiased: bool) -> int:
    return 4 if debiased else 2


def _check_rows(name: str, n: int, debiased: bool) -> None:
    check_bool("debiased", debiased)
    if n < _min_rows(debiased):
        why = " (the debiased estimator divides by n - 3)" if debiased else ""
        raise ValueError(f"{name} needs n >= {_min_rows(debiased)} rows{why}, got n = {n}")


def linear_cka(x: Tensor, y: Tensor, *, debiased: bool = False, backend: str = "auto") -> Tensor:
    """Linear CKA of x [..., n, p] and y [..., n, q] per leading index -> [...].

    debiased=False: plug-in HSIC (Kornblith 2019), in [0, 1]; debiased=True: unbiased HSIC of
    U-centred Grams (needs n >= 4), in [-1, 1]. Differentiable w.r.t. x and y.
    """
    check_tensor("x", x, floating=True)
    check_tensor("y", y, floating=True, device=x.device)
    for name, t in (("x", x), ("y", y)):
        if t.dim() < 2:
            raise ValueError(f"{name} must be [..., n, d] (at least 2-D), got shape {tuple(t.shape)}")
        if t.shape[-1] == 0:
            raise ValueError(f"{name} has no features (d = 0), shape {tuple(t.shape)}")
    if y.shape[:-2] != x.shape[:-2]:
        raise ValueError(f"y must have the leading dims of x {tuple(x.shape[:-2])}, got {tuple(y.shape[:-2])}")
    n = x.shape[-2]
    if y.shape[-2] != n:
        raise ValueError(f"y must have n = {n} rows like x, got {y.shape[-2]}")
    _check_rows("x", n, debiased)
    dtype = torch.promote_types(x.dtype, y.dtype)  # = result_type for tensors of rank >= 2
    x, y = x.to(dtype), y.to(dtype)
    chosen = _backends.resolve(backend, x.device)
    if chosen == "reference":  # half types in float32, as the kernels (the Gram sums overflow float16)
        return reference.linear_cka(x.to(_opmath(dtype)), y.to(_opmath(dtype)), debiased=debiased).to(dtype)
    batch = x.shape[:-2]
    save = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    cka = op_for("linear_cka", chosen)(x.reshape(-1, n, x.shape[-1]), y.reshape(-1, n, y.shape[-1]),
                                      bool(debiased), save)[0]
    return reference.exact_pair(cka.reshape(batch), n, debiased)


def _layers(name: str, layers: Layers) -> list[Tensor]:
    """Members of xs / ys, each flattened to [n, -1]. One [L, n, ...] tensor may have L = 0; an
    empty sequence raises (an empty layer list is almost always a bug upstream)."""
    if isinstance(layers, Tensor):
        if layers.dim() < 3:
            raise ValueError(f"{name} as one tensor must be [L, n, d], got shape {tuple(layers.shape)}")
        members = list(layers.unbind(0))
    else:
        try:
            members = list(layers)
        except TypeError:
            raise ValueError(f"{name} must be a sequence of [n, d] tensors or one [L, n, d] tensor, "
                             f"got {type(layers).__name__}") from None
        if not members:
            raise ValueError(f"{name} is an empty sequence: pass at least one layer")
    for i, t in enumerate(members):
        check_tensor(f"{name}[{i}]", t, floating=True)
        if t.dim() < 2 or math.prod(t.shape[1:]) == 0:
            raise ValueError(f"{name}[{i}] must be [n, d] with d > 0 (more dims are flattened), "
                             f"got shape {tuple(t.shape)}")
    return [t.reshape(t.shape[0], math.prod(t.shape[1:])) for t in members]


def cka_matrix(xs: Layers, ys: Layers, *, debiased: bool = False, backend: str = "auto") -> Tensor:
    """[L, M] with entry (l, m) = linear_cka(xs[l], ys[m]), from stacked normalised Grams (each
    layer's Gram is computed once; one GEMM for all pairs). Layers may differ in width; every
    member has the same n. An empty sequence raises ValueError; a [0, n, d] tensor gives [0, M]."""
    xs_, ys_ = _layers("xs", xs), _layers("ys", ys)
    members = [("xs", i, t) for i, t in enumerate(xs_)] + [("ys", i, t) for i, t in enumerate(ys_)]
    if not members:
        raise ValueError("xs and ys are both empty")
    first = members[0][2]
    for name, i, t in members:
        if t.device != first.device:
            raise ValueError(f"{name}[{i}] is on {t.device}, expected {first.device}")
        if t.shape[0] != first.shape[0]:
            raise ValueError(f"{name}[{i}] has n = {t.shape[0]} rows, expected {first.shape[0]} (all layers share n)")
    dtype = first.dtype
    for _, _, t in members[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not xs_ or not ys_:
        return torch.empty(len(xs_), len(ys_), dtype=dtype, device=first.device)
    _check_rows(f"{members[0][0]}[0]", first.shape[0], debiased)
    xs_, ys_ = [t.to(dtype) for t in xs_], [t.to(dtype) for t in ys_]
    chosen = _backends.resolve(backend, first.device)
    if chosen == "reference":
        return reference.cka_matrix([t.to(_opmath(dtype)) for t in xs_], [t.to(_opmath(dtype)) for t in ys_],
                                    debiased=debiased).to(dtype)
    cka = op_for("cka_matrix", chosen)(xs_, ys_, bool(debiased))[0]
    return reference.exact_pair(cka, first.shape[0], debiased)
