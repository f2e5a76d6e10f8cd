"""Exact memory-overlap tests for ops that write a tensor in place.

torch's own tests answer "too hard" for interleaved strides; these compare the element offsets
themselves, so disjoint halves (or interleaved rows) of one buffer pass and any shared element fails.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _element_offsets(t: Tensor) -> Tensor:
    """Storage offset (in elements) of every element of t, on the CPU."""
    offsets = torch.tensor(t.storage_offset(), dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride()):
        offsets = offsets.unsqueeze(-1) + torch.arange(size, dtype=torch.int64) * stride
    return offsets.reshape(-1)


def _span(t: Tensor) -> tuple[int, int]:
    """[first, last] byte of storage that a non-empty t touches (torch strides are >= 0)."""
    last = t.storage_offset() + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.storage_offset() * t.element_size(), (last + 1) * t.element_size() - 1


def shares_elements(a: Tensor, b: Tensor) -> bool:
    """Whether a and b have at least one element at the same memory address."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    if a1 < b0 or b1 < a0:
        return False
    if a.element_size() != b.element_size():
        return True  # overlapping byte ranges of different element sizes: assume shared
    return bool(torch.isin(_element_offsets(a), _element_offsets(b)).any())


def has_internal_overlap(t: Tensor) -> bool:
    """Whether two elements of t share an address (expanded or self-overlapping strides)."""
    status = torch._debug_has_internal_overlap(t)  # 0 no, 1 yes, 2 too hard to tell from strides
    if status != 2:
        return status == 1
    return _element_offsets(t).unique().numel() < t.numel()


def check_written_alone(name: str, written: Tensor, **read: Tensor) -> None:
    """Raise ValueError if the tensor written in place overlaps itself or any tensor it is read with."""
    if has_internal_overlap(written):
        raise ValueError(f"{name} has elements that share memory (e.g. an expanded tensor): it is written in place, "
                         f"pass a tensor that owns its memory (.clone())")
    for other, t in read.items():
        if shares_elements(written, t):
            raise ValueError(f"{name} must not share memory with {other} (it is written in place)")
