"""scANVI-style: the GUIDE carries a classification loss as
``pyro.factor("classification_loss", -alpha * log q(y|x), has_rsample=False)`` on the
observed labels, and the MODEL carries a ``pyro.factor`` too (part of the unnormalized
model). Data are (x, y) with y one-hot labels observed in the model."""

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ._common import Classifier, Encoder, LinearGaussianDecoder, mixture_data, seeded
from ._types import Case, Program

NUM_CLASSES = 3
X_DIM = 4


class LabelledVAE(nn.Module):
    """y ~ OneHotCategorical(uniform) (observed), z ~ N(0, I), x ~ N(W z + b + M y, diag psi),
    plus the model factor c(x) = -penalty/2 |x|^2; so
    log p(x, y) = log(1/3) + log N(x; b + M y, W W^T + diag psi) + c(x)."""

    def __init__(self, x_dim=X_DIM, z_dim=2, hidden_dim=8, alpha=0.5, penalty=0.1):
        super().__init__()
        self.z_dim = z_dim
        self.alpha = alpha
        self.penalty = penalty
        self.class_shift = nn.Parameter(0.5 * torch.randn(NUM_CLASSES, x_dim))
        self.decoder = LinearGaussianDecoder(z_dim, x_dim, init_scale=1.0)
        self.encoder_z = Encoder(x_dim + NUM_CLASSES, hidden_dim, z_dim)
        self.classifier = Classifier(x_dim, hidden_dim, NUM_CLASSES)

    def model_factor(self, x):
        return -0.5 * self.penalty * (x**2).sum(-1)

    def classification_log_prob(self, x, y):
        return dist.OneHotCategorical(probs=self.classifier(x)).log_prob(y)

    def model(self, x, y):
        pyro.module("scanvi", self)
        n = x.shape[0]
        with pyro.plate("data", n):
            pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(n, NUM_CLASSES)), obs=y)
            z = pyro.sample("z", dist.Normal(x.new_zeros(n, self.z_dim), 1.0).to_event(1))
            loc, scale = self.decoder(z)
            pyro.sample("x", dist.Normal(loc + y @ self.class_shift, scale).to_event(1), obs=x)
            pyro.factor("soft_constraint", self.model_factor(x))

    def guide(self, x, y):
        pyro.module("scanvi", self)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder_z(torch.cat([x, y], -1))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            classification_loss = self.classification_log_prob(x, y)
            pyro.factor("classification_loss", -self.alpha * classification_loss, has_rsample=False)

    def exact_log_p(self, x, y):
        p_x = self.decoder.marginal()
        shifted = dist.MultivariateNormal(
            p_x.loc + y @ self.class_shift, covariance_matrix=p_x.covariance_matrix
        )
        return shifted.log_prob(x) - math.log(NUM_CLASSES) + self.model_factor(x)

    def extra_guide_terms(self, x, y):
        return -self.alpha * self.classification_log_prob(x, y)


def build() -> Program:
    with seeded(5):
        vae = LabelledVAE().double()
    return Program(vae.model, vae.guide, vae.exact_log_p, [vae], extra_guide_terms=vae.extra_guide_terms)


CASE = Case(
    name="guide_factor",
    idiom="scANVI-style pyro.factor classification loss (has_rsample=False) in the GUIDE plus a pyro.factor "
    "in the MODEL; data are (x, y one-hot), exact_log_p is log p(x, y) including the model factor, and "
    "Pyro's Trace_ELBO is shifted down by the guide factor (extra_guide_terms).",
    build=build,
    data=lambda n: mixture_data(n, seed=105, x_dim=X_DIM, num_classes=NUM_CLASSES),
)
