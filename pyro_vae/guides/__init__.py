"""Posterior families :math:`q(z \\mid x)` for amortized guides, passed to a model as
``posterior=``: each maps the encoder's outputs ``(loc, scale[, h])`` to a distribution
with event shape ``(latent_dim,)``.

- :class:`DiagonalGaussian`: :math:`\\mathcal N(\\mu, \\operatorname{diag}\\sigma^2)` (the default);
- :class:`IAFPosterior`: inverse autoregressive flow steps conditioned on a context :math:`h`;
- :class:`PlanarPosterior`: planar flow steps whose parameters are functions of :math:`h`.
"""

from pyro_vae.guides.diagonal_gaussian import DiagonalGaussian
from pyro_vae.guides.iaf import IAFPosterior
from pyro_vae.guides.planar import PlanarPosterior

__all__ = ["DiagonalGaussian", "IAFPosterior", "PlanarPosterior"]
