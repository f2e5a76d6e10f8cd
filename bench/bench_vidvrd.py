"""pytest-benchmark cases of the vidvrd family (pyfastlab/bench/*_cases.py with family="vidvrd")."""
import pytest

from pyfastlab.bench import pytest_runner


@pytest.mark.parametrize("case,impl_name", pytest_runner.params("vidvrd"))
def test_vidvrd(benchmark, request, case, impl_name):
    pytest_runner.run(benchmark, request, case, impl_name)
