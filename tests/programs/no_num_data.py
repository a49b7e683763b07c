"""Pyro's ``vae.py`` as written: decoder registered in the model and encoder in the guide
with separate ``pyro.module`` calls, ``pyro.plate("data", x.shape[0])``, no num_data keyword
at all, and the example's site names "latent" and "obs"."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ._common import Encoder, LinearGaussianDecoder, linear_gaussian_data, seeded
from ._types import Case, Program


class VAE(nn.Module):
    def __init__(self, x_dim=4, z_dim=2, hidden_dim=8):
        super().__init__()
        self.encoder = Encoder(x_dim, hidden_dim, z_dim)
        self.decoder = LinearGaussianDecoder(z_dim, x_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc, scale = self.decoder.forward(z)
            pyro.sample("obs", dist.Normal(loc, scale).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder.forward(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def build() -> Program:
    with seeded(10):
        vae = VAE().double()
    return Program(vae.model, vae.guide, vae.decoder.log_marginal, [vae.encoder, vae.decoder])


CASE = Case(
    name="no_num_data",
    idiom='Pyro\'s vae.py: separate pyro.module("decoder")/("encoder") calls, '
    'pyro.plate("data", x.shape[0]), no num_data keyword, site names "latent" and "obs".',
    build=build,
    data=lambda n: (linear_gaussian_data(n, seed=110),),
)
