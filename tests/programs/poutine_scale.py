"""A tempered likelihood: the observation sits inside ``poutine.scale(scale=0.5)`` (a beta
weight on the reconstruction term). Evaluation should ignore the scale: exact_log_p is the
UNSCALED model's log p(x)."""

import pyro
import pyro.distributions as dist
from pyro import poutine
from torch import nn

from ._common import Encoder, LinearGaussianDecoder, linear_gaussian_data, seeded
from ._types import Case, Program

LIKELIHOOD_SCALE = 0.5


class TemperedVAE(nn.Module):
    def __init__(self, x_dim=4, z_dim=2, hidden_dim=8):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder(x_dim, hidden_dim, z_dim)
        self.decoder = LinearGaussianDecoder(z_dim, x_dim)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            loc, scale = self.decoder(z)
            with poutine.scale(scale=LIKELIHOOD_SCALE):
                pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def build() -> Program:
    with seeded(6):
        vae = TemperedVAE().double()
    return Program(vae.model, vae.guide, vae.decoder.log_marginal, [vae.encoder, vae.decoder])


CASE = Case(
    name="poutine_scale",
    idiom="Likelihood inside poutine.scale(scale=0.5) (a tempered, beta-weighted reconstruction); "
    "evaluation should ignore the scale: exact_log_p is the unscaled model's log p(x).",
    build=build,
    data=lambda n: (linear_gaussian_data(n, seed=106),),
)
