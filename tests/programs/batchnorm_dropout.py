"""An encoder with ``nn.BatchNorm1d`` and ``nn.Dropout``: modules whose forward pass
depends on train/eval mode (BatchNorm also mixes the rows of a batch in train mode)."""

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ._common import LinearGaussianDecoder, linear_gaussian_data, seeded
from ._types import Case, Program


class BatchNormEncoder(nn.Module):
    def __init__(self, x_dim, hidden_dim, z_dim, p_drop=0.1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(x_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Dropout(p_drop),
        )
        self.loc = nn.Linear(hidden_dim, z_dim)
        self.log_scale = nn.Linear(hidden_dim, z_dim)
        with torch.no_grad():  # a reasonable (not exact) initial guide, as in _common.Encoder
            self.loc.weight.mul_(0.3)
            self.log_scale.weight.mul_(0.1)
            self.log_scale.bias.fill_(math.log(0.6))

    def forward(self, x):
        hidden = self.body(x)
        return self.loc(hidden), torch.exp(self.log_scale(hidden))


class BatchNormVAE(nn.Module):
    def __init__(self, x_dim=4, z_dim=2, hidden_dim=8):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = BatchNormEncoder(x_dim, hidden_dim, z_dim)
        self.decoder = LinearGaussianDecoder(z_dim, x_dim)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            loc, scale = self.decoder(z)
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def build() -> Program:
    with seeded(2):
        vae = BatchNormVAE().double()
    return Program(vae.model, vae.guide, vae.decoder.log_marginal, [vae.encoder, vae.decoder])


CASE = Case(
    name="batchnorm_dropout",
    idiom="Encoder with nn.BatchNorm1d and nn.Dropout left in train mode: the guide is stochastic "
    "beyond z and, through BatchNorm, depends on the whole batch (needs >= 2 rows in train mode).",
    build=build,
    data=lambda n: (linear_gaussian_data(n, seed=102),),
    train_mode_modules=True,
)
