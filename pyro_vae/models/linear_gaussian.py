"""Linear-Gaussian latent variable model (probabilistic PCA / factor analysis) with exact answers."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyro_vae._checks import check_positive_int


class _Generative(nn.Module):
    def __init__(self, num_features: int, latent_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_features, latent_dim) / latent_dim**0.5)
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.raw_noise = nn.Parameter(torch.zeros(num_features))

    @property
    def noise_variance(self) -> torch.Tensor:
        return softplus(self.raw_noise) + 1e-6


class _Recognition(nn.Module):
    def __init__(self, num_features: int, latent_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(latent_dim, num_features))
        self.bias = nn.Parameter(torch.zeros(latent_dim))
        self.raw_tril = nn.Parameter(torch.zeros(latent_dim, latent_dim))

    @property
    def scale_tril(self) -> torch.Tensor:
        strict = self.raw_tril.tril(-1)
        return strict + torch.diag_embed(softplus(self.raw_tril.diagonal()) + 1e-6)


class LinearGaussian(nn.Module):
    """The linear-Gaussian model with an amortized full-covariance Gaussian guide.

    .. math::
        z \\sim \\mathcal N(0, I_K), \\qquad x \\mid z \\sim \\mathcal N(Wz + b, \\Psi),
        \\quad \\Psi = \\operatorname{diag}(\\psi),

    which is factor analysis (probabilistic PCA when :math:`\\psi` is constant) [1, 2].
    Everything is available in closed form:

    .. math::
        p(x) = \\mathcal N(x; b, WW^\\top + \\Psi), \\qquad
        p(z \\mid x) = \\mathcal N(\\Sigma W^\\top \\Psi^{-1} (x - b), \\Sigma), \\quad
        \\Sigma = (I + W^\\top \\Psi^{-1} W)^{-1}.

    The guide :math:`q(z \\mid x) = \\mathcal N(Ax + c, LL^\\top)` is linear in :math:`x`
    and so contains the exact posterior (:meth:`set_guide_to_posterior`); with it the
    ELBO and every importance-weighted bound equal :math:`\\log p(x)`. This is the
    reference that tests of estimators and bounds check against.

    References:
        [1] Tipping & Bishop (1999), "Probabilistic principal component analysis",
        JRSS B 61(3).
        [2] Roweis (1998), "EM algorithms for PCA and SPCA", NeurIPS.
    """

    def __init__(self, num_features: int, latent_dim: int, *, name: str = "linear_gaussian") -> None:
        super().__init__()
        check_positive_int(num_features, "num_features")
        check_positive_int(latent_dim, "latent_dim")
        self.num_features = num_features
        self.latent_dim = latent_dim
        self.name = name
        self.generative = _Generative(num_features, latent_dim)
        self.recognition = _Recognition(num_features, latent_dim)

    def model(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, num_data: int | None = None
    ) -> torch.Tensor:
        """:math:`p(x, z)`; with a missingness ``mask`` (observed = 1, one row per datapoint),
        :math:`p(x_{\\mathrm{obs}}, z)`: the missing features are left out of the density."""
        g = pyro.module(f"{self.name}_generative", self.generative)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            zero = x.new_zeros(())
            z = pyro.sample("z", dist.Normal(zero, zero + 1).expand([self.latent_dim]).to_event(1))
            loc = z @ g.weight.T + g.bias
            noise = dist.Normal(loc, g.noise_variance.sqrt())
            if mask is None:
                pyro.sample("x", noise.to_event(1), obs=x)
            else:
                observed = mask > 0.5
                pyro.sample("x", noise.mask(observed).to_event(1), obs=torch.where(observed, x, zero))
        return z

    def guide(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, num_data: int | None = None
    ) -> torch.Tensor:
        """:math:`q(z \\mid x) = \\mathcal N(Ax + c, LL^\\top)`; with a ``mask`` it reads the
        zero-filled data :math:`x \\odot m`."""
        r = pyro.module(f"{self.name}_recognition", self.recognition)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            if mask is not None:
                x = torch.where(mask > 0.5, x, x.new_zeros(()))
            loc = x @ r.weight.T + r.bias
            return pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=r.scale_tril))

    # ----------------------------------------------------------------- exact answers
    def marginal(self) -> dist.MultivariateNormal:
        """:math:`p(x) = \\mathcal N(b, WW^\\top + \\Psi)`."""
        g = self.generative
        cov = g.weight @ g.weight.T + torch.diag(g.noise_variance)
        return dist.MultivariateNormal(g.bias, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact :math:`\\log p(x_n)` per datapoint (shape ``(N,)``)."""
        return self.marginal().log_prob(x)

    def _posterior_affine(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self.generative
        wt_psi_inv = g.weight.T / g.noise_variance
        precision = torch.eye(self.latent_dim, dtype=g.weight.dtype, device=g.weight.device)
        precision = precision + wt_psi_inv @ g.weight
        cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        gain = cov @ wt_psi_inv  # A = Σ Wᵀ Ψ⁻¹
        return gain, -gain @ g.bias, cov

    def posterior(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dist.MultivariateNormal:
        """Exact :math:`p(z \\mid x_n)`, batched over the rows of ``x``; with a ``mask``,
        :math:`p(z \\mid x_{n,\\mathrm{obs}})`: precision
        :math:`I + W^\\top \\operatorname{diag}(m_n / \\psi) W`
        and mean :math:`\\Sigma_n W^\\top \\operatorname{diag}(m_n / \\psi)(x_n - b)`."""
        if mask is None:
            gain, offset, cov = self._posterior_affine()
            return dist.MultivariateNormal(x @ gain.T + offset, covariance_matrix=cov)
        g = self.generative
        m = (mask > 0.5).to(x.dtype)
        weighted = g.weight.T.unsqueeze(0) * (m / g.noise_variance).unsqueeze(-2)  # (B, K, D)
        eye = torch.eye(self.latent_dim, dtype=x.dtype, device=x.device)
        cov = torch.cholesky_inverse(torch.linalg.cholesky(eye + weighted @ g.weight))
        resid = torch.where(m > 0, x - g.bias, torch.zeros((), dtype=x.dtype, device=x.device))
        loc = (cov @ (weighted @ resid.unsqueeze(-1))).squeeze(-1)
        return dist.MultivariateNormal(loc, covariance_matrix=cov)

    def predictive(self, x: torch.Tensor, mask: torch.Tensor) -> dist.MultivariateNormal:
        """Exact :math:`p(\\tilde x \\mid x_{n,\\mathrm{obs}})` of a new draw of every feature,
        :math:`\\mathcal N(W\\mu_n + b,\\ W\\Sigma_n W^\\top + \\Psi)` with :math:`(\\mu_n, \\Sigma_n)` of
        :meth:`posterior`; its marginal on the missing features is the imputation distribution
        :math:`p(x_{\\mathrm{miss}} \\mid x_{\\mathrm{obs}})`."""
        post = self.posterior(x, mask)
        g = self.generative
        cov = g.weight @ post.covariance_matrix @ g.weight.T + torch.diag(g.noise_variance)
        return dist.MultivariateNormal(post.loc @ g.weight.T + g.bias, covariance_matrix=cov)

    def guide_distribution(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """The guide's :math:`q(z \\mid x_n)`, batched over rows."""
        r = self.recognition
        return dist.MultivariateNormal(x @ r.weight.T + r.bias, scale_tril=r.scale_tril)

    def exact_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Closed-form ELBO per datapoint: :math:`\\log p(x) - \\mathrm{KL}(q(z|x) \\| p(z|x))`."""
        kl = torch.distributions.kl_divergence(self.guide_distribution(x), self.posterior(x))
        return self.log_marginal(x) - kl

    @torch.no_grad()
    def set_guide_to_posterior(self) -> None:
        """Set the guide's parameters so that :math:`q(z \\mid x) = p(z \\mid x)` exactly."""
        gain, offset, cov = self._posterior_affine()
        r = self.recognition
        r.weight.copy_(gain)
        r.bias.copy_(offset)
        tril = torch.linalg.cholesky(cov)
        diag = tril.diagonal() - 1e-6
        raw_diag = diag + torch.log(-torch.expm1(-diag))  # inverse softplus
        r.raw_tril.copy_(tril.tril(-1) + torch.diag_embed(raw_diag))
