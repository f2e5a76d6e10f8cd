"""The Triton kernels compile for Hopper (sm_90) without a GPU: what the interpreter runs is what
the GPU will be given. One script per kernel module: compile_triton*_sm90.py."""
import os
import pathlib
import subprocess
import sys

import pytest

from pyfastlab.ops import _backends

SCRIPTS = sorted(pathlib.Path(__file__).parent.glob("compile_triton*_sm90.py"))


@pytest.mark.triton
@pytest.mark.skipif(not _backends.triton_importable(), reason="triton is not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_triton_kernels_compile_for_sm90(script):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compiled" in proc.stdout
