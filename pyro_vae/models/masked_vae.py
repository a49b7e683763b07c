"""The variational autoencoder for incomplete data: a missingness mask passed with the data."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae._checks import check_binary
from pyro_vae.errors import InputError
from pyro_vae.likelihoods.base import Likelihood
from pyro_vae.models.kl_scale import kl_scale
from pyro_vae.models.vae import VAE
from pyro_vae.networks import GaussianEncoder


def encoder_input(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What the encoder of incomplete data sees: the zero-filled data and the mask,
    :math:`[x \\odot m,\\ m]` (missing entries of ``x`` may hold anything, even NaN)."""
    m = mask.to(x.dtype)
    return torch.cat([torch.where(m > 0.5, x, torch.zeros((), dtype=x.dtype, device=x.device)), m], dim=-1)


class MaskedVAE(VAE):
    """A VAE trained on incomplete data [1, 2, 3]: ``model(x, mask)`` and ``guide(x, mask)``
    take the missingness mask (observed = 1) as a second positional tensor with one row per
    datapoint, so :func:`~pyro_vae.train.fit` minibatches it with ``x``:
    ``fit(vae.model, vae.guide, (x, mask), ...)``.

    .. math::
        z_n \\sim p(z), \\qquad
        p(x_{n,\\mathrm{obs}} \\mid z_n) = \\prod_d p_\\theta(x_{nd} \\mid z_n)^{m_{nd}}, \\qquad
        q_\\phi(z_n \\mid x_{n,\\mathrm{obs}}) = \\mathcal N(\\mu_\\phi([x_n \\odot m_n, m_n]),
        \\operatorname{diag} \\sigma_\\phi^2([x_n \\odot m_n, m_n])).

    The likelihood's features are independent given :math:`z`, so leaving the missing ones
    out of the density (:meth:`~pyro_vae.likelihoods.Likelihood.masked`) is their exact
    marginalization, and the ELBO is a bound on :math:`\\log p(x_{\\mathrm{obs}})` (Nazábal et
    al.'s HI-VAE [2], Mattei & Frellsen's MIWAE [3] with :math:`K = 1`).

    The encoder sees the zero-filled data concatenated with the mask
    (:func:`encoder_input`), not the zero-filled data alone: for binary data a missing pixel
    and an observed 0 would otherwise be the same input, and the encoder could not tell an
    image with its lower half hidden from one whose lower half is blank. It costs ``D``
    more inputs to the first layer. Missing entries of ``x`` are never read (they may hold
    any value; the model observes them zero-filled, so they must be finite for ``fit``'s
    checks: fill them with 0).

    The keywords are those of :class:`~pyro_vae.models.VAE` (no covariate).

    References:
        [1] Rezende, Mohamed & Wierstra (2014), "Stochastic backpropagation and approximate
        inference in deep generative models", ICML.
        [2] Nazábal, Olmos, Ghahramani & Valera (2020), "Handling incomplete heterogeneous
        data using VAEs", Pattern Recognition 107.
        [3] Mattei & Frellsen (2019), "MIWAE: deep generative modelling and imputation of
        incomplete data sets", ICML.
    """

    def __init__(
        self,
        likelihood: Likelihood,
        *,
        latent_dim: int = 10,
        hidden: Sequence[int] = (400,),
        activation: Callable[[], nn.Module] = nn.ReLU,
        beta: float = 1.0,
        prior: nn.Module | None = None,
        name: str = "masked_vae",
    ) -> None:
        super().__init__(
            likelihood,
            latent_dim=latent_dim,
            hidden=hidden,
            activation=activation,
            beta=beta,
            prior=prior,
            name=name,
        )
        self.encoder = GaussianEncoder(2 * self.num_features, hidden, latent_dim, activation=activation)

    def model(  # type: ignore[override]
        self, x: torch.Tensor, mask: torch.Tensor, *, num_data: int | None = None, kl_weight: float = 1.0
    ) -> torch.Tensor:
        """:math:`p(x_{\\mathrm{obs}}, z)`: the likelihood of the observed features only."""
        pyro.module(f"{self.name}_decoder", self.decoder)
        pyro.module(f"{self.name}_likelihood", self.likelihood)
        batch = x.shape[0]
        observed = mask > 0.5
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            with kl_scale(self.beta * kl_weight):
                z = pyro.sample("z", self.prior(x))
            fn = self.likelihood.masked(self.decoder(z), observed)
            pyro.sample(
                "x", fn, obs=torch.where(observed, x, torch.zeros((), dtype=x.dtype, device=x.device))
            )
        return z

    def guide(  # type: ignore[override]
        self, x: torch.Tensor, mask: torch.Tensor, *, num_data: int | None = None, kl_weight: float = 1.0
    ) -> torch.Tensor:
        """:math:`q_\\phi(z \\mid x_{\\mathrm{obs}})` from the zero-filled data and the mask."""
        pyro.module(f"{self.name}_encoder", self.encoder)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            loc, scale = self.encoder(encoder_input(x, mask))
            with kl_scale(self.beta * kl_weight):
                return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def validate_data(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, name: str = "data") -> None:  # type: ignore[override]
        """Check ``x`` (observed entries in the likelihood's support) and ``mask`` (0/1, same shape)."""
        if mask is None:
            raise InputError(f"{name}: a MaskedVAE needs the missingness mask (observed = 1) with the data")
        if mask.shape != x.shape:
            raise InputError(f"{name}: the mask has shape {tuple(mask.shape)} but the data {tuple(x.shape)}")
        check_binary(mask.to(torch.get_default_dtype()), name=f"{name} mask")
        self.likelihood.check_data(torch.where(mask > 0.5, x, torch.zeros((), dtype=x.dtype)), name=name)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Mean and standard deviation of :math:`q(z \\mid x_{\\mathrm{obs}})`."""
        return self.encoder(encoder_input(x, mask))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Mean of :math:`p(x \\mid z = E_q[z])`, every feature."""
        return self.decode(self.encode(x, mask)[0])
