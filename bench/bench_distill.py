"""pytest-benchmark cases of the distill family (pyfastlab/bench/*_cases.py with family="distill")."""
import pytest

from pyfastlab.bench import pytest_runner


@pytest.mark.parametrize("case,impl_name", pytest_runner.params("distill"))
def test_distill(benchmark, request, case, impl_name):
    pytest_runner.run(benchmark, request, case, impl_name)
