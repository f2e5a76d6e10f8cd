"""scikit-learn, imported on use: the beta-VAE score, SAP and DCI's "gbt" model fit its estimators."""
from __future__ import annotations

import importlib


def sklearn_module(name: str, metric: str):
    try:
        return importlib.import_module(f"sklearn.{name}")
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"{metric} needs scikit-learn: pip install 'pyfastlab[metrics]' "
                          f"(or scikit-learn>=1.3)") from err
