"""pytest-benchmark cases of the continual family (pyfastlab/bench/continual_cases.py)."""
import pytest

from pyfastlab.bench import pytest_cases


@pytest.mark.parametrize("case,impl_name", pytest_cases.params("continual"))
def test_continual(benchmark, request, case, impl_name):
    pytest_cases.run(benchmark, request, case, impl_name)
