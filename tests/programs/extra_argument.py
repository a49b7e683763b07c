"""model(x, config) / guide(x, config): a non-tensor configuration object (a frozen
dataclass) as the second positional argument, after x: ``data(n)`` returns ``(x, CONFIG)``,
the program's positional arguments, so every tool must pass the non-tensor through."""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
from torch import nn

from ._common import Encoder, LinearGaussianDecoder, linear_gaussian_data, seeded
from ._types import Case, Program


@dataclass(frozen=True)
class Config:
    z_dim: int = 2
    temperature: float = 1.5  # multiplies the guide's scales


class ConfiguredVAE(nn.Module):
    def __init__(self, config, x_dim=4, hidden_dim=8):
        super().__init__()
        self.encoder = Encoder(x_dim, hidden_dim, config.z_dim)
        self.decoder = LinearGaussianDecoder(config.z_dim, x_dim)

    def model(self, x, config):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], config.z_dim), 1.0).to_event(1))
            loc, scale = self.decoder(z)
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)

    def guide(self, x, config):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, config.temperature * scale).to_event(1))


CONFIG = Config()


def build() -> Program:
    with seeded(12):
        vae = ConfiguredVAE(CONFIG).double()

    def exact_log_p(x, config=CONFIG):
        return vae.decoder.log_marginal(x)

    return Program(vae.model, vae.guide, exact_log_p, [vae.encoder, vae.decoder])


CASE = Case(
    name="extra_argument",
    idiom="model(x, config) / guide(x, config) with a frozen-dataclass config (z_dim, guide temperature) "
    "as a required second positional parameter: data(n) is (x, CONFIG).",
    build=build,
    data=lambda n: (linear_gaussian_data(n, seed=112), CONFIG),
)
