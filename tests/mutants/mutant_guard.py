"""pytest plugin of `make mutants` (loaded with -p mutant_guard by run.py): refuses to run the tests
unless pyfastlab and its compiled extension are the mutated copy under $PFL_MUTANTS_SITE, so that a
mutant can never be tested against the .venv install by mistake."""
import os
from pathlib import Path

import pytest


def pytest_configure(config):
    site = Path(os.environ["PFL_MUTANTS_SITE"]).resolve()
    import pyfastlab
    from pyfastlab import _loader

    where = Path(pyfastlab.__file__).resolve()
    if site not in where.parents:
        raise pytest.UsageError(f"mutant_guard: pyfastlab was imported from {where}, not from {site}")
    if _loader._C is None:
        raise pytest.UsageError(f"mutant_guard: the mutated extension did not load: {_loader.C_LOAD_ERROR}")
    ext = Path(_loader._C.__file__).resolve()
    if site not in ext.parents:
        raise pytest.UsageError(f"mutant_guard: pyfastlab._C was loaded from {ext}, not from {site}")
    import pyfastlab.kernels

    kernels = Path(pyfastlab.kernels.__file__).resolve()
    if site not in kernels.parents:
        raise pytest.UsageError(f"mutant_guard: pyfastlab.kernels was imported from {kernels}, not from {site}")


def pytest_report_header(config):
    import pyfastlab

    return f"mutant_guard: pyfastlab from {Path(pyfastlab.__file__).parent}"
