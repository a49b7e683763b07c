"""One nn.Module holding encoder and decoder, registered whole with
``pyro.module("ss_vae", self)`` in both model and guide, as Pyro's SS-VAE example does."""

import pyro
import pyro.distributions as dist
from torch import nn

from ._common import Encoder, LinearGaussianDecoder, linear_gaussian_data, seeded
from ._types import Case, Program


class WholeVAE(nn.Module):
    def __init__(self, x_dim=4, z_dim=2, hidden_dim=8):
        super().__init__()
        self.z_dim = z_dim
        self.encoder_z = Encoder(x_dim, hidden_dim, z_dim)
        self.decoder = LinearGaussianDecoder(z_dim, x_dim)

    def model(self, xs):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        with pyro.plate("data", batch_size):
            prior_loc = xs.new_zeros(batch_size, self.z_dim)
            prior_scale = xs.new_ones(batch_size, self.z_dim)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            loc, scale = self.decoder(zs)
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=xs)

    def guide(self, xs):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.size(0)):
            loc, scale = self.encoder_z(xs)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def exact_log_p(self, xs):
        return self.decoder.log_marginal(xs)


def build() -> Program:
    with seeded(1):
        vae = WholeVAE().double()
    return Program(vae.model, vae.guide, vae.exact_log_p, [vae])


CASE = Case(
    name="whole_module",
    idiom='One nn.Module with encoder and decoder registered whole by pyro.module("ss_vae", self) '
    "in both model and guide (Pyro's SS-VAE).",
    build=build,
    data=lambda n: (linear_gaussian_data(n, seed=101),),
)
