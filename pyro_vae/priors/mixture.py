"""A mixture-of-Gaussians prior with learned weights, means and scales."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyro_vae._checks import check_positive_int
from pyro_vae.priors.learned_normal import inverse_softplus


class MixtureOfGaussians(nn.Module):
    """:math:`p_\\theta(z) = \\sum_{c=1}^C \\pi_c\\, \\mathcal N(z; \\mu_c, \\operatorname{diag}
    \\sigma_c^2)` with :math:`\\pi = \\mathrm{softmax}(\\alpha)` and
    :math:`\\sigma_c = \\mathrm{softplus}(\\rho_c) + 10^{-5}`, all learned [1, 2].

    A ``MixtureSameFamily`` of diagonal Gaussians:

    .. math::
        \\log p(z) = \\operatorname{logsumexp}_c \\Big[\\log \\pi_c
        + \\sum_j \\log \\mathcal N(z_j; \\mu_{cj}, \\sigma_{cj}^2)\\Big].

    Its KL divergence from a Gaussian guide has no closed form, so the ELBO samples the
    prior term (``MeanFieldELBO`` uses :math:`\\log p(z) - \\log q(z \\mid x)` at the drawn
    :math:`z` for this site, and the KL in closed form elsewhere). The means start at
    ``init_scale`` times standard normal draws (from torch's generator), the scales at 1 and
    the weights equal. ``forward(like)`` returns the prior on the dtype and device of ``like``.

    :param latent_dim: :math:`K`, the dimension of :math:`z`.
    :param num_components: :math:`C`.

    References:
        [1] Dilokthanakul et al. (2016), "Deep unsupervised clustering with Gaussian mixture
        variational autoencoders", arXiv:1611.02648.
        [2] Tomczak & Welling (2018), "VAE with a VampPrior", AISTATS (the MoG baseline).
    """

    def __init__(
        self, latent_dim: int, num_components: int, *, init_scale: float = 1.0, min_scale: float = 1e-5
    ) -> None:
        super().__init__()
        check_positive_int(latent_dim, "latent_dim")
        check_positive_int(num_components, "num_components")
        self.latent_dim = latent_dim
        self.num_components = num_components
        self.min_scale = min_scale
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(init_scale * torch.randn(num_components, latent_dim))
        self.raw_scales = nn.Parameter(inverse_softplus(torch.ones(num_components, latent_dim) - min_scale))

    @property
    def scales(self) -> torch.Tensor:
        return softplus(self.raw_scales) + self.min_scale

    def forward(self, like: torch.Tensor) -> dist.TorchDistribution:
        components = dist.Normal(self.locs.to(like), self.scales.to(like)).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits.to(like)), components)
