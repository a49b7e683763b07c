"""No nn.Module at all: a linear-Gaussian model and a linear amortized guide written with
bare ``pyro.param`` statements, scales constrained with ``constraints.positive``."""

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from ._common import linear_gaussian_data
from ._types import Case, Program

X_DIM, Z_DIM = 4, 2


def build() -> Program:
    g = torch.Generator().manual_seed(11)
    f64 = torch.float64
    init = {
        "weight": 0.6 * torch.randn(X_DIM, Z_DIM, generator=g, dtype=f64),
        "bias": torch.zeros(X_DIM, dtype=f64),
        "noise_scale": torch.full((X_DIM,), 0.7, dtype=f64),
        "q_weight": 0.1 * torch.randn(X_DIM, Z_DIM, generator=g, dtype=f64),
        "q_bias": torch.zeros(Z_DIM, dtype=f64),
        "q_scale": torch.full((Z_DIM,), 0.6, dtype=f64),
    }
    positive = {"noise_scale", "q_scale"}

    def param(name):
        constraint = constraints.positive if name in positive else constraints.real
        return pyro.param(name, lambda: init[name].clone(), constraint=constraint)

    def model(x):
        weight, bias, noise_scale = param("weight"), param("bias"), param("noise_scale")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ weight.T + bias, noise_scale).to_event(1), obs=x)

    def guide(x):
        q_weight, q_bias, q_scale = param("q_weight"), param("q_bias"), param("q_scale")
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ q_weight + q_bias, q_scale).to_event(1))

    def exact_log_p(x):
        weight, bias, noise_scale = param("weight"), param("bias"), param("noise_scale")
        cov = weight @ weight.T + torch.diag(noise_scale**2)
        return dist.MultivariateNormal(bias, covariance_matrix=cov).log_prob(x)

    return Program(model, guide, exact_log_p, [])


CASE = Case(
    name="bare_params",
    idiom="No nn.Module: model and linear amortized guide use bare pyro.param statements (two with "
    "constraint=constraints.positive); exact_log_p reads the current param store.",
    build=build,
    data=lambda n: (linear_gaussian_data(n, seed=111),),
)
