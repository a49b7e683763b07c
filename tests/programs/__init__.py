"""A corpus of small Pyro programs written the way Pyro's own examples are written (``vae.py``,
``ss_vae_M2.py``, scANVI), one idiom per module, for running the library's tools over.

Each module defines ``CASE``; ``CASES`` maps every case's name to it. The corpus depends only
on ``torch`` and ``pyro`` (never on ``pyro_vae``) and ``test_corpus.py`` checks it with Pyro
alone. See README.md for the list.
"""

from . import (
    bare_params,
    batchnorm_dropout,
    chain,
    discrete_then_continuous,
    enumerated_parallel,
    enumerated_sequential,
    extra_argument,
    guide_factor,
    ignores_num_data,
    nested_plates,
    no_broadcast,
    no_num_data,
    num_data,
    poutine_scale,
    sizeless_plate,
    whole_module,
)
from ._types import Case, Program

_MODULES = (
    whole_module,
    batchnorm_dropout,
    no_broadcast,
    enumerated_parallel,
    enumerated_sequential,
    guide_factor,
    poutine_scale,
    nested_plates,
    chain,
    discrete_then_continuous,
    no_num_data,
    bare_params,
    extra_argument,
    num_data,
    ignores_num_data,
    sizeless_plate,
)

CASES: dict[str, Case] = {m.CASE.name: m.CASE for m in _MODULES}

__all__ = ["CASES", "Case", "Program"]
