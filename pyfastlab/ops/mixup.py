"""Public mixup ops: pair_mix (rows mixed with a partner row of the same batch),
mixed_logits_cross_entropy (the cross-entropy of mixed logits without storing them) and
uniformity_loss (the Wang & Isola uniformity, tiled, without an [N, N] buffer).

The math is mixup.md section 3. Each call validates its arguments, picks a backend ("auto": the
compiled CPU kernel for CPU tensors; CUDA, else Triton, else the reference for CUDA tensors) and
dispatches to torch.ops.pyfastlab. lam outside [0, 1] is allowed (extrapolation, spec 3.1).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..reference import mixup as reference
from . import _backends
from ._checks import check_choice, check_float, check_index_range, check_tensor
from ._mixup_registry import op_for
from ._reduction import CODES as _REDUCTIONS


def _check_partner(partner, n_rows: int, device):
    check_tensor("partner", partner, dtypes=(torch.int64,), dim=1, device=device)
    if partner.shape[0] != n_rows:
        raise ValueError(f"partner must be [B={n_rows}] (one partner row per row), got shape {tuple(partner.shape)}")
    check_index_range("partner", partner, 0, n_rows)


def _split_lam(lam, n_rows: int, device):
    """(lam tensor or None, lam_scalar) as the schema takes them."""
    if isinstance(lam, torch.Tensor):
        check_tensor("lam", lam, floating=True, device=device)
        if not (lam.dim() == 0 or (lam.dim() == 1 and lam.shape[0] == n_rows)):
            raise ValueError(f"lam must be a number, a 0-dim tensor or [B={n_rows}], got shape {tuple(lam.shape)}")
        return lam, 0.0
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise ValueError(f"lam must be a float or a floating tensor, got {type(lam).__name__}")
    return None, float(lam)


def pair_mix(x, partner, lam, *, backend="auto") -> Tensor:
    """out[i] = lam[i] * x[i] + (1 - lam[i]) * x[partner[i]] for x [B, ...] (features [B, D] or
    images [B, C, H, W]: each sample is mixed as a whole), partner int64 [B] (may repeat) and lam a
    float, 0-dim or [B]; exactly x[i] where lam is 1 and x[partner[i]] where it is 0.
    Differentiable w.r.t. x and a tensor lam (gradient summed for a 0-dim lam).

    An out-of-range partner raises ValueError for CPU tensors (and on a GPU under PYFASTLAB_CHECK=1);
    otherwise the CUDA and Triton kernels never read it and give that row NaN."""
    check_tensor("x", x, floating=True)
    if x.dim() == 0:
        raise ValueError("x must be [B, ...] (one sample per row), got a 0-dim tensor")
    chosen = _backends.resolve(backend, x.device)
    _check_partner(partner, x.shape[0], x.device)
    lam_t, lam_s = _split_lam(lam, x.shape[0], x.device)
    rows = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # the kernels mix rows of [B, D]
    if chosen == "reference":
        out = reference.pair_mix(rows, partner, lam if lam_t is not None else lam_s)
    else:
        out = op_for("pair_mix", chosen)(rows.contiguous(), partner, lam_t, lam_s)
    return out.reshape(x.shape)


def mixed_logits_cross_entropy(logits, partner, lam, target, *, reduction="mean", backend="auto") -> Tensor:
    """loss_i = CE(lam_i * logits[i] + (1 - lam_i) * logits[partner[i]], target[i]) without the
    mixed logits ever being stored; equals the classifier's CE on pair_mix(features) for a linear
    head. The gradient w.r.t. logits accumulates both roles of each row (anchor and partner).

    An out-of-range partner or target raises ValueError for CPU tensors (and on a GPU under
    PYFASTLAB_CHECK=1); otherwise the CUDA and Triton kernels never read it and give that row NaN."""
    check_tensor("logits", logits, floating=True, dim=2)
    if logits.shape[1] == 0:
        raise ValueError("logits must have at least one class (C = 0)")
    chosen = _backends.resolve(backend, logits.device)
    _check_partner(partner, logits.shape[0], logits.device)
    lam_t, lam_s = _split_lam(lam, logits.shape[0], logits.device)
    check_tensor("target", target, dtypes=(torch.int64,), dim=1, device=logits.device)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must be [B={logits.shape[0]}], got shape {tuple(target.shape)}")
    check_index_range("target", target, 0, logits.shape[1])
    check_choice("reduction", reduction, _REDUCTIONS)
    if chosen == "reference":
        return reference.mixed_logits_cross_entropy(logits, partner, lam if lam_t is not None else lam_s, target,
                                                    reduction)
    loss, _ = op_for("mixed_logits_cross_entropy", chosen)(logits.contiguous(), partner, lam_t, lam_s, target,
                                                            _REDUCTIONS[reduction])
    return loss


def uniformity_loss(x, *, t=2.0, backend="auto") -> Tensor:
    """log(mean over pairs i < j of exp(-t * ||x_i - x_j||^2)) for x [N, D], N >= 2, as a 0-dim
    tensor in x.dtype; tiled with a streaming log-sum-exp, never an [N, N] buffer; differentiable.
    Rows are used as given (alignment/uniformity metrics normalise first)."""
    check_tensor("x", x, floating=True, dim=2)
    if x.shape[0] < 2:
        raise ValueError(f"x must have at least 2 rows (uniformity_loss averages over pairs), got N = {x.shape[0]}")
    t = check_float("t", t, minimum=0.0)
    chosen = _backends.resolve(backend, x.device)
    if chosen == "reference":
        return reference.uniformity_loss(x, t)
    loss, _ = op_for("uniformity_loss", chosen)(x.contiguous(), t)
    return loss
