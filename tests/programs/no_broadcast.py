"""A semi-supervised (M2-style) guide that concatenates x with the one-hot y it has just
sampled, ``torch.cat([xs, ys], -1)``, without broadcasting: it works for one particle but
fails under an extra leading particle (or enumeration) dimension."""

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ._common import Classifier, Encoder, seeded
from ._types import Case, Program

NUM_CLASSES = 3


class OneLatentMixture(nn.Module):
    """The generative part: y ~ OneHotCategorical(uniform), z ~ N(0, 1) (one dimension),
    x ~ N(z w + means[y], sigma^2 I), so p(x) = (1/3) sum_y N(x; means[y], w w^T + sigma^2 I)."""

    def __init__(self, x_dim):
        super().__init__()
        self.w = nn.Parameter(0.6 * torch.randn(x_dim))
        self.means = nn.Parameter(torch.randn(NUM_CLASSES, x_dim))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(1.0)))

    def model(self, xs):
        batch_size = xs.size(0)
        with pyro.plate("data", batch_size):
            alpha_prior = xs.new_ones(batch_size, NUM_CLASSES) / NUM_CLASSES
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior))
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(batch_size, 1), 1.0).to_event(1))
            loc = zs * self.w + ys @ self.means
            pyro.sample("x", dist.Normal(loc, self.log_sigma.exp()).to_event(1), obs=xs)

    def log_marginal(self, xs):
        x_dim = xs.shape[-1]
        eye = torch.eye(x_dim, dtype=xs.dtype, device=xs.device)
        cov = torch.outer(self.w, self.w) + self.log_sigma.exp() ** 2 * eye
        per_class = dist.MultivariateNormal(self.means, covariance_matrix=cov).log_prob(xs.unsqueeze(-2))
        return per_class.logsumexp(-1) - math.log(NUM_CLASSES)


def one_latent_mixture_data(n, seed):
    """x = z w + means[y] + 0.5 eps with fixed random w and means (float64)."""
    g = torch.Generator().manual_seed(seed)
    x_dim = 3
    w = 0.6 * torch.randn(x_dim, generator=g, dtype=torch.float64)
    means = torch.randn(NUM_CLASSES, x_dim, generator=g, dtype=torch.float64)
    y = torch.randint(NUM_CLASSES, (n,), generator=g)
    z = torch.randn(n, 1, generator=g, dtype=torch.float64)
    return z * w + means[y] + 0.5 * torch.randn(n, x_dim, generator=g, dtype=torch.float64)


class CatGuideSSVAE(nn.Module):
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
            alpha = self.encoder_y(xs)
            ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            # no broadcasting: ys gains the particle dimension, xs does not
            loc, scale = self.encoder_z(torch.cat([xs, ys], -1))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def build() -> Program:
    with seeded(3):
        vae = CatGuideSSVAE().double()
    return Program(vae.model, vae.guide, vae.generative.log_marginal, [vae])


CASE = Case(
    name="no_broadcast",
    idiom="M2-style guide does torch.cat([x, y], -1) with the one-hot y it sampled in the data plate, "
    "so it fails under an extra leading particle or enumeration dimension.",
    build=build,
    data=lambda n: (one_latent_mixture_data(n, seed=103),),
    discrete=True,
    broadcasts=False,
)
