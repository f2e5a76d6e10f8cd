"""pytest-benchmark cases of the distill family (the pyfastlab/bench/*_cases.py modules with family="distill")."""
import pytest

from pyfastlab.bench import pytest_cases


@pytest.mark.parametrize("case,impl_name", pytest_cases.params("distill"))
def test_distill(benchmark, request, case, impl_name):
    pytest_cases.run(benchmark, request, case, impl_name)
