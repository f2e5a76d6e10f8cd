"""`pyfastlab demo FAMILY`: each family registers its example's entry point here."""
from __future__ import annotations

import importlib
from typing import Callable

# family -> module whose main(argv) runs the demo and returns an exit code (imported on use).
_DEMO_MODULES = {
    "continual": "pyfastlab.continual.demo",
    "distill": "pyfastlab.distill.demo",
    "mixup": "pyfastlab.mixup.demo",
    "vae": "pyfastlab.vae.demo",
    "vidvrd": "pyfastlab.vidvrd.demo",
}


def _entry(module: str) -> Callable[[list[str]], int]:
    return lambda argv: importlib.import_module(module).main(argv)


DEMOS: dict[str, Callable[[list[str]], int]] = {family: _entry(m) for family, m in _DEMO_MODULES.items()}
