"""The scripts in examples/ run to completion."""
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
# The short form of the long demos; the full runs are for the README's numbers.
ARGS = {
    "continual_split_digits.py": ["--quick"],
    "distill_digits.py": ["--quick", "--check"],
    "mixup_digits.py": ["--quick"],
    "vae_demo.py": ["--steps", "50", "--seeds", "1"],
    "vidvrd_demo.py": ["--quick"],
}


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script):
    proc = subprocess.run([sys.executable, str(script), *ARGS.get(script.name, [])], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
