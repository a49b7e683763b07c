"""The minibatch idiom done right: ``pyro.plate("data", num_data or len(x),
subsample=torch.arange(len(x)))`` in both model and guide, so a batch's terms are scaled by
num_data / len(x)."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ._common import Encoder, LinearGaussianDecoder, linear_gaussian_data, seeded
from ._types import Case, Program


class MinibatchVAE(nn.Module):
    def __init__(self, x_dim=4, z_dim=2, hidden_dim=8):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder(x_dim, hidden_dim, z_dim)
        self.decoder = LinearGaussianDecoder(z_dim, x_dim)

    def model(self, x, num_data=None):
        pyro.module("decoder", self.decoder)
        batch = torch.arange(len(x), device=x.device)
        with pyro.plate("data", num_data or len(x), subsample=batch):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.z_dim), 1.0).to_event(1))
            loc, scale = self.decoder(z)
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        pyro.module("encoder", self.encoder)
        batch = torch.arange(len(x), device=x.device)
        with pyro.plate("data", num_data or len(x), subsample=batch):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def build() -> Program:
    with seeded(13):
        vae = MinibatchVAE().double()
    return Program(vae.model, vae.guide, vae.decoder.log_marginal, [vae.encoder, vae.decoder])


CASE = Case(
    name="num_data",
    idiom='model(x, num_data=None) / guide(x, num_data=None) with pyro.plate("data", num_data or len(x), '
    "subsample=torch.arange(len(x))): the batch is scaled up to the full data set.",
    build=build,
    data=lambda n: (linear_gaussian_data(n, seed=113),),
    has_num_data=True,
)
