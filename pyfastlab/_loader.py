"""Loads the compiled extension. A failed load leaves the reference and Triton backends usable, and
says so once, loudly: a silent switch to the reference would hide a broken install."""
import pathlib
import warnings

import torch

try:
    from . import _C  # registers torch.ops.pyfastlab.*
    C_LOAD_ERROR = None
except ImportError as exc:  # e.g. a source checkout that was never built, or an ABI mismatch
    _C = None
    C_LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        f"pyfastlab: the compiled kernels did not load ({C_LOAD_ERROR}). Ops with backend='auto' now run the "
        f"pure-PyTorch reference (several times slower) or Triton; backend='cpu' and 'cuda' raise. Fix: reinstall "
        f"pyfastlab against this torch ({torch.__version__}), and do not import it from the source tree "
        f"(this import came from {pathlib.Path(__file__).parent}).", RuntimeWarning, stacklevel=2)


def has_compiled_ops() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    return _C is not None and bool(_C.with_cuda)
