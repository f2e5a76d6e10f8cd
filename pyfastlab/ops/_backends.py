"""Which backend runs an op: availability of each, and the choice behind backend="auto"."""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from .._loader import C_LOAD_ERROR, _C, has_compiled_ops, has_cuda_kernels

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None if `backend` can run on tensors of `device`, else why not."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if not has_compiled_ops():
            return f"the compiled extension did not load ({C_LOAD_ERROR})"
        if device.type != "cpu":
            return f"backend='cpu' needs CPU tensors, got {device.type} tensors"
        return None
    if backend == "cuda":
        if not has_compiled_ops():
            return f"the compiled extension did not load ({C_LOAD_ERROR})"
        if not has_cuda_kernels():
            return f"pyfastlab was built without CUDA (torch {_C.torch_build_version} at build time, or nvcc missing)"
        if device.type != "cuda":
            return f"backend='cuda' needs CUDA tensors, got {device.type} tensors"
        return None
    if backend == "triton":
        if not triton_importable():
            return "triton is not installed (pip install 'pyfastlab[triton]')"
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
            return None
        return f"Triton runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device.type} tensors"
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend for an op call; raises with the reason if the request cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        reason = unavailable_reason(backend, device)
        if reason is not None:
            raise RuntimeError(f"backend={backend!r} is not available: {reason}")
        return backend
    candidates = ("cuda", "triton", "reference") if device.type == "cuda" else ("cpu", "reference")
    for name in candidates:
        if unavailable_reason(name, device) is None:
            return name
    return "reference"


def available(device: torch.device) -> list[str]:
    """Concrete backends that can run on `device`, reference last."""
    return [b for b in BACKENDS[1:] if unavailable_reason(b, device) is None]
