"""The scVI model of single-cell counts (Lopez et al. 2018) as a Pyro model/guide pair."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.likelihoods.base import Likelihood, check_likelihood
from pyro_vae.likelihoods.negative_binomial import NegativeBinomial
from pyro_vae.likelihoods.zinb import ZINB
from pyro_vae.models.covariates import append_covariate
from pyro_vae.models.kl_scale import kl_scale
from pyro_vae.models.prior_samples import draw_prior
from pyro_vae.networks import GaussianEncoder, mirrored_decoder
from pyro_vae.priors import StandardNormal


class LibraryPrior(nn.Module):
    """Log-normal prior of a cell's library size :math:`\\ell_n` in batch :math:`s_n`,

    .. math:: \\log \\ell_n \\sim \\mathcal N(m_{s_n}, v_{s_n}),

    with :math:`m_s, v_s` the empirical mean and variance of the log total counts of the
    cells of batch :math:`s` (scVI's data-derived prior [1]); buffers, not parameters.

    References:
        [1] Lopez, Regier, Cole, Jordan & Yosef (2018), "Deep generative modeling for
        single-cell transcriptomics", Nature Methods 15, 1053-1058.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        if loc.shape != scale.shape or loc.dim() != 1 or not (scale > 0).all():
            raise InputError("library prior: loc and scale must be 1-D of the same length, scale > 0")
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())

    @classmethod
    def from_counts(
        cls, x: torch.Tensor, batch: torch.Tensor | None = None, *, num_batches: int = 0
    ) -> LibraryPrior:
        """Mean and standard deviation of :math:`\\log \\sum_g x_{ng}` per batch (one group
        without batches; a batch with one cell gets scale 1)."""
        log_library = x.sum(-1).log()
        if not torch.isfinite(log_library).all():
            raise InputError("library prior: every cell needs a positive total count")
        groups = max(num_batches, 1)
        codes = torch.zeros(len(x), dtype=torch.long) if batch is None or not num_batches else batch.long()
        loc, scale = torch.zeros(groups, dtype=x.dtype), torch.ones(groups, dtype=x.dtype)
        for s in range(groups):
            values = log_library[codes.to(log_library.device) == s]
            if len(values):
                loc[s] = values.mean()
            if len(values) > 1 and values.std() > 0:
                scale[s] = values.std()
        return cls(loc, scale)

    def forward(self, codes: torch.Tensor | None, *, like: torch.Tensor) -> dist.TorchDistribution:
        """:math:`\\mathcal N(m_s, v_s)` per cell, event shape ``(1,)``."""
        loc, scale = self.loc.to(like), self.scale.to(like)
        index = torch.zeros(like.shape[0], dtype=torch.long, device=like.device) if codes is None else codes
        normal = dist.Normal(loc[index].unsqueeze(-1), scale[index].unsqueeze(-1), validate_args=False)
        return normal.to_event(1)


class ScVI(nn.Module):
    """Single-cell variational inference [1]: a VAE for UMI counts with library size and
    batch as covariates.

    For cell :math:`n` of batch :math:`s_n` with counts :math:`x_{ng}` over genes :math:`g`:

    .. math::
        z_n \\sim \\mathcal N(0, I), \\qquad
        \\rho_n = \\operatorname{softmax}(f_\\theta(z_n, s_n)), \\qquad
        x_{ng} \\mid z_n \\sim \\mathrm{NB}(\\ell_n \\rho_{ng}, \\theta_g)
        \\ \\text{or}\\ \\mathrm{ZINB}(\\ell_n \\rho_{ng}, \\theta_g, \\pi_{ng}),

    with a gene-wise inverse dispersion :math:`\\theta_g` and, for ZINB, a dropout
    probability :math:`\\pi_{ng} = \\sigma(g_\\theta(z_n, s_n))` (the likelihood objects of
    :mod:`pyro_vae.likelihoods`, given the log mean :math:`\\log \\ell_n + \\log \\rho_{ng}`).
    The library size :math:`\\ell_n` is either observed, :math:`\\ell_n = \\sum_g x_{ng}` (a
    size factor; ``library_prior=None``), or latent with the data-derived log-normal prior of
    :class:`LibraryPrior` and its own Gaussian guide on :math:`\\log \\ell_n`. The batch enters
    encoder and decoder one-hot; the encoder sees :math:`\\log(1 + x_n)`:

    .. math::
        q(z_n \\mid x_n, s_n) = \\mathcal N(\\mu_\\phi(\\log(1 + x_n), s_n),
        \\operatorname{diag}\\sigma^2_\\phi(\\cdot)).

    ``kl_weight`` (KL warm-up) scales the terms of :math:`z` only, as in scVI.

    :param likelihood: :class:`~pyro_vae.likelihoods.NegativeBinomial` or
        :class:`~pyro_vae.likelihoods.ZINB` over the genes.
    :param num_batches: the number of batches (0: no batch covariate; ``y`` is then ignored).
    :param library_prior: ``None`` for the observed library size, or a :class:`LibraryPrior`
        (e.g. ``LibraryPrior.from_counts(x, batch, num_batches=...)``) for a latent one.

    References:
        [1] Lopez, Regier, Cole, Jordan & Yosef (2018), "Deep generative modeling for
        single-cell transcriptomics", Nature Methods 15, 1053-1058.
    """

    def __init__(
        self,
        likelihood: Likelihood,
        *,
        num_batches: int = 0,
        latent_dim: int = 10,
        hidden: Sequence[int] = (128,),
        activation: Callable[[], nn.Module] = nn.ReLU,
        library_prior: LibraryPrior | None = None,
        name: str = "scvi",
    ) -> None:
        super().__init__()
        check_likelihood(likelihood)
        if not isinstance(likelihood, NegativeBinomial | ZINB):
            raise InputError(
                f"ScVI models counts: its likelihood must be NegativeBinomial or ZINB, "
                f"got {type(likelihood).__name__}"
            )
        check_positive_int(latent_dim, "latent_dim")
        check_positive_int(num_batches, "num_batches", minimum=0)
        if library_prior is not None and len(library_prior.loc) != max(num_batches, 1):
            raise InputError(
                f"library prior has {len(library_prior.loc)} groups but the model has "
                f"{max(num_batches, 1)} batch(es)"
            )
        self.num_features = likelihood.num_features
        self.latent_dim = latent_dim
        self.num_batches = num_batches
        self.num_classes = num_batches  # the covariate's size, as for a conditional VAE
        self.name = name
        self.likelihood = likelihood
        self.prior = StandardNormal(latent_dim)
        self.library_prior = library_prior
        width = self.num_features + num_batches
        self.encoder = GaussianEncoder(width, hidden, latent_dim, activation=activation)
        self.library_encoder = None
        if library_prior is not None:
            self.library_encoder = GaussianEncoder(width, hidden, 1, activation=activation)
            with torch.no_grad():  # start q(log l) at the prior's mean, not at log l = 0
                self.library_encoder.net[-1].bias[0] = library_prior.loc.mean()
        self.decoder = mirrored_decoder(
            latent_dim + num_batches, hidden, likelihood.num_outputs, activation=activation
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
        """:math:`p(x, z, \\log \\ell \\mid s)`; ``y`` holds the batch codes."""
        pyro.module(f"{self.name}_decoder", self.decoder)
        pyro.module(f"{self.name}_likelihood", self.likelihood)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            with kl_scale(kl_weight):
                z = pyro.sample("z", self.prior(x))
            if self.library_prior is not None:
                log_library = pyro.sample("log_library", self.library_prior(self._codes(y), like=x))
            else:
                log_library = x.sum(-1, keepdim=True).log()
            pyro.sample("x", self.observation(z, y, log_library), obs=x)
        return z

    def guide(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        kl_weight: float = 1.0,
    ) -> torch.Tensor:
        """:math:`q(z \\mid x, s)` (and :math:`q(\\log \\ell \\mid x, s)` for a latent library)."""
        pyro.module(f"{self.name}_encoder", self.encoder)
        if self.library_encoder is not None:
            pyro.module(f"{self.name}_library_encoder", self.library_encoder)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            h = self._cat(torch.log1p(x), y)
            loc, scale = self.encoder(h)
            with kl_scale(kl_weight):
                z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            if self.library_encoder is not None:
                l_loc, l_scale = self.library_encoder(h)
                pyro.sample("log_library", dist.Normal(l_loc, l_scale).to_event(1))
        return z

    def observation(
        self, z: torch.Tensor, y: torch.Tensor | None, log_library: torch.Tensor
    ) -> dist.TorchDistribution:
        """:math:`p(x \\mid z, s, \\ell)`: the likelihood at log mean
        :math:`\\log \\ell + \\log \\operatorname{softmax}(f(z, s))` (plus the dropout logits)."""
        out = self.decoder(self._cat(z, y))
        rho_logits, rest = out[..., : self.num_features], out[..., self.num_features :]
        log_mean = torch.log_softmax(rho_logits, dim=-1) + log_library
        return self.likelihood(torch.cat([log_mean, rest], dim=-1))

    # ----------------------------------------------------------------- helpers
    def _codes(self, y: torch.Tensor | None) -> torch.Tensor | None:
        if self.num_batches == 0:
            return None
        if y is None:
            raise InputError(f"this model has {self.num_batches} batches; pass their codes as y")
        return y.long()

    def _cat(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Append the one-hot batch to ``h`` (broadcasting over leading particle dims)."""
        codes = self._codes(y)
        if codes is None:
            return h
        return append_covariate(h, nn.functional.one_hot(codes, self.num_batches).to(h))

    def validate_data(self, x: torch.Tensor, y: torch.Tensor | None = None, *, name: str = "data") -> None:
        """Counts of the right width; a positive total per cell (the observed library size);
        batch codes in range."""
        self.likelihood.check_data(x, name=name)
        empty = x.sum(-1) <= 0
        if self.library_prior is None and empty.any():
            rows = empty.nonzero().flatten()[:5].tolist()
            raise InputError(
                f"{name} has cells with no counts at rows {rows}: the observed library size must be "
                "positive; remove empty cells"
            )
        if self.num_batches:
            if y is None:
                raise InputError(f"the model has {self.num_batches} batches but {name} has no batch codes")
            if y.shape != (x.shape[0],) or torch.is_floating_point(y):
                raise InputError(f"batch codes of {name} must be integers of shape ({x.shape[0]},)")
            bad = (y < 0) | (y >= self.num_batches)
            if bad.any():
                raise InputError(
                    f"batch codes of {name} must lie in [0, {self.num_batches}); out of range at rows "
                    f"{bad.nonzero().flatten()[:5].tolist()}"
                )

    def _log_library(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.library_encoder is None:
            return x.sum(-1, keepdim=True).log()
        return self.library_encoder(self._cat(torch.log1p(x), y))[0]

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of :math:`q(z \\mid x, s)`."""
        return self.encoder(self._cat(torch.log1p(x), y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of :math:`p(x \\mid z = E_q[z], s, \\ell)`, :math:`\\ell` the cell's observed (or
        posterior-mean log) library size."""
        return self.observation(self.encode(x, y)[0], y, self._log_library(x, y)).mean

    @torch.no_grad()
    def sample_prior(
        self,
        num_samples: int,
        y: torch.Tensor | None = None,
        *,
        like: torch.Tensor | None = None,
        library_size: float = 1e4,
    ) -> torch.Tensor:
        """Means of :math:`p(x \\mid z)` for :math:`z \\sim p(z)`, at the library size
        :math:`e^{m_s}` of the library prior, or ``library_size`` when it is observed."""
        z = draw_prior(self, num_samples, like=like)
        codes = self._codes(y) if y is not None else None
        if self.num_batches and codes is None:
            codes = torch.zeros(num_samples, dtype=torch.long, device=z.device)
        if self.library_prior is not None:
            log_library = self.library_prior.loc.to(z)[codes if codes is not None else 0].reshape(-1, 1)
        else:
            log_library = z.new_full((num_samples, 1), math.log(library_size))
        return self.observation(z, codes, log_library.expand(num_samples, 1)).mean
