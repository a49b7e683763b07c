"""The guide samples y (OneHotCategorical) and then z given (x, y) through a concatenation
that broadcasts first, like the ``ConcatModule`` of Pyro's SS-VAE utilities; the model is
the one of ``no_broadcast``."""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.util import broadcast_shape
from torch import nn

from ._common import Classifier, Encoder, seeded
from ._types import Case, Program
from .no_broadcast import NUM_CLASSES, OneLatentMixture, one_latent_mixture_data


def broadcast_cat(*tensors):
    """torch.cat along the last dimension after broadcasting all the leading dimensions."""
    shape = broadcast_shape(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in tensors], dim=-1)


class BroadcastingSSVAE(nn.Module):
    def __init__(self, x_dim=3, hidden_dim=8):
        super().__init__()
        self.encoder_y = Classifier(x_dim, hidden_dim, NUM_CLASSES)
        self.encoder_z = Encoder(x_dim + NUM_CLASSES, hidden_dim, 1)
        self.generative = OneLatentMixture(x_dim)

    def model(self, xs):
        pyro.module("ss_vae", self)
        self.generative.model(xs)

    def guide(self, xs):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.size(0)):
            ys = pyro.sample("y", dist.OneHotCategorical(self.encoder_y(xs)))
            loc, scale = self.encoder_z(broadcast_cat(xs, ys))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def build() -> Program:
    with seeded(9):
        vae = BroadcastingSSVAE().double()
    return Program(vae.model, vae.guide, vae.generative.log_marginal, [vae])


CASE = Case(
    name="discrete_then_continuous",
    idiom="Guide samples a one-hot y, then z ~ q(z | x, y) through a concat that broadcasts x "
    "against y's leading dimensions (SS-VAE's ConcatModule), so extra particle dims work.",
    build=build,
    data=lambda n: (one_latent_mixture_data(n, seed=109),),
    discrete=True,
)
