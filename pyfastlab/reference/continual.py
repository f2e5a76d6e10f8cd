"""Pure-PyTorch references for the continual ops, written from continual.md sections 3 and 5.

Two kinds of function live here: the oracles (`masked_cross_entropy`, `masked_softmax`,
`pgd_linf_step_`), which implement every option and edge case of the spec, and the "eager"
chains a user would write by hand, which the benchmarks use as the baseline.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward; multiplies the gradient by `scale` in the backward (0 selects an
    exact 0, never NaN * 0)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return (torch.zeros_like(grad) if ctx.scale == 0 else grad * ctx.scale), None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """sg_s of continual.md 5: the value of x, the gradient times scale (0: stop-gradient, but the
    result stays in the graph, so a loss with every scale at 0 still has a zero gradient)."""
    if scale == 1.0 or not x.requires_grad:
        return x
    return _ScaleGrad.apply(x, scale)


def resolve_mask(active, row_group, n_rows: int, n_classes: int, device) -> torch.Tensor:
    """The [N, C] mask of continual.md 3.1 (True = class kept); all True when active is None."""
    if active is None:
        return torch.ones(n_rows, n_classes, dtype=torch.bool, device=device)
    table = active.reshape(1, n_classes) if active.dim() == 1 else active
    if row_group is None:
        return table.expand(n_rows, n_classes) if table.shape[0] == 1 else table
    group = row_group.long()
    rows = table[group.clamp(min=0)]
    return torch.where((group == -1)[:, None], torch.ones_like(rows), rows)


def masked_logits(logits, mask, mode, mask_value, offset, old_grad_scale, new_grad_scale):
    """v of 3.2: active entries z (gradient x s_n); masked entries m (const) or sg(z)+d (detach)."""
    active_part = scale_grad(logits, new_grad_scale)
    if mode == "const":
        masked_part = torch.full_like(logits, mask_value)
    else:
        masked_part = scale_grad(logits, old_grad_scale) + offset
    return torch.where(mask, active_part, masked_part)


def masked_cross_entropy(logits, target, active=None, row_group=None, *, mode="const", mask_value=float("-inf"),
                         offset=0.0, old_grad_scale=0.0, new_grad_scale=1.0, weight=None, ignore_index=-100,
                         reduction="mean"):
    n_rows, n_classes = logits.shape
    mask = resolve_mask(active, row_group, n_rows, n_classes, logits.device)
    v = masked_logits(logits, mask, mode, mask_value, offset, old_grad_scale, new_grad_scale)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    target_active = mask.gather(1, safe_target[:, None]).squeeze(1)
    row_max = v.detach().amax(dim=1) if n_classes else torch.zeros(n_rows, device=logits.device)
    counted = valid & target_active & (row_max != float("-inf"))
    # Rows not counted are zeroed before logsumexp: a where() alone would leak NaN gradients.
    v_safe = torch.where(counted[:, None], v, torch.zeros_like(v))
    # Max-subtracted by hand, not torch.logsumexp: that returns +inf for a +inf entry, where the
    # spec (and F.cross_entropy) make the row NaN, loss and gradient.
    # (max - v_y) + log sum: max + log sum - v_y would round the log away once |max| >> log sum.
    row_max = v_safe.detach().amax(dim=1, keepdim=True)
    log_sum = torch.log(torch.exp(v_safe - row_max).sum(dim=1))
    row_loss = (row_max.squeeze(1) - v_safe.gather(1, safe_target[:, None]).squeeze(1)) + log_sum
    if weight is not None:
        row_loss = weight * row_loss
    out = torch.where(counted, row_loss, torch.zeros_like(row_loss))
    if reduction == "none":
        return out
    total = out.sum()
    if reduction == "sum":
        return total
    return total / counted.sum().clamp(min=1)


def masked_softmax(logits, active=None, row_group=None, *, mode="const", mask_value=float("-inf"), offset=0.0,
                   old_grad_scale=0.0, new_grad_scale=1.0, log=False):
    n_rows, n_classes = logits.shape
    mask = resolve_mask(active, row_group, n_rows, n_classes, logits.device)
    v = masked_logits(logits, mask, mode, mask_value, offset, old_grad_scale, new_grad_scale)
    dead = (v.detach().amax(dim=1) == float("-inf"))[:, None]  # every entry -inf
    v_safe = torch.where(dead, torch.zeros_like(v), v)
    if log:
        return torch.where(dead, torch.full_like(v, float("-inf")), torch.log_softmax(v_safe, dim=1))
    return torch.where(dead, torch.zeros_like(v), torch.softmax(v_safe, dim=1))


def pgd_linf_step_(x_adv, grad, x_clean, *, eps, step_size, lo=0.0, hi=1.0):
    """The eager chain of continual.md 3.6, in this order: ascend, project on the ball, clamp.
    sign(NaN) is NaN here, as the spec defines it (torch.sign gives 0 on some builds)."""
    t = x_adv + step_size * torch.where(torch.isnan(grad), grad, torch.sign(grad))
    u = torch.minimum(torch.maximum(t, x_clean - eps), x_clean + eps)
    return x_adv.copy_(torch.clamp(u, lo, hi))


# ---- the chains a user writes by hand (benchmark baselines) -------------------------------------

def masked_cross_entropy_eager(logits, target, active, row_group, *, mode="const"):
    """What a user writes: gather the [N, C] mask, mask the logits, call F.cross_entropy."""
    mask = resolve_mask(active, row_group, logits.shape[0], logits.shape[1], logits.device)
    if mode == "const":
        return F.cross_entropy(logits.masked_fill(~mask, float("-inf")), target)
    return F.cross_entropy(torch.where(mask, logits, logits.detach()), target)


def masked_softmax_eager(logits, active, row_group, *, log=False):
    mask = resolve_mask(active, row_group, logits.shape[0], logits.shape[1], logits.device)
    v = logits.masked_fill(~mask, float("-inf"))
    return torch.log_softmax(v, dim=1) if log else torch.softmax(v, dim=1)
