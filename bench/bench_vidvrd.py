"""pytest-benchmark cases of the vidvrd family (pyfastlab/bench/*_cases.py with family="vidvrd")."""
import pytest

from pyfastlab.bench import pytest_cases


@pytest.mark.parametrize("case,impl_name", pytest_cases.params("vidvrd"))
def test_vidvrd(benchmark, request, case, impl_name):
    pytest_cases.run(benchmark, request, case, impl_name)
