"""KL per dimension and active units per latent site on the corpus of Pyro programs: each
works (the same numbers as the one-site functions) or refuses with the site named."""

import pytest
import torch

from pyro_vae.diagnostics import active_units, active_units_per_site, kl_per_dimension, kl_per_site
from pyro_vae.errors import InputError
from tests.programs import CASES
from tests.programs.test_tools import _assert_unchanged, _module_state

N = 24
NAMES = ["chain", "batchnorm_dropout", "no_broadcast", "nested_plates", "discrete_then_continuous"]


@pytest.mark.parametrize("name", NAMES)
def test_per_site_diagnostics_work_on_the_corpus_or_say_why(name):
    case = CASES[name]
    program, data = case.build(), case.data(N)
    before = _module_state(program)
    try:
        units = active_units_per_site(program.guide, *data)
    except InputError as e:
        assert "'" in str(e)  # names the site
        units = {}
    for site, au in units.items():
        torch.testing.assert_close(au.variance, active_units(program.guide, *data, site=site).variance)
    try:
        kl = kl_per_site(program.model, program.guide, *data)
    except InputError as e:
        assert "'" in str(e)
    else:
        for site, value in kl.items():
            torch.testing.assert_close(
                value, kl_per_dimension(program.model, program.guide, *data, site=site)
            )
            assert (value >= -1e-9).all()
    _assert_unchanged(program, before)
    if name == "chain":
        assert list(units) == ["z1", "z2"] and set(kl) == {"z1", "z2"}
