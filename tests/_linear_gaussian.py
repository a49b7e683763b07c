"""A linear-Gaussian reference model with random generative parameters, for tests against its closed forms."""

import torch

from pyro_vae.models import LinearGaussian


def random_linear_gaussian(d: int = 5, k: int = 2, seed: int = 0) -> LinearGaussian:
    """``LinearGaussian(d, k)`` in float64 with standard-normal bias and raw noise, drawn
    after ``torch.manual_seed(seed)`` (the guide keeps its initial parameters)."""
    torch.manual_seed(seed)
    m = LinearGaussian(d, k).double()
    with torch.no_grad():
        m.generative.bias.normal_()
        m.generative.raw_noise.normal_()
    return m
