"""Synthetic data sets with known generating parameters."""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch

from pyro_vae._checks import check_positive_int
from pyro_vae.data.dataset import Dataset
from pyro_vae.likelihoods.negative_binomial import nb_distribution


@dataclass(frozen=True)
class LinearGaussianTruth:
    """:math:`x = Wz + b + \\epsilon` with :math:`z \\sim \\mathcal N(0, I)` and
    :math:`\\epsilon \\sim \\mathcal N(0, \\operatorname{diag}\\psi)`."""

    weight: torch.Tensor
    bias: torch.Tensor
    noise_variance: torch.Tensor
    z: torch.Tensor

    def marginal(self) -> dist.MultivariateNormal:
        cov = self.weight @ self.weight.T + torch.diag(self.noise_variance)
        return dist.MultivariateNormal(self.bias, covariance_matrix=cov)


@dataclass(frozen=True)
class CountTruth:
    """Counts from a low-dimensional latent: :math:`\\mu = \\exp(Wz + b)`, inverse
    dispersion :math:`\\theta` per feature, dropout probability ``gate`` (0 for NB)."""

    weight: torch.Tensor
    bias: torch.Tensor
    inverse_dispersion: torch.Tensor
    gate: float
    z: torch.Tensor
    mean: torch.Tensor


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear_gaussian(
    num_data: int, num_features: int, latent_dim: int, *, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[Dataset, LinearGaussianTruth]:
    """Data from a random factor-analysis model; the truth gives exact :math:`\\log p(x)`."""
    for value, name in ((num_data, "num_data"), (num_features, "num_features"), (latent_dim, "latent_dim")):
        check_positive_int(value, name)
    g = _gen(seed)
    weight = torch.randn(num_features, latent_dim, generator=g, dtype=dtype)
    bias = torch.randn(num_features, generator=g, dtype=dtype)
    noise = 0.1 + torch.rand(num_features, generator=g, dtype=dtype)
    z = torch.randn(num_data, latent_dim, generator=g, dtype=dtype)
    x = z @ weight.T + bias + noise.sqrt() * torch.randn(num_data, num_features, generator=g, dtype=dtype)
    return Dataset(x=x, name="linear-gaussian"), LinearGaussianTruth(weight, bias, noise, z)


def count_data(
    num_data: int,
    num_features: int,
    latent_dim: int,
    *,
    gate: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Dataset, CountTruth]:
    """Negative-binomial counts (zero-inflated when ``gate > 0``) from a known latent.

    Each datapoint draws :math:`z \\sim \\mathcal N(0, I_K)`; feature :math:`d` has mean
    :math:`\\mu_d = \\exp(w_d^\\top z + b_d)` around 5 counts, inverse dispersion
    :math:`\\theta_d \\in [1, 5]`, and is set to 0 with probability ``gate``.
    """
    for value, name in ((num_data, "num_data"), (num_features, "num_features"), (latent_dim, "latent_dim")):
        check_positive_int(value, name)
    if not 0 <= gate < 1:
        raise ValueError(f"gate must be in [0, 1), got {gate}")
    g = _gen(seed)
    weight = 0.5 * torch.randn(num_features, latent_dim, generator=g, dtype=torch.float64)
    bias = torch.log(torch.tensor(5.0, dtype=torch.float64)) + 0.3 * torch.randn(
        num_features, generator=g, dtype=torch.float64
    )
    theta = 1.0 + 4.0 * torch.rand(num_features, generator=g, dtype=torch.float64)
    z = torch.randn(num_data, latent_dim, generator=g, dtype=torch.float64)
    mean = torch.exp(z @ weight.T + bias)
    # NB as a gamma-Poisson mixture, drawn with the explicit generator:
    rate = torch._standard_gamma(theta.expand_as(mean).contiguous(), generator=g) * mean / theta
    x = torch.poisson(rate, generator=g)
    if gate > 0:
        x = torch.where(torch.rand(x.shape, generator=g, dtype=torch.float64) < gate, 0.0, x)
    truth = CountTruth(weight.to(dtype), bias.to(dtype), theta.to(dtype), gate, z.to(dtype), mean.to(dtype))
    name = "zinb-counts" if gate > 0 else "nb-counts"
    return Dataset(x=x.to(dtype), name=name), truth


def count_log_likelihood(x: torch.Tensor, truth: CountTruth) -> torch.Tensor:
    """:math:`\\log p(x_n \\mid z_n)` under the true parameters (per datapoint)."""
    base = nb_distribution(truth.mean.to(x.dtype), truth.inverse_dispersion.to(x.dtype))
    if truth.gate == 0:
        return base.log_prob(x).sum(-1)
    gate = torch.full_like(x, truth.gate)
    zinb = dist.ZeroInflatedDistribution(base, gate=gate)
    return zinb.log_prob(x).sum(-1)
