"""Soft-target KD as a module, and the KD weight schedule of the dumb-teacher recipe (distill.md 4.5)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .. import ops
from ..ops._checks import check_choice, check_finite
from ..ops.kd import _check_scalars

SCHEDULES = ("constant", "linear", "step")


class KDLoss(nn.Module):
    """soft_weight * T^2 KL(softmax(t/T) || softmax(s/T)) + hard_weight * CE(s, target), through
    ops.kd_loss (fused kernels; the teacher gets no gradient). The weights are plain attributes, so a
    KDSchedule may set them each step (`schedule.apply(loss, step)`)."""

    def __init__(self, temperature: float = 4.0, soft_weight: float = 1.0, hard_weight: float = 0.0,
                 ignore_index: int = -100, reduction: str = "batchmean"):
        super().__init__()
        _check_scalars(temperature, soft_weight, hard_weight, reduction)
        self.temperature = float(temperature)
        self.soft_weight, self.hard_weight = float(soft_weight), float(hard_weight)
        self.ignore_index, self.reduction = int(ignore_index), reduction

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Optional[Tensor] = None) -> Tensor:
        return ops.kd_loss(student_logits, teacher_logits.detach(), target, temperature=self.temperature,
                           soft_weight=self.soft_weight, hard_weight=self.hard_weight,
                           ignore_index=self.ignore_index, reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, soft_weight={self.soft_weight}, hard_weight={self.hard_weight}, "
                f"reduction={self.reduction!r}")


class KDSchedule:
    """The KD weight lambda(t) at step (or epoch) t:
    "constant": weight; "linear": weight * clip((t - start) / ramp, 0, 1); "step": weight * [t >= start].
    Use soft_weight = lambda(t), hard_weight = 1 - lambda(t). A late start or a slow ramp is our reading
    (interpretation) of MDT's "conservative" transfer: the student first learns from the labels, then
    the teacher's boundary is blended in without overwriting what it learned."""

    def __init__(self, kind: str = "constant", weight: float = 0.5, start: int = 0, ramp: int = 1):
        check_choice("kind", kind, SCHEDULES)
        check_finite("weight", weight)
        if not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"weight must lie in [0, 1] (soft = lambda, hard = 1 - lambda), got {weight}")
        if int(start) < 0 or int(start) != start:
            raise ValueError(f"start must be an int >= 0, got {start!r}")
        if int(ramp) < 1 or int(ramp) != ramp:
            raise ValueError(f"ramp must be an int >= 1, got {ramp!r}")
        self.kind, self.weight, self.start, self.ramp = kind, float(weight), int(start), int(ramp)

    def __call__(self, t: int) -> float:
        if self.kind == "constant":
            return self.weight
        if self.kind == "step":
            return self.weight if t >= self.start else 0.0
        return self.weight * min(max((t - self.start) / self.ramp, 0.0), 1.0)

    def weights(self, t: int) -> tuple[float, float]:
        """(soft_weight, hard_weight) = (lambda(t), 1 - lambda(t))."""
        lam = self(t)
        return lam, 1.0 - lam

    def apply(self, loss: KDLoss, t: int) -> KDLoss:
        loss.soft_weight, loss.hard_weight = self.weights(t)
        return loss

    def __repr__(self) -> str:
        return f"KDSchedule(kind={self.kind!r}, weight={self.weight}, start={self.start}, ramp={self.ramp})"
