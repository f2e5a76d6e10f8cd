"""The kd_loss Triton kernel compiles for Hopper (sm_90) without a GPU."""
import os
import pathlib
import subprocess
import sys

import pytest

from pyfastlab.ops import _backends

SCRIPT = pathlib.Path(__file__).with_name("compile_triton_kd_sm90.py")


@pytest.mark.triton
@pytest.mark.skipif(not _backends.triton_importable(), reason="triton is not installed")
def test_kd_loss_triton_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compiled" in proc.stdout
