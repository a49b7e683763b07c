"""A VAE that accepts a ``num_data=None`` keyword but ignores it: its plate is always
sized by the batch, so passing num_data does not rescale anything."""

import pyro
import pyro.distributions as dist
from torch import nn

from ._common import Encoder, LinearGaussianDecoder, linear_gaussian_data, seeded
from ._types import Case, Program


class BatchSizedVAE(nn.Module):
    def __init__(self, x_dim=4, z_dim=2, hidden_dim=8):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder(x_dim, hidden_dim, z_dim)
        self.decoder = LinearGaussianDecoder(z_dim, x_dim)

    def model(self, x, num_data=None):  # num_data accepted for API compatibility only
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            loc, scale = self.decoder(z)
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def build() -> Program:
    with seeded(14):
        vae = BatchSizedVAE().double()
    return Program(vae.model, vae.guide, vae.decoder.log_marginal, [vae.encoder, vae.decoder])


CASE = Case(
    name="ignores_num_data",
    idiom="model(x, num_data=None) accepts the keyword but ignores it (plate sized by the batch), "
    "so has_num_data=False: passing num_data must not be relied on to rescale.",
    build=build,
    data=lambda n: (linear_gaussian_data(n, seed=114),),
)
