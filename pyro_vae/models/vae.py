"""The variational autoencoder as a Pyro model/guide pair."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import torch
from torch import nn

from pyro_vae._checks import check_nonnegative, check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.guides import DiagonalGaussian
from pyro_vae.likelihoods.base import Likelihood, check_likelihood
from pyro_vae.models.covariates import append_covariate
from pyro_vae.models.kl_scale import kl_scale
from pyro_vae.models.prior_samples import draw_prior
from pyro_vae.networks import GaussianEncoder, mirrored_decoder
from pyro_vae.priors import StandardNormal


def _check_composition(vae: VAE, context_dim: int) -> None:
    """The parts passed in fit together: encoder outputs, posterior context, a VampPrior's encoder."""
    if getattr(vae.encoder, "context_dim", 0) != context_dim:
        raise InputError(
            f"the posterior needs a context of width {context_dim} but the encoder outputs "
            f"{getattr(vae.encoder, 'context_dim', 0)}; build the encoder with context_dim={context_dim}"
        )
    shared = getattr(vae.prior, "encoder", None)
    if shared is None:
        return
    if shared is not vae.encoder:
        raise InputError(
            "the prior mixes posteriors of an encoder that is not this VAE's; pass the same module: "
            "enc = GaussianEncoder(...); VAE(..., encoder=enc, prior=VampPrior(enc, ...))"
        )
    if vae.num_classes or not isinstance(vae.posterior, DiagonalGaussian):
        raise InputError(
            "a VampPrior mixes the encoder's Gaussian posteriors at pseudo-inputs of the data alone: "
            "it needs an unconditional VAE (num_classes=0) with the default diagonal Gaussian posterior"
        )


class VAE(nn.Module):
    """Variational autoencoder [1] with an optional covariate (conditional VAE [2])
    and a KL weight :math:`\\beta` (beta-VAE [3]).

    Generative model and amortized guide, for datapoints :math:`n` in the plate ``"data"``:

    .. math::
        z_n \\sim p(z), \\qquad x_n \\mid z_n \\sim p_\\theta(x \\mid f_\\theta(z_n, y_n)),
        \\qquad q_\\phi(z_n \\mid x_n) = \\mathcal N(\\mu_\\phi(x_n, y_n),
        \\operatorname{diag} \\sigma^2_\\phi(x_n, y_n)),

    so that the objective is
    :math:`\\sum_n E_q[\\log p(x_n \\mid z_n)] - \\beta\\,\\mathrm{KL}(q(z_n \\mid x_n) \\,\\|\\, p(z_n))`
    (:math:`\\beta = 1`: the ELBO). ``z`` is reparameterized,
    :math:`z = \\mu + \\sigma \\odot \\epsilon`. Minibatches pass ``num_data`` (the data-set
    size :math:`N`): the plate then scales each term by :math:`N/B`, which makes the
    minibatch objective an unbiased estimate of the full-data one.

    :param likelihood: the observation model (:mod:`pyro_vae.likelihoods`).
    :param latent_dim: :math:`K`.
    :param hidden: widths of the hidden layers of encoder and decoder.
    :param activation: activation module class.
    :param num_classes: size of a categorical covariate :math:`y` (labels or batches),
        fed one-hot to encoder and decoder; 0 for an unconditional VAE. A float
        ``y`` of shape ``(B, num_classes)`` is used as given (continuous covariates).
    :param beta: the KL weight :math:`\\beta \\ge 0`.
    :param prior: :math:`p(z)`, a module mapping a reference tensor to a distribution;
        default :class:`~pyro_vae.priors.StandardNormal`; others in :mod:`pyro_vae.priors`
        (learned Gaussian, mixture of Gaussians, VampPrior). Its parameters, if any, are
        registered in ``model`` as ``{name}_prior``.
    :param posterior: the family of :math:`q(z \\mid x)`, a module mapping the encoder's
        ``(loc, scale[, h])`` to a distribution; default
        :class:`~pyro_vae.guides.DiagonalGaussian` (the guide above, no parameters of its
        own); flows in :mod:`pyro_vae.guides` (IAF, planar). Its parameters are registered
        in ``guide`` as ``{name}_posterior``; the encoder is built with the
        ``posterior.context_dim`` extra outputs it needs.
    :param encoder: the encoder network, default a :class:`~pyro_vae.networks.GaussianEncoder`
        with ``hidden`` widths; pass one to share it with a
        :class:`~pyro_vae.priors.VampPrior`.
    :param name: prefix of the parameter names in Pyro's parameter store.

    References:
        [1] Kingma & Welling (2014), "Auto-encoding variational Bayes", ICLR.
        [2] Sohn, Lee & Yan (2015), "Learning structured output representation using
        deep conditional generative models", NeurIPS.
        [3] Higgins et al. (2017), "beta-VAE: learning basic visual concepts with a
        constrained variational framework", ICLR.
    """

    def __init__(
        self,
        likelihood: Likelihood,
        *,
        latent_dim: int = 10,
        hidden: Sequence[int] = (400,),
        activation: Callable[[], nn.Module] = nn.ReLU,
        num_classes: int = 0,
        beta: float = 1.0,
        prior: nn.Module | None = None,
        posterior: nn.Module | None = None,
        encoder: nn.Module | None = None,
        name: str = "vae",
    ) -> None:
        super().__init__()
        check_likelihood(likelihood)
        check_positive_int(latent_dim, "latent_dim")
        check_positive_int(num_classes, "num_classes", minimum=0)
        check_nonnegative(beta, "beta")
        self.num_features = likelihood.num_features
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.beta = float(beta)
        self.name = name
        self.likelihood = likelihood
        self.prior = prior if prior is not None else StandardNormal(latent_dim)
        self.posterior = posterior if posterior is not None else DiagonalGaussian()
        context_dim = getattr(self.posterior, "context_dim", 0)
        self.encoder = (
            encoder
            if encoder is not None
            else GaussianEncoder(
                self.num_features + num_classes,
                hidden,
                latent_dim,
                activation=activation,
                context_dim=context_dim,
            )
        )
        _check_composition(self, context_dim)
        self.decoder = mirrored_decoder(
            latent_dim + num_classes, hidden, likelihood.num_outputs, activation=activation
        )

    # ----------------------------------------------------------------- Pyro program
    def model(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        kl_weight: float = 1.0,
    ) -> torch.Tensor:
        """:math:`p(x, z)`; ``kl_weight`` multiplies :math:`\\beta` (KL warm-up)."""
        pyro.module(f"{self.name}_decoder", self.decoder)
        pyro.module(f"{self.name}_likelihood", self.likelihood)
        pyro.module(f"{self.name}_prior", self.prior)  # learned priors; nothing for N(0, I)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            with kl_scale(self.beta * kl_weight):
                z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(self.decoder(self._cat(z, y))), obs=x)
        return z

    def guide(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        kl_weight: float = 1.0,
    ) -> torch.Tensor:
        """:math:`q_\\phi(z \\mid x)`: the posterior family (a diagonal Gaussian by default)
        at the encoder's outputs."""
        pyro.module(f"{self.name}_encoder", self.encoder)
        pyro.module(f"{self.name}_posterior", self.posterior)  # flow steps; nothing for the default
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            q = self.posterior(*self.encoder(self._cat(x, y)))
            with kl_scale(self.beta * kl_weight):
                return pyro.sample("z", q)

    # ----------------------------------------------------------------- helpers
    def _cat(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Append the one-hot covariate to ``h`` (broadcasting over leading particle dims)."""
        if self.num_classes == 0:
            return h
        if y is None:
            raise InputError(f"this VAE is conditional on y (num_classes={self.num_classes}); pass y")
        return append_covariate(h, self.one_hot(y, like=h))

    def one_hot(self, y: torch.Tensor, *, like: torch.Tensor) -> torch.Tensor:
        if y.dim() == 1 and not torch.is_floating_point(y):
            return nn.functional.one_hot(y.long(), self.num_classes).to(like)
        if y.dim() == 2 and y.shape[-1] == self.num_classes:
            return y.to(like)
        raise InputError(
            f"y must hold integer labels of shape (B,) or covariates of shape (B, {self.num_classes}), "
            f"got shape {tuple(y.shape)} and dtype {y.dtype}"
        )

    def validate_data(self, x: torch.Tensor, y: torch.Tensor | None = None, *, name: str = "data") -> None:
        """Check ``x`` (and ``y``) against this model: shape, finiteness, the likelihood's support."""
        self.likelihood.check_data(x, name=name)
        if self.num_classes:
            if y is None:
                raise InputError(
                    f"the model is conditional (num_classes={self.num_classes}) but {name} has no labels"
                )
            if y.shape[0] != x.shape[0]:
                raise InputError(f"{name} has {x.shape[0]} rows but {y.shape[0]} labels")
            if y.dim() == 1 and not torch.is_floating_point(y):
                bad = (y < 0) | (y >= self.num_classes)
                if bad.any():
                    rows = bad.nonzero().flatten()[:5].tolist()
                    raise InputError(
                        f"labels of {name} must lie in [0, {self.num_classes}); out of range at rows {rows}"
                    )

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of :math:`q(z \\mid x)` (for a flow posterior: of its
        Gaussian base, before the flow)."""
        loc, scale = self.encoder(self._cat(x, y))[:2]
        return loc, scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of :math:`p(x \\mid z)`."""
        return self.likelihood(self.decoder(self._cat(z, y))).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of :math:`p(x \\mid z = E_q[z])`."""
        return self.decode(self.encode(x, y)[0], y)

    @torch.no_grad()
    def sample_prior(
        self, num_samples: int, y: torch.Tensor | None = None, *, like: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Means of :math:`p(x \\mid z)` for :math:`z \\sim p(z)`."""
        return self.decode(draw_prior(self, num_samples, like=like), y)
