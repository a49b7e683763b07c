"""A Gaussian mixture whose only latent, the label y, is enumerated in parallel in the
guide with ``@config_enumerate`` (the guide is a classifier q(y | x)); trains with
``TraceEnum_ELBO(max_plate_nesting=1)``, which then sums over y exactly."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from torch import nn

from ._common import Classifier, mixture_data, seeded
from ._types import Case, Program

NUM_CLASSES = 3
X_DIM = 3


class GaussianMixture(nn.Module):
    """y ~ Categorical(softmax(logits)), x ~ N(means[y], I); a classifier guide q(y | x)."""

    def __init__(self, x_dim=X_DIM, hidden_dim=8):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(NUM_CLASSES))
        self.means = nn.Parameter(torch.randn(NUM_CLASSES, x_dim))
        self.classifier = Classifier(x_dim, hidden_dim, NUM_CLASSES)

    def model(self, x):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=self.logits))
            pyro.sample("x", dist.Normal(self.means[y], 1.0).to_event(1), obs=x)

    def exact_log_p(self, x):
        per_class = dist.Normal(self.means, 1.0).to_event(1).log_prob(x.unsqueeze(-2))
        return (per_class + self.logits.log_softmax(-1)).logsumexp(-1)


class ParallelMixture(GaussianMixture):
    @config_enumerate
    def guide(self, x):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(probs=self.classifier(x)))


def build() -> Program:
    with seeded(4):
        mix = ParallelMixture().double()
    return Program(mix.model, mix.guide, mix.exact_log_p, [mix])


def data(n, seed=104):
    return (mixture_data(n, seed, x_dim=X_DIM, num_classes=NUM_CLASSES)[0],)


CASE = Case(
    name="enumerated_parallel",
    idiom="All-discrete guide q(y|x) decorated with @config_enumerate (parallel enumeration of the label), "
    "trained with TraceEnum_ELBO(max_plate_nesting=1).",
    build=build,
    data=data,
    discrete=True,
    all_discrete=True,
)
