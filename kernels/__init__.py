"""Triton kernels of pyfastlab (importing a submodule imports triton)."""
