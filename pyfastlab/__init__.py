"""pyfastlab: fused CPU, CUDA and Triton ops for eight published learning methods.

`import pyfastlab` loads the compiled ops into ``torch.ops.pyfastlab`` (when the extension was
built) and exposes the public ops under :mod:`pyfastlab.ops`.
"""
import torch  # noqa: F401  -- must precede _C: the extension has no RUNPATH to libtorch

from ._version import __version__
from ._loader import C_LOAD_ERROR, has_compiled_ops
from . import ops
from ._info import info

__all__ = ["__version__", "ops", "info", "has_compiled_ops", "C_LOAD_ERROR"]
