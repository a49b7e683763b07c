"""A variational autoencoder with discrete latents, as a Pyro model/guide pair."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import torch
from torch import nn

from pyro_vae.errors import InputError
from pyro_vae.likelihoods.base import Likelihood, check_likelihood
from pyro_vae.models.discrete_latents import BernoulliLatent, CategoricalLatent
from pyro_vae.networks import mlp


class DiscreteVAE(nn.Module):
    """VAE with a discrete code [1, 2]: :math:`z_n \\sim p(z)` (categorical or Bernoulli),
    :math:`x_n \\mid z_n \\sim p_\\theta(x \\mid f_\\theta(z_n))`, and the amortized guide
    :math:`q_\\phi(z_n \\mid x_n)` of the same family, parameterized by logits from an MLP.

    The latent site ``"z"`` is not reparameterizable, so the gradient estimator matters:
    train it with any estimator of :mod:`pyro_vae.estimators` (score function, baselines,
    VIMCO, relaxations, exact enumeration for small codes) or Pyro's ``Trace_ELBO`` /
    ``TraceGraph_ELBO``; relaxations feed the decoder soft values, which it accepts.

    :param likelihood: observation model (:mod:`pyro_vae.likelihoods`).
    :param latent: :class:`~pyro_vae.models.CategoricalLatent` or
        :class:`~pyro_vae.models.BernoulliLatent`.
    :param hidden: encoder widths (the decoder mirrors them).
    :param name: prefix of the parameter names in Pyro's parameter store.

    References:
        [1] Jang, Gu & Poole (2017), "Categorical reparameterization with Gumbel-softmax", ICLR.
        [2] Mnih & Gregor (2014), "Neural variational inference and learning in belief
        networks", ICML.
    """

    def __init__(
        self,
        likelihood: Likelihood,
        latent: CategoricalLatent | BernoulliLatent,
        *,
        hidden: Sequence[int] = (256,),
        activation: Callable[[], nn.Module] = nn.ReLU,
        name: str = "dvae",
    ) -> None:
        super().__init__()
        check_likelihood(likelihood)
        if not isinstance(latent, CategoricalLatent | BernoulliLatent):
            raise InputError(
                f"latent must be a CategoricalLatent or BernoulliLatent, got {type(latent).__name__}"
            )
        self.likelihood = likelihood
        self.latent = latent
        self.num_features = likelihood.num_features
        self.name = name
        self.encoder = mlp(self.num_features, hidden, latent.num_inputs, activation=activation)
        self.decoder = mlp(
            latent.num_inputs, tuple(reversed(hidden)), likelihood.num_outputs, activation=activation
        )

    def model(self, x: torch.Tensor, *, num_data: int | None = None) -> torch.Tensor:
        """:math:`p(x, z)`."""
        pyro.module(f"{self.name}_decoder", self.decoder)
        pyro.module(f"{self.name}_likelihood", self.likelihood)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            z = pyro.sample("z", self.latent.prior(x))
            pyro.sample("x", self.likelihood(self.decoder(self.latent.flatten(z))), obs=x)
        return z

    def guide(self, x: torch.Tensor, *, num_data: int | None = None) -> torch.Tensor:
        """:math:`q_\\phi(z \\mid x)`."""
        pyro.module(f"{self.name}_encoder", self.encoder)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            return pyro.sample("z", self.latent.posterior(self.encoder(x)))

    def validate_data(self, x: torch.Tensor, *, name: str = "data") -> None:
        """Check ``x`` against this model: shape, finiteness, the likelihood's support."""
        self.likelihood.check_data(x, name=name)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Mode of :math:`q(z \\mid x)` per variable (one-hot or binary), as the decoder takes it."""
        q = self.latent.posterior(self.encoder(x)).base_dist
        if isinstance(self.latent, CategoricalLatent):
            return nn.functional.one_hot(q.logits.argmax(-1), self.latent.num_categories).to(x)
        return (q.logits > 0).to(x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of :math:`p(x \\mid z)` at the posterior mode."""
        return self.likelihood(self.decoder(self.latent.flatten(self.encode(x)))).mean

    @torch.no_grad()
    def sample_prior(self, num_samples: int, *, like: torch.Tensor | None = None) -> torch.Tensor:
        """Means of :math:`p(x \\mid z)` for :math:`z \\sim p(z)`."""
        ref = like if like is not None else next(self.parameters())
        z = self.latent.prior(ref).sample((num_samples,))
        return self.likelihood(self.decoder(self.latent.flatten(z))).mean
