"""A VAE with several stochastic layers and a bottom-up guide."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae._checks import check_nonnegative, check_positive_int, check_widths
from pyro_vae.errors import InputError
from pyro_vae.likelihoods.base import Likelihood, check_likelihood
from pyro_vae.models.kl_scale import kl_scale
from pyro_vae.models.prior_samples import draw_prior
from pyro_vae.networks import GaussianEncoder, mirrored_decoder
from pyro_vae.priors import StandardNormal


class HierarchicalVAE(nn.Module):
    """A VAE with :math:`L \\ge 2` stochastic layers, Burda et al.'s architecture [1]:

    .. math::
        p(x, z_{1:L}) = p(z_L) \\prod_{l=1}^{L-1} p_\\theta(z_l \\mid z_{i+1})\\;
        p_\\theta(x \\mid z_1), \\qquad
        q_\\phi(z_{1:L} \\mid x) = q_\\phi(z_1 \\mid x) \\prod_{l=2}^{L} q_\\phi(z_l \\mid z_{l-1}),

    each conditional a diagonal Gaussian whose mean and scale are an MLP of the layer above
    (model) or below (guide): :math:`p_\\theta(z_l \\mid z_{i+1}) = \\mathcal N(\\mu_{\\theta,l}(z_{i+1}),
    \\operatorname{diag}\\sigma^2_{\\theta,l}(z_{i+1}))`, :math:`p(z_L)` the ``prior``
    (default :math:`\\mathcal N(0, I)`), :math:`p_\\theta(x \\mid z_1)` the likelihood of a
    decoder MLP. Site ``z1`` is the layer next to the data, ``z{L}`` the top. The guide is
    *bottom-up* (each layer's posterior sees only the layer below it), as in [1]; the
    top-down inference of ladder VAEs [2], where :math:`q` shares the generative path, is not
    built here.

    Because :math:`z_1`'s parent in the model (:math:`z_2`) is drawn *after* it in the guide,
    :math:`\\mathrm{KL}(q(z_1 \\mid x) \\| p(z_1 \\mid z_2))` at one draw of :math:`z_2` is not an
    unbiased estimate of that layer's term; the ELBO of the inference core samples every
    such term (:math:`\\log p - \\log q` at the draw) and uses the closed form only for the top
    layer (see :func:`pyro_vae.infer.collect_terms`).

    Minibatches pass ``num_data`` (the data-set size), as for :class:`~pyro_vae.models.VAE`;
    ``beta`` and ``kl_weight`` scale every latent layer.

    :param likelihood: the observation model.
    :param latent_dims: widths of the stochastic layers from the bottom (:math:`z_1`, next
        to :math:`x`) to the top, e.g. ``(100, 50)`` in [1]; at least two.
    :param hidden: hidden widths of the networks between :math:`x` and :math:`z_1`
        (encoder; the decoder uses them reversed).
    :param latent_hidden: hidden widths of the networks between stochastic layers; default ``hidden``.
    :param activation: activation module class.
    :param beta: KL weight :math:`\\beta \\ge 0`.
    :param prior: :math:`p(z_L)`; default :class:`~pyro_vae.priors.StandardNormal`.
    :param name: prefix of the parameter names in Pyro's parameter store.

    References:
        [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
        [2] Sønderby, Raiko, Maaløe, Sønderby & Winther (2016), "Ladder variational
        autoencoders", NeurIPS.
    """

    def __init__(
        self,
        likelihood: Likelihood,
        *,
        latent_dims: Sequence[int] = (32, 16),
        hidden: Sequence[int] = (256,),
        latent_hidden: Sequence[int] | None = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
        beta: float = 1.0,
        prior: nn.Module | None = None,
        name: str = "hvae",
    ) -> None:
        super().__init__()
        check_likelihood(likelihood)
        latent_dims = tuple(latent_dims)
        if len(latent_dims) < 2:
            raise InputError(
                f"a hierarchical VAE needs at least two stochastic layers, got latent_dims={latent_dims}; "
                "use VAE for one"
            )
        for width in latent_dims:
            check_positive_int(width, "latent width")
        check_widths(hidden, allow_empty=True)
        latent_hidden = tuple(hidden) if latent_hidden is None else tuple(latent_hidden)
        check_widths(latent_hidden, allow_empty=True)
        check_nonnegative(beta, "beta")
        self.num_features = likelihood.num_features
        self.latent_dims = latent_dims
        self.latent_dim = latent_dims[0]
        self.num_classes = 0
        self.beta = float(beta)
        self.name = name
        self.likelihood = likelihood
        self.prior = prior if prior is not None else StandardNormal(latent_dims[-1])
        below = (self.num_features, *latent_dims[:-1])
        # guide: q(z_1 | x), q(z_2 | z_1), ...; model: p(z_1 | z_2), ..., p(z_{L-1} | z_L)
        self.encoder = nn.ModuleList(
            GaussianEncoder(d_in, hidden if i == 0 else latent_hidden, d_out, activation=activation)
            for i, (d_in, d_out) in enumerate(zip(below, latent_dims, strict=True))
        )
        self.layers = nn.ModuleList(
            GaussianEncoder(
                latent_dims[i + 1], tuple(reversed(latent_hidden)), latent_dims[i], activation=activation
            )
            for i in range(len(latent_dims) - 1)
        )
        self.decoder = mirrored_decoder(latent_dims[0], hidden, likelihood.num_outputs, activation=activation)

    @property
    def sites(self) -> tuple[str, ...]:
        """The latent sites from the bottom up: ``("z1", "z2", ...)``."""
        return tuple(f"z{i + 1}" for i in range(len(self.latent_dims)))

    # ----------------------------------------------------------------- Pyro program
    def model(self, x: torch.Tensor, *, num_data: int | None = None, kl_weight: float = 1.0) -> torch.Tensor:
        """:math:`p(z_L) \\prod_l p(z_l \\mid z_{i+1})\\, p(x \\mid z_1)`, sampled top-down."""
        pyro.module(f"{self.name}_prior", self.prior)
        pyro.module(f"{self.name}_layers", self.layers)
        pyro.module(f"{self.name}_decoder", self.decoder)
        pyro.module(f"{self.name}_likelihood", self.likelihood)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            with kl_scale(self.beta * kl_weight):
                z = pyro.sample(self.sites[-1], self.prior(x))
                for i in reversed(range(len(self.layers))):  # z_{L-1}, ..., z_1
                    loc, scale = self.layers[i](z)
                    z = pyro.sample(self.sites[i], dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    def guide(self, x: torch.Tensor, *, num_data: int | None = None, kl_weight: float = 1.0) -> torch.Tensor:
        """:math:`q(z_1 \\mid x) \\prod_{i \\ge 2} q(z_l \\mid z_{l-1})`, sampled bottom-up."""
        pyro.module(f"{self.name}_encoder", self.encoder)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            h = x
            with kl_scale(self.beta * kl_weight):
                for i, layer in enumerate(self.encoder):  # z_1, ..., z_L
                    loc, scale = layer(h)
                    h = pyro.sample(self.sites[i], dist.Normal(loc, scale).to_event(1))
        return h

    # ----------------------------------------------------------------- helpers
    def validate_data(self, x: torch.Tensor, y: torch.Tensor | None = None, *, name: str = "data") -> None:
        """Check ``x`` against the likelihood (shape, finiteness, support)."""
        self.likelihood.check_data(x, name=name)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of :math:`q(z_1 \\mid x)`, the layer next to the data."""
        return self.encoder[0](x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of :math:`p(x \\mid z_1)`."""
        return self.likelihood(self.decoder(z)).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of :math:`p(x \\mid z_1 = E_q[z_1 \\mid x])`."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def sample_prior(
        self, num_samples: int, y: torch.Tensor | None = None, *, like: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Means of :math:`p(x \\mid z_1)` for :math:`z_{1:L}` drawn from the model top-down."""
        z = draw_prior(self, num_samples, like=like)
        for i in reversed(range(len(self.layers))):
            loc, scale = self.layers[i](z)
            z = loc + scale * torch.randn_like(loc)
        return self.decode(z)
