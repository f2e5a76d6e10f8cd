"""What every Triton kernel module shares: whether Triton runs under its interpreter, the opmath
dtype, and float scalars passed as the bit patterns of their opmath value (a Python float would
reach the kernel as float32, inexact for float64 inputs)."""
from __future__ import annotations

import os
import struct

import torch
import triton
import triton.language as tl

try:
    INTERPRET = bool(triton.knobs.runtime.interpret)
except AttributeError:  # older triton: no knobs module
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def bits(x: float, dtype: torch.dtype) -> int:
    """Bit pattern (signed int) of x rounded to the opmath type of dtype: exact for float64."""
    if opmath(dtype) == torch.float64:
        return struct.unpack("<q", struct.pack("<d", float(x)))[0]
    return struct.unpack("<i", struct.pack("<f", float(x)))[0]


@triton.jit
def decode(bits, ACC: tl.constexpr):
    """Opmath scalar from its integer bit pattern (see bits)."""
    if ACC == tl.float64:
        return bits.to(tl.int64).to(tl.float64, bitcast=True)
    else:
        return bits.to(tl.int32).to(tl.float32, bitcast=True)
