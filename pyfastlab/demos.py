"""`pyfastlab demo FAMILY`: each family registers its example script's entry point here."""
from __future__ import annotations

from typing import Callable

# family -> main(argv) returning an exit code; the family issues add their demos.
DEMOS: dict[str, Callable[[list[str]], int]] = {}
