"""pytest-benchmark cases of the vae family (pyfastlab/bench/*_cases.py with family="vae")."""
import pytest

from pyfastlab.bench import pytest_runner


@pytest.mark.parametrize("case,impl_name", pytest_runner.params("vae"))
def test_vae(benchmark, request, case, impl_name):
    pytest_runner.run(benchmark, request, case, impl_name)
