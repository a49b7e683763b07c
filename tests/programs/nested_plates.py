"""A data plate at dim=-2 with a features plate at dim=-1 inside it: one scalar latent
per datapoint (batch shape (n, 1)) and independent Gaussian observations per feature."""

import pyro
import pyro.distributions as dist
from torch import nn

from ._common import Encoder, LinearGaussianDecoder, linear_gaussian_data, seeded
from ._types import Case, Program


class FeaturePlateVAE(nn.Module):
    def __init__(self, x_dim=4, hidden_dim=8):
        super().__init__()
        self.encoder = Encoder(x_dim, hidden_dim, 1)
        self.decoder = LinearGaussianDecoder(1, x_dim)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        n, d = x.shape
        with pyro.plate("data", n, dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(n, 1), 1.0))  # batch shape (n, 1)
            loc, scale = self.decoder(z)  # (..., n, d)
            with pyro.plate("features", d, dim=-1):
                pyro.sample("x", dist.Normal(loc, scale), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0], dim=-2):
            loc, scale = self.encoder(x)  # (n, 1)
            pyro.sample("z", dist.Normal(loc, scale))


def build() -> Program:
    with seeded(7):
        vae = FeaturePlateVAE().double()
    return Program(vae.model, vae.guide, vae.decoder.log_marginal, [vae.encoder, vae.decoder])


CASE = Case(
    name="nested_plates",
    idiom='pyro.plate("data", n, dim=-2) around pyro.plate("features", d, dim=-1): a scalar latent per '
    "datapoint and per-feature Gaussian observations (max_plate_nesting=2, no to_event).",
    build=build,
    data=lambda n: (linear_gaussian_data(n, seed=107, z_dim=1),),
)
