"""Pyro's ``ss_vae_M2.py`` writes ``with pyro.plate("data"):`` with no size: the plate only
broadcasts, and its trace frames record ``size=-1`` instead of the number of rows."""

import pyro
import pyro.distributions as dist
from torch import nn

from ._common import Encoder, LinearGaussianDecoder, linear_gaussian_data, seeded
from ._types import Case, Program


class SizelessPlateVAE(nn.Module):
    def __init__(self, x_dim=4, z_dim=2, hidden_dim=8):
        super().__init__()
        self.z_dim = z_dim
        self.encoder_z = Encoder(x_dim, hidden_dim, z_dim)
        self.decoder = LinearGaussianDecoder(z_dim, x_dim)

    def model(self, xs):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        with pyro.plate("data"):
            prior_loc = xs.new_zeros(batch_size, self.z_dim)
            prior_scale = xs.new_ones(batch_size, self.z_dim)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            loc, scale = self.decoder(zs)
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=xs)

    def guide(self, xs):
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            loc, scale = self.encoder_z(xs)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def build() -> Program:
    with seeded(15):
        vae = SizelessPlateVAE().double()
    return Program(vae.model, vae.guide, vae.decoder.log_marginal, [vae])


CASE = Case(
    name="sizeless_plate",
    idiom='with pyro.plate("data"): with no size, as in Pyro\'s ss_vae_M2.py; the plate only broadcasts and '
    "its trace frames say size=-1, so the number of rows must come from the site shapes.",
    build=build,
    data=lambda n: (linear_gaussian_data(n, seed=115),),
)
