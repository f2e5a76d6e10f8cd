"""GeneralMaskedCrossEntropy: which classes a row may compete with, as a device-resident mask.

Every policy reduces to the op's (active [G, C], row_group [N]) form, built with device ops only:
no per-row Python loop and no host sync per step (continual.md 4.1).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import ops
from ..ops._checks import check_choice, check_index_range, check_tensor

POLICIES = ("current_task", "own_task", "seen", "batch_present", "none")
ACE_MASK_RULES = ("paper", "mammoth")
_REPLAY_GROUP = -1  # the op's "every class active" row group


class GeneralMaskedCrossEntropy(nn.Module):
    """Cross-entropy whose stream rows only compete within a policy's classes (continual.md 4.1).

    Masked entries take `mask_value` (mode="const") or keep their value plus `offset` with their
    gradient scaled by `old_grad_scale` (mode="detach"). Replayed rows (`is_replay`) are unmasked
    unless `mask_replay`. Call `begin_task(t)` at the start of every task.

    policy="batch_present" (ER-ACE) keeps the stream batch's classes plus, with `ace_include_unseen`,
    the unseen ones. `ace_mask_rule` says which are unseen: "paper" (default) the classes of no task
    begun so far; "mammoth" mammoth's er_ace.py: every class from the largest label seen in a stream
    batch so far upward (that class included); each forward records its stream labels.
    """

    def __init__(self, mode: str = "const", mask_value: float = float("-inf"), offset: float = 0.0,
                 old_grad_scale: float = 0.0, new_grad_scale: float = 1.0, policy: str = "current_task", *,
                 num_classes: Optional[int] = None,
                 classes_per_task: Union[int, Sequence[Sequence[int]], None] = None,
                 mask_replay: bool = False, ignore_index: int = -100, reduction: str = "mean",
                 ace_include_unseen: bool = True, ace_mask_rule: str = "paper", backend: str = "auto"):
        super().__init__()
        check_choice("policy", policy, POLICIES)
        check_choice("ace_mask_rule", ace_mask_rule, ACE_MASK_RULES)
        if ace_mask_rule == "mammoth" and (policy != "batch_present" or not ace_include_unseen):
            raise ValueError("ace_mask_rule='mammoth' defines the unseen classes of policy='batch_present': it needs "
                             "that policy and ace_include_unseen=True")
        ops.continual._mask_scalars(mode, mask_value, offset, old_grad_scale, new_grad_scale)
        check_choice("reduction", reduction, ops.continual._REDUCTIONS)
        if policy != "none" and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int for policy={policy!r}, got {num_classes!r}")
        if policy == "own_task" and classes_per_task is None:
            raise ValueError("classes_per_task is required for policy='own_task' (an int, or a list of class lists)")
        self.mode, self.mask_value, self.offset = mode, float(mask_value), float(offset)
        self.old_grad_scale, self.new_grad_scale = float(old_grad_scale), float(new_grad_scale)
        self.policy, self.num_classes, self.mask_replay = policy, num_classes, bool(mask_replay)
        self.ignore_index, self.reduction, self.backend = int(ignore_index), reduction, backend
        self.ace_include_unseen, self.ace_mask_rule = bool(ace_include_unseen), ace_mask_rule
        self.task: Optional[int] = None
        self._task_classes = _task_class_lists(classes_per_task, num_classes) if classes_per_task is not None else None
        n = num_classes or 0
        self.register_buffer("current", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool))
        if ace_mask_rule == "mammoth":  # the labels of every stream batch so far
            self.register_buffer("labels_seen", torch.zeros(n, dtype=torch.bool))
        if self._task_classes is not None:
            table = torch.zeros(len(self._task_classes), n, dtype=torch.bool)
            class_task = torch.full((n,), _REPLAY_GROUP, dtype=torch.long)
            for t, classes in enumerate(self._task_classes):
                table[t, classes] = True
                class_task[classes] = t
            self.register_buffer("task_table", table)
            self.register_buffer("class_task", class_task)

    def extra_repr(self) -> str:
        return (f"policy={self.policy!r}, mode={self.mode!r}, mask_value={self.mask_value}, offset={self.offset}, "
                f"old_grad_scale={self.old_grad_scale}, new_grad_scale={self.new_grad_scale}, "
                f"mask_replay={self.mask_replay}")

    def begin_task(self, t: int, classes: Optional[Sequence[int]] = None) -> None:
        """Start task t: its classes (default: from classes_per_task) become current and seen.
        Under ace_mask_rule="mammoth" the classes are optional (the labels define what is seen)."""
        if not isinstance(t, int) or t < 0:
            raise ValueError(f"t must be a non-negative int, got {t!r}")
        self.task = t
        if self.policy == "none" or (self.ace_mask_rule == "mammoth" and classes is None
                                     and self._task_classes is None):
            return
        if classes is None:
            if self._task_classes is None:
                raise ValueError("begin_task needs classes= when the module has no classes_per_task")
            if t >= len(self._task_classes):
                raise ValueError(f"t={t} but classes_per_task describes {len(self._task_classes)} tasks")
            classes = self._task_classes[t]
        index = _class_index(classes, self.num_classes, "classes").to(self.current.device)
        self.current.zero_().index_fill_(0, index, True)
        self.seen.index_fill_(0, index, True)

    def forward(self, logits: Tensor, target: Tensor, *, is_replay: Optional[Tensor] = None,
                task_ids: Optional[Tensor] = None, weight: Optional[Tensor] = None) -> Tensor:
        active, row_group = self.mask_for(logits, target, is_replay=is_replay, task_ids=task_ids)
        return ops.masked_cross_entropy(
            logits, target, active, row_group, mode=self.mode, mask_value=self.mask_value, offset=self.offset,
            old_grad_scale=self.old_grad_scale, new_grad_scale=self.new_grad_scale, weight=weight,
            ignore_index=self.ignore_index, reduction=self.reduction, backend=self.backend)

    def mask_for(self, logits: Tensor, target: Tensor, *, is_replay: Optional[Tensor] = None,
                 task_ids: Optional[Tensor] = None):
        """The (active, row_group) pair the op receives for this batch (None, None: unmasked).
        Under ace_mask_rule="mammoth" it records the batch's stream labels (a repeat changes nothing)."""
        check_tensor("logits", logits, floating=True, dim=2)
        check_tensor("target", target, dtypes=(torch.int64,), dim=1, device=logits.device)
        n_rows = logits.shape[0]
        if self.policy == "none":
            return None, None
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have C={logits.shape[1]} classes but num_classes={self.num_classes}")
        if self.task is None:
            raise RuntimeError(f"call begin_task(t) before the first forward (policy={self.policy!r})")
        if self.current.device != logits.device:
            self.to(logits.device)  # once: the masks then live where the logits do
        replay = self._replay_rows(is_replay, n_rows, logits.device)

        if self.policy == "own_task":
            return self.task_table, self._own_task_groups(target, task_ids, replay)
        if self.policy == "batch_present":
            stream_targets = target if replay is None else torch.where(replay, self.ignore_index, target)
            present = self._present_classes(stream_targets)
            if self.ace_mask_rule == "mammoth":  # recorded from the first task on (same batch twice: no change)
                self.labels_seen |= present
            if self.task == 0:  # ER-ACE masks from the second task on
                return None, None
            active = present
            if self.ace_mask_rule == "mammoth":
                active = active | self._from_largest_seen_label()
            elif self.ace_include_unseen:
                active = active | ~self.seen
        else:
            active = self.current if self.policy == "current_task" else self.seen
        if replay is None:
            return active, None
        return active.unsqueeze(0), torch.where(replay, _REPLAY_GROUP, 0)

    def _replay_rows(self, is_replay: Optional[Tensor], n_rows: int, device) -> Optional[Tensor]:
        """Rows left unmasked as a bool [N] tensor, or None when every row is masked."""
        if is_replay is None or self.mask_replay:
            return None
        check_tensor("is_replay", is_replay, dtypes=(torch.bool,), dim=1, device=device)
        if is_replay.shape[0] != n_rows:
            raise ValueError(f"is_replay must be [N={n_rows}], got shape {tuple(is_replay.shape)}")
        return is_replay

    def _own_task_groups(self, target: Tensor, task_ids: Optional[Tensor], replay: Optional[Tensor]) -> Tensor:
        if task_ids is not None:
            check_tensor("task_ids", task_ids, dtypes=(torch.int32, torch.int64), dim=1, device=target.device)
            if task_ids.shape != target.shape:
                raise ValueError(f"task_ids must be [N={target.shape[0]}], got shape {tuple(task_ids.shape)}")
            groups = task_ids.long()
            # An id outside the table (-1 included) would unmask the row: refuse it (CPU, or a GPU under
            # PYFASTLAB_CHECK=1); else make it out of range, so that the op drops the row.
            n_tasks = self.task_table.shape[0]
            check_index_range("task_ids", groups, 0, n_tasks)
            groups = torch.where((groups >= 0) & (groups < n_tasks), groups, n_tasks)
        else:
            # A class outside the head maps to group -1 here; the op then reports the target itself.
            in_head = (target >= 0) & (target < self.num_classes)
            groups = torch.where(in_head, self.class_task[target.clamp(0, self.num_classes - 1)], _REPLAY_GROUP)
        if replay is not None:
            groups = torch.where(replay, _REPLAY_GROUP, groups)
        return groups

    def _from_largest_seen_label(self) -> Tensor:
        """Bool [C]: classes >= the largest label seen so far (every class before any label)."""
        index = torch.arange(self.num_classes, device=self.labels_seen.device)
        largest = torch.where(self.labels_seen, index, -1).max()
        return index >= largest

    def _present_classes(self, targets: Tensor) -> Tensor:
        """Bool [C]: classes of the non-ignored targets, by one index_fill into a spare slot."""
        in_head = (targets >= 0) & (targets < self.num_classes)
        slots = torch.where(in_head, targets, self.num_classes)
        present = torch.zeros(self.num_classes + 1, dtype=torch.bool, device=targets.device)
        return present.index_fill_(0, slots, True)[: self.num_classes]


def _class_index(classes, num_classes: int, name: str) -> Tensor:
    index = torch.as_tensor(list(classes), dtype=torch.long)
    if index.dim() != 1 or index.numel() == 0:
        raise ValueError(f"{name} must be a non-empty list of class indices")
    if bool(((index < 0) | (index >= num_classes)).any()):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got {index.tolist()}")
    return index


def _task_class_lists(classes_per_task, num_classes: Optional[int]) -> list[list[int]]:
    if isinstance(classes_per_task, bool) or num_classes is None:
        raise ValueError("classes_per_task needs num_classes, and must be an int or a list of class lists")
    if isinstance(classes_per_task, int):
        if classes_per_task < 1:
            raise ValueError(f"classes_per_task must be >= 1, got {classes_per_task}")
        n_tasks = math.ceil(num_classes / classes_per_task)
        return [list(range(t * classes_per_task, min((t + 1) * classes_per_task, num_classes)))
                for t in range(n_tasks)]
    lists = [_class_index(c, num_classes, f"classes_per_task[{t}]").tolist() for t, c in enumerate(classes_per_task)]
    flat = [c for cs in lists for c in cs]
    if len(flat) != len(set(flat)):
        raise ValueError("classes_per_task lists a class in more than one task")
    return lists
