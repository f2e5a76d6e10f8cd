"""pytest-benchmark cases of the continual family (pyfastlab/bench/continual_cases.py)."""
import pytest

from pyfastlab.bench import pytest_runner


@pytest.mark.parametrize("case,impl_name", pytest_runner.params("continual"))
def test_continual(benchmark, request, case, impl_name):
    pytest_runner.run(benchmark, request, case, impl_name)
