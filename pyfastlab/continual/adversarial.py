"""PGD L-inf attacks, robust accuracy and External Adversarial Training (continual.md 4.4, 4.5)."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops._checks import check_tensor

_DEFAULT_ATTACK = dict(eps=8 / 255, step_size=2 / 255, steps=7, random_start=True, clamp=(0.0, 1.0))


def pgd_linf(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 8 / 255, step_size: float = 2 / 255,
             steps: int = 7, random_start: bool = True, clamp=(0.0, 1.0),
             generator: Optional[torch.Generator] = None) -> Tensor:
    """Projected gradient ascent of the cross-entropy inside the L-inf ball of radius eps around
    x (and the box `clamp`, None = no box). Only the input gradient is taken: the model's
    parameters and their .grad are untouched, and its train/eval mode is left as set."""
    eps, step_size = float(eps), float(step_size)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if not math.isfinite(step_size):
        raise ValueError(f"step_size must be finite, got {step_size}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    check_tensor("x", x, floating=True)
    check_tensor("y", y, dtypes=(torch.int64,), dim=1, device=x.device)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be [{x.shape[0]}] like x's batch, got shape {tuple(y.shape)}")
    lo, hi = (-math.inf, math.inf) if clamp is None else (float(clamp[0]), float(clamp[1]))

    x_clean = x.detach()
    x_adv = x_clean.clone()
    if random_start and eps > 0:
        noise_device = generator.device if generator is not None else x.device
        noise = torch.rand(x.shape, generator=generator, device=noise_device, dtype=x.dtype).to(x.device)
        x_adv += (2 * noise - 1) * eps  # not clamped: the first projection brings it back
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach()
        ops.pgd_linf_step_(x_adv, grad, x_clean, eps=eps, step_size=step_size, lo=lo, hi=hi)
    if steps == 0:  # no step projected the random start: do it without moving
        ops.pgd_linf_step_(x_adv, torch.zeros_like(x_adv), x_clean, eps=eps, step_size=0.0, lo=lo, hi=hi)
    return x_adv


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024) -> float:
    """Fraction of x the model classifies as y (model mode left as set)."""
    if x.shape[0] == 0:
        raise ValueError("accuracy of an empty set is undefined")
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return correct / x.shape[0]


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024,
                    generator: Optional[torch.Generator] = None, **attack) -> float:
    """Accuracy on pgd_linf(model in eval mode, x, y) with `attack` overriding the PGD defaults."""
    settings = {**_DEFAULT_ATTACK, **attack}
    was_training = model.training
    model.eval()
    try:
        x_adv = torch.cat([pgd_linf(model, xb, yb, generator=generator, **settings)
                           for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
        return accuracy(model, x_adv, y, batch_size=batch_size)
    finally:
        model.train(was_training)


class ExternalAdversarialTraining:
    """EAT: per task, a fresh external model is trained adversarially on that task's data alone
    and the task's adversarial examples are crafted against it. The target model is never
    attacked: the caller adds the returned examples to the target's replay training."""

    def __init__(self, model_factory: Callable[[], nn.Module], *, epochs: int = 1, lr: float = 0.1,
                 batch_size: int = 100, momentum: float = 0.0, attack: Optional[dict] = None,
                 attack_in_train_mode: bool = True, store_adversarial: bool = False,
                 generator: Optional[torch.Generator] = None):
        if not callable(model_factory):
            raise ValueError("model_factory must be a callable returning a fresh nn.Module")
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be an int >= {0 if name == 'epochs' else 1}, got {value!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {lr}")
        unknown = set(attack or {}) - set(_DEFAULT_ATTACK)
        if unknown:
            raise ValueError(f"attack has unknown keys {sorted(unknown)}; expected some of {sorted(_DEFAULT_ATTACK)}")
        self.model_factory, self.epochs, self.lr, self.batch_size = model_factory, epochs, float(lr), batch_size
        self.momentum, self.attack = float(momentum), {**_DEFAULT_ATTACK, **(attack or {})}
        self.attack_in_train_mode, self.store_adversarial = bool(attack_in_train_mode), bool(store_adversarial)
        self.generator = generator

    def generate(self, x_task: Tensor, y_task: Tensor) -> tuple[Tensor, Tensor]:
        """(x_adv, y_task): adversarial examples of every task sample, crafted against a fresh
        external model trained adversarially on (x_task, y_task)."""
        check_tensor("x_task", x_task, floating=True)
        check_tensor("y_task", y_task, dtypes=(torch.int64,), dim=1, device=x_task.device)
        if y_task.shape[0] != x_task.shape[0] or x_task.shape[0] == 0:
            raise ValueError(f"x_task and y_task must hold the same non-zero number of samples, got "
                             f"{x_task.shape[0]} and {y_task.shape[0]}")
        external = self.model_factory().to(x_task.device)
        optimizer = torch.optim.SGD(external.parameters(), lr=self.lr, momentum=self.momentum)
        for _ in range(self.epochs):
            order = torch.randperm(x_task.shape[0], generator=self.generator).to(x_task.device)
            for batch in order.split(self.batch_size):
                xb, yb = x_task[batch], y_task[batch]
                external.train(self.attack_in_train_mode)
                xa = pgd_linf(external, xb, yb, generator=self.generator, **self.attack)
                external.train()
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(external(xa), yb).backward()
                optimizer.step()
        external.eval()
        x_adv = torch.cat([pgd_linf(external, xb, yb, generator=self.generator, **self.attack)
                           for xb, yb in zip(x_task.split(self.batch_size), y_task.split(self.batch_size))])
        return x_adv, y_task.clone()
