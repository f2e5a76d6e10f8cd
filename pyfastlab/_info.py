"""`pyfastlab.info()`: what this installation contains and can run."""
from __future__ import annotations

import torch

from ._loader import C_LOAD_ERROR, _C
from ._version import __version__


def info() -> dict:
    from .ops import OPS, _backends

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    backends = {name: sorted({b for d in devices for b in _backends.available(d)}) for name in OPS}
    return {
        "pyfastlab": __version__,
        "torch_runtime": torch.__version__,
        "torch_build": _C.torch_build_version if _C else None,
        "compiled_extension": _C.__file__ if _C else f"not loaded: {C_LOAD_ERROR}",
        "cuda_compiled": bool(_C and _C.with_cuda),
        "cuda_archs": (_C.cuda_archs if _C and _C.with_cuda else ""),
        "cuda_version": (_C.cuda_version if _C and _C.with_cuda else ""),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "openmp_threads": torch.get_num_threads(),
        "cpu_kernels": _cpu_capability(),
        "triton": _triton_version(),
        "triton_interpret": _backends.triton_interpreted(),
        "backends": backends,
    }


def _triton_version() -> str | None:
    from .ops import _backends

    if not _backends.triton_importable():
        return None
    import importlib.metadata

    return importlib.metadata.version("triton")


def _cpu_capability() -> str | None:
    return _C.cpu_kernel_capability() if _C else None
