"""Loads the compiled extension. A failed load leaves the reference and Triton backends usable."""
import torch  # noqa: F401

try:
    from . import _C  # registers torch.ops.pyfastlab.*
    C_LOAD_ERROR = None
except ImportError as exc:  # e.g. a source checkout that was never built, or an ABI mismatch
    _C = None
    C_LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def has_compiled_ops() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    return _C is not None and bool(_C.with_cuda)
