"""Two latent layers z2 -> z1 -> x, all linear-Gaussian, with a bottom-up guide
q(z1 | x) q(z2 | z1)."""

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ._common import Encoder, LinearGaussianDecoder, linear_gaussian_data, seeded
from ._types import Case, Program


class ChainVAE(nn.Module):
    """z2 ~ N(0, I), z1 ~ N(A z2, diag s1^2), x ~ N(W z1 + b, diag psi), so
    p(x) = N(b, W (A A^T + diag s1^2) W^T + diag psi)."""

    def __init__(self, x_dim=4, z1_dim=2, z2_dim=1, hidden_dim=8):
        super().__init__()
        self.z2_dim = z2_dim
        self.a = nn.Linear(z2_dim, z1_dim, bias=False)
        self.log_s1 = nn.Parameter(torch.full((z1_dim,), math.log(0.6)))
        self.decoder = LinearGaussianDecoder(z1_dim, x_dim)
        self.encoder_z1 = Encoder(x_dim, hidden_dim, z1_dim)
        self.encoder_z2 = Encoder(z1_dim, hidden_dim, z2_dim)

    def model(self, x):
        pyro.module("chain", self)
        n = x.shape[0]
        with pyro.plate("data", n):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(n, self.z2_dim), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(self.a(z2), self.log_s1.exp()).to_event(1))
            loc, scale = self.decoder(z1)
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("chain", self)
        with pyro.plate("data", x.shape[0]):
            loc1, scale1 = self.encoder_z1(x)
            z1 = pyro.sample("z1", dist.Normal(loc1, scale1).to_event(1))
            loc2, scale2 = self.encoder_z2(z1)
            pyro.sample("z2", dist.Normal(loc2, scale2).to_event(1))

    def exact_log_p(self, x):
        a = self.a.weight
        cov_z1 = a @ a.T + torch.diag(self.log_s1.exp() ** 2)
        return self.decoder.marginal(latent_cov=cov_z1).log_prob(x)


def build() -> Program:
    with seeded(8):
        vae = ChainVAE().double()
    return Program(vae.model, vae.guide, vae.exact_log_p, [vae])


CASE = Case(
    name="chain",
    idiom="Two latent layers z2 -> z1 -> x (linear-Gaussian) with a bottom-up guide q(z1|x) q(z2|z1); "
    "the model samples z2 first, the guide z1 first.",
    build=build,
    data=lambda n: (linear_gaussian_data(n, seed=108),),
)
