"""The semi-supervised M2 model of Kingma et al. (2014) as a Pyro model/guide pair."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_vae._checks import check_nonnegative, check_positive_int
from pyro_vae.conventions import AUXILIARY, UNLABELLED
from pyro_vae.errors import InputError
from pyro_vae.likelihoods.base import Likelihood, check_likelihood
from pyro_vae.networks import GaussianEncoder, mlp
from pyro_vae.priors import StandardNormal


def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dim, broadcasting the leading (particle, batch) dims."""
    lead = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*lead, a.shape[-1]), b.expand(*lead, b.shape[-1])], dim=-1)


class M2(nn.Module):
    """Semi-supervised generative model M2 [1].

    .. math::
        y_n \\sim \\mathrm{Cat}(1/C), \\quad z_n \\sim \\mathcal N(0, I), \\quad
        x_n \\sim p_\\theta(x \\mid f_\\theta(z_n, y_n)); \\qquad
        q_\\phi(y_n \\mid x_n) = \\mathrm{Cat}(\\pi_\\phi(x_n)), \\quad
        q_\\phi(z_n \\mid x_n, y_n) = \\mathcal N(\\mu_\\phi(x_n, y_n), \\sigma^2_\\phi(x_n, y_n)).

    Labels are integers, :data:`UNLABELLED` (-1) where unknown. A labelled datapoint's
    label is observed (site ``"y_observed"``, objective :math:`\\mathcal L(x, y)`); an
    unlabelled one's is the latent site ``"y_latent"`` (one-hot), inferred by the classifier
    :math:`q_\\phi(y \\mid x)` (objective :math:`\\mathcal U(x) = E_{q(y|x)}[\\mathcal L(x, y)] +
    H(q(y \\mid x))`). Both sites cover the whole batch and are masked, so one minibatch can
    mix labelled and unlabelled rows. For labelled rows the model adds the classification
    term :math:`\\alpha \\log q_\\phi(y_n \\mid x_n)` (site ``"y_classified"``, marked
    :data:`~pyro_vae.infer.per_datapoint.AUXILIARY`: part of the training objective,
    not of the model's density, so bounds and evaluation leave it out).

    ``y_latent`` is discrete: sum it out exactly with
    :class:`~pyro_vae.estimators.EnumerationELBO` (as in the paper; or Pyro's
    ``TraceEnum_ELBO`` with ``config_enumerate``), or use any estimator of
    :mod:`pyro_vae.estimators`.

    :param likelihood: observation model.
    :param num_classes: :math:`C`.
    :param latent_dim: dimension of :math:`z`.
    :param hidden: encoder widths (decoder mirrors them).
    :param classifier_hidden: classifier widths.
    :param alpha: weight :math:`\\alpha` of the classification term (the paper uses
        :math:`0.1 N`); 0 switches it off.

    References:
        [1] Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised learning with deep
        generative models", NeurIPS.
    """

    def __init__(
        self,
        likelihood: Likelihood,
        *,
        num_classes: int,
        latent_dim: int = 10,
        hidden: Sequence[int] = (256,),
        classifier_hidden: Sequence[int] = (256,),
        alpha: float = 10.0,
        activation: Callable[[], nn.Module] = nn.ReLU,
        name: str = "m2",
    ) -> None:
        super().__init__()
        check_likelihood(likelihood)
        check_positive_int(num_classes, "num_classes", minimum=2)
        check_positive_int(latent_dim, "latent_dim")
        check_nonnegative(alpha, "alpha")
        self.likelihood = likelihood
        self.num_features = likelihood.num_features
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.alpha = float(alpha)
        self.name = name
        self.prior = StandardNormal(latent_dim)
        self.encoder = GaussianEncoder(
            self.num_features + num_classes, hidden, latent_dim, activation=activation
        )
        self.decoder = mlp(
            latent_dim + num_classes, tuple(reversed(hidden)), likelihood.num_outputs, activation=activation
        )
        self.classifier = mlp(self.num_features, classifier_hidden, num_classes, activation=activation)

    # ----------------------------------------------------------------- Pyro program
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_data: int | None = None) -> None:
        """:math:`p(x, y, z)`, plus the classification term on labelled rows."""
        pyro.module(f"{self.name}_decoder", self.decoder)
        pyro.module(f"{self.name}_likelihood", self.likelihood)
        labels, labelled = self._labels(x, y)
        batch = x.shape[0]
        uniform = dist.OneHotCategorical(logits=x.new_zeros(self.num_classes))
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            observed = self._one_hot(labels, x)
            with poutine.mask(mask=labelled):
                pyro.sample("y_observed", uniform, obs=observed)
            with poutine.mask(mask=~labelled):
                guessed = pyro.sample("y_latent", uniform)
            y_hot = torch.where(labelled.unsqueeze(-1), observed, guessed)
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(self.decoder(_cat(z, y_hot))), obs=x)
            if self.alpha > 0:
                pyro.module(f"{self.name}_classifier", self.classifier)
                with poutine.mask(mask=labelled), poutine.scale(scale=self.alpha):
                    pyro.sample(
                        "y_classified",
                        dist.Categorical(logits=self.classifier(x)),
                        obs=labels,
                        infer={AUXILIARY: True},
                    )

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_data: int | None = None) -> None:
        """:math:`q(y \\mid x)` for unlabelled rows, then :math:`q(z \\mid x, y)`."""
        pyro.module(f"{self.name}_encoder", self.encoder)
        pyro.module(f"{self.name}_classifier", self.classifier)
        labels, labelled = self._labels(x, y)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            observed = self._one_hot(labels, x)
            with poutine.mask(mask=~labelled):
                guessed = pyro.sample("y_latent", dist.OneHotCategorical(logits=self.classifier(x)))
            y_hot = torch.where(labelled.unsqueeze(-1), observed, guessed)
            loc, scale = self.encoder(_cat(x, y_hot))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ----------------------------------------------------------------- helpers
    def _labels(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels with unlabelled rows set to 0, and the mask of labelled rows."""
        if y is None:
            y = torch.full((x.shape[0],), UNLABELLED, dtype=torch.long, device=x.device)
        labelled = y != UNLABELLED
        return torch.where(labelled, y, torch.zeros_like(y)).long(), labelled

    def _one_hot(self, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(labels, self.num_classes).to(like)

    def validate_data(self, x: torch.Tensor, y: torch.Tensor | None = None, *, name: str = "data") -> None:
        """Check ``x`` and the labels (integers in ``[0, C)`` or -1)."""
        self.likelihood.check_data(x, name=name)
        if y is None:
            return
        if y.shape != (x.shape[0],) or torch.is_floating_point(y):
            raise InputError(
                f"labels of {name} must be integers of shape ({x.shape[0]},), got {tuple(y.shape)}"
            )
        bad = (y < UNLABELLED) | (y >= self.num_classes)
        if bad.any():
            rows = bad.nonzero().flatten()[:5].tolist()
            raise InputError(
                f"labels of {name} must lie in [0, {self.num_classes}) or be {UNLABELLED} (unlabelled); "
                f"out of range at rows {rows}"
            )

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\arg\\max_y q_\\phi(y \\mid x)`."""
        return self.classifier(x).argmax(-1)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Fraction of rows whose label the classifier gets right."""
        return (self.classify(x) == y.to(x.device)).double().mean().item()
