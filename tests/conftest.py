import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    """Every test starts with an empty parameter store, validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    torch.set_num_threads(1)
    yield
    pyro.clear_param_store()


def standard_error(samples: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean along dim 0."""
    return samples.std(0) / samples.shape[0] ** 0.5
