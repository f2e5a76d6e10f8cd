"""Pure-PyTorch reference of kd_loss, written from distill.md section 3.7: the oracle of the
tests (float64 on upcast inputs), and the eager chain a user writes by hand (bench baseline).

Rows are the leading dims flattened. Per row, with p = softmax(t/T), q = softmax(s/T):
l = soft_weight * T^2 * KL(p || q) + hard_weight * CE(s, y); ignored rows are out of both terms.
A zero weight switches its term off (no 0 * inf = NaN): the teacher is read only for the soft term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _kl_rows(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) per row; entries with p_c = 0 contribute 0 (teacher -inf),
    a student -inf under p_c > 0 makes it +inf."""
    log_p = torch.log_softmax(t / temperature, dim=1)
    log_q = torch.log_softmax(s / temperature, dim=1)
    p = log_p.exp()
    # where(), not p * (...): at p = 0 the difference may be -inf or NaN, and its gradient too.
    # A NaN p is kept (NaN propagates).
    positive = p != 0
    diff = torch.where(positive, log_p - log_q, torch.zeros_like(log_q))
    return (torch.where(positive, p, torch.zeros_like(p)) * diff).sum(1)


def kd_loss(student_logits, teacher_logits, target=None, *, temperature=4.0, soft_weight=1.0, hard_weight=0.0,
            ignore_index=-100, reduction="batchmean"):
    lead = student_logits.shape[:-1]
    n_classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, n_classes)
    t = teacher_logits.detach().to(s.dtype).reshape(-1, n_classes)
    n_rows = s.shape[0]
    if target is None:
        valid = torch.ones(n_rows, dtype=torch.bool, device=s.device)
        y = torch.zeros(n_rows, dtype=torch.long, device=s.device)
    else:
        y_all = target.reshape(-1).long()
        valid = y_all != ignore_index
        y = torch.where(valid, y_all, torch.zeros_like(y_all))
    # Rows whose student (or, for the soft term, teacher) is all -inf are zero; they are computed
    # on zeros so that no NaN leaks into the gradient through the where() below.
    dead = s.detach().amax(1) == float("-inf") if n_classes else torch.zeros_like(valid)
    if soft_weight != 0:
        dead = dead | (t.amax(1) == float("-inf"))
    live = valid & ~dead
    s_safe = torch.where(live[:, None], s, torch.zeros_like(s))
    t_safe = torch.where(live[:, None], t, torch.zeros_like(t))
    row = torch.zeros(n_rows, dtype=s.dtype, device=s.device)
    if soft_weight != 0:
        row = row + soft_weight * temperature**2 * _kl_rows(s_safe, t_safe, temperature)
    if hard_weight != 0:
        row = row - hard_weight * torch.log_softmax(s_safe, 1).gather(1, y[:, None]).squeeze(1)
    row = torch.where(live, row, torch.zeros_like(row))
    if reduction == "none":
        return row.reshape(lead)
    total = row.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1)


# ---- the chain a user writes by hand (benchmark baseline) ------------------------------------------

def kd_loss_eager(student_logits, teacher_logits, target, *, temperature=4.0, soft_weight=0.5, hard_weight=0.5):
    """T^2 kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True, batchmean) + cross_entropy."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    soft = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2
    return soft_weight * soft + hard_weight * F.cross_entropy(student_logits, target)
