"""ArviZ, imported quietly (0.23 warns about its coming 1.0 refactor on import)."""

from __future__ import annotations

import warnings
from types import ModuleType


def arviz() -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az
