"""Dumb teachers (MDT, arXiv 2108.05776; distill.md 4.5): a teacher of the student's own
architecture that is random (frozen at initialisation) or "matured" (trained briefly, then frozen).

Interpretation: the MDT abstract confirms KD from a random same-architecture teacher and proposes a
"matured" one, but gives no recipe. We read "maturing" as a user-chosen budget of plain
cross-entropy training on the labels (`mature`, or any `train_fn`), after which the teacher is frozen.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from ..ops._checks import check_choice

MODES = ("random", "matured")


def _reinitialise(model: nn.Module, seed: int) -> None:
    """reset_parameters() of every submodule that has one, under an RNG forked and seeded with `seed`
    (the caller's RNG state is untouched)."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def make_dumb_teacher(student: nn.Module, mode: str = "random", *, seed: int = 0,
                      train_fn: Optional[Callable[[nn.Module], object]] = None) -> nn.Module:
    """A deep copy of `student`'s architecture, re-initialised with `seed`; for mode="matured",
    `train_fn(teacher)` then trains it for the user's budget (e.g. `lambda m: mature(m, loader, 50)`).
    Returned in eval() mode with requires_grad False. The student is not modified."""
    check_choice("mode", mode, MODES)
    if not isinstance(student, nn.Module):
        raise ValueError(f"student must be an nn.Module, got {type(student).__name__}")
    if mode == "matured" and train_fn is None:
        raise ValueError("mode='matured' needs train_fn(teacher): the training budget that matures it")
    if mode == "random" and train_fn is not None:
        raise ValueError("train_fn is only used with mode='matured' (a random teacher is never trained)")
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(True)
    _reinitialise(teacher, int(seed))
    if mode == "matured":
        teacher.train()
        train_fn(teacher)
    return teacher.eval().requires_grad_(False)


def _cycle(loader: Iterable):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("loader yielded no batches")


def mature(teacher: nn.Module, loader: Iterable, steps: int, lr: float = 1e-3) -> nn.Module:
    """Plain Adam cross-entropy training for `steps` steps over (x, y) batches of `loader`
    (re-iterated when exhausted). Returns the teacher (trained in place, left in train mode)."""
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not float(lr) > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if steps == 0:
        return teacher
    optimiser = torch.optim.Adam(teacher.parameters(), lr=float(lr))
    teacher.train()
    for step, (x, y) in enumerate(_cycle(loader)):
        if step == steps:
            break
        optimiser.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(teacher(x), y).backward()
        optimiser.step()
    return teacher
