"""pytest-benchmark cases of the mixup family (pyfastlab/bench/*_cases.py with family="mixup")."""
import pytest

from pyfastlab.bench import pytest_runner


@pytest.mark.parametrize("case,impl_name", pytest_runner.params("mixup"))
def test_mixup(benchmark, request, case, impl_name):
    pytest_runner.run(benchmark, request, case, impl_name)
