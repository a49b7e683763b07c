"""The scVI model: its count likelihood against scipy.stats, its bounds against log p(x) by
quadrature, its library prior, training on real counts, and its checks."""

from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from scipy import stats
from scipy.special import expit, log_softmax, logsumexp

from pyro_vae.bounds import elbo, iwae, log_marginal
from pyro_vae.errors import InputError
from pyro_vae.likelihoods import ZINB, Gaussian, NegativeBinomial
from pyro_vae.models import LibraryPrior, ScVI
from pyro_vae.train import fit

REAL = Path(__file__).parents[1] / "data" / "files" / "celltypist_counts.h5ad"


def _counts(cells: int, genes: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rate = torch.distributions.Gamma(2.0, 0.2).sample((cells, genes))
    x = torch.poisson(rate, generator=gen)
    x[:, 0] += 1
    return x.double()


def _scipy_log_likelihood(model: ScVI, z: torch.Tensor, y, x: torch.Tensor, log_library) -> np.ndarray:
    """log p(x | z, s, l) per cell from the decoder's output, with scipy's nbinom."""
    out = model.decoder(model._cat(z, y)).detach().numpy()
    genes = model.num_features
    mu = np.exp(log_softmax(out[:, :genes], axis=-1) + log_library.numpy())
    theta = model.likelihood.inverse_dispersion.detach().numpy()
    nb = stats.nbinom.logpmf(x.numpy(), n=theta, p=theta / (theta + mu))
    if isinstance(model.likelihood, NegativeBinomial):
        return nb.sum(-1)
    pi = expit(out[:, genes:])
    zero = x.numpy() == 0
    mixed = np.where(zero, np.logaddexp(np.log(pi), np.log1p(-pi) + nb), np.log1p(-pi) + nb)
    return mixed.sum(-1)


@pytest.mark.parametrize("likelihood", [NegativeBinomial, ZINB])
@pytest.mark.parametrize("batches", [0, 3])
def test_count_likelihood_of_the_program_equals_scipy_nbinom(likelihood, batches):
    torch.manual_seed(0)
    x = _counts(6, 7)
    model = ScVI(likelihood(7), num_batches=batches, latent_dim=2, hidden=(5,)).double()
    with torch.no_grad():
        model.likelihood.log_inverse_dispersion.copy_(torch.linspace(-1, 2, 7))
    y = torch.tensor([0, 1, 2, 0, 1, 2]) if batches else None
    z = torch.randn(6, 2, dtype=torch.float64)
    trace = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(x, y)
    site = trace.nodes["x"]
    ours = site["fn"].log_prob(site["value"]).detach().numpy()
    exact = _scipy_log_likelihood(model, z, y, x, x.sum(-1, keepdim=True).log())
    np.testing.assert_allclose(ours, exact, rtol=1e-10)
    if batches:  # the batch enters the decoder
        other = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(x, (y + 1) % 3)
        assert not torch.allclose(other.nodes["x"]["fn"].log_prob(x), site["fn"].log_prob(x))


def _log_marginal_by_quadrature(model: ScVI, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log of the integral of N(z; 0, 1) p(x | z) over a one-dimensional z, on a
    fine grid (the integrand is smooth and negligible beyond |z| = 8)."""
    grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    dz = grid[1] - grid[0]
    z = grid[:, None, None].expand(len(grid), len(x), 1)
    log_lik = model.observation(z, None, x.sum(-1, keepdim=True).log()).log_prob(x)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(grid)[:, None]
    return torch.from_numpy(logsumexp((log_prior + log_lik).detach().numpy(), axis=0)) + dz.log()


def test_bounds_bracket_the_log_marginal_from_quadrature():
    """ELBO <= L_K <= log p(x) per cell, and L_K at large K meets log p(x) computed by quadrature."""
    torch.manual_seed(1)
    x = _counts(5, 4, seed=2)
    model = ScVI(NegativeBinomial(4), latent_dim=1, hidden=(8,)).double()
    fit(model.model, model.guide, x, epochs=40, batch_size=None, lr=3e-2, progress=False)
    exact = _log_marginal_by_quadrature(model, x)
    pyro.set_rng_seed(0)
    el = elbo(model.model, model.guide, x, num_particles=2000, return_error=True)
    lk = log_marginal(model.model, model.guide, x, num_particles=5000)
    assert (el.value < exact + 4 * el.standard_error).all()
    assert ((lk.value - exact).abs() < 4 * lk.standard_error + 1e-3).all()
    assert (el.value < lk.value).all()


def test_library_prior_is_the_per_batch_log_normal_of_the_data():
    x = _counts(30, 5)
    batch = torch.arange(30) % 3
    prior = LibraryPrior.from_counts(x, batch, num_batches=3)
    log_l = x.sum(-1).log().numpy()
    for s in range(3):
        assert prior.loc[s].item() == pytest.approx(log_l[batch.numpy() == s].mean())
        assert prior.scale[s].item() == pytest.approx(log_l[batch.numpy() == s].std(ddof=1))
    d = prior(batch[:4], like=x[:4])
    assert d.event_shape == (1,) and d.batch_shape == (4,)
    with pytest.raises(InputError, match="positive total count"):
        LibraryPrior.from_counts(torch.zeros(2, 3))


def test_a_latent_library_is_a_second_latent_site_and_the_bounds_order():
    torch.manual_seed(0)
    x, batch = _counts(12, 6), torch.arange(12) % 2
    prior = LibraryPrior.from_counts(x, batch, num_batches=2)
    model = ScVI(ZINB(6), num_batches=2, latent_dim=2, hidden=(8,), library_prior=prior).double()
    trace = poutine.trace(model.guide).get_trace(x, batch)
    assert {"z", "log_library"} <= set(trace.stochastic_nodes)
    # q(log l) starts at the prior's mean
    assert trace.nodes["log_library"]["fn"].mean.mean().item() == pytest.approx(
        prior.loc.mean().item(), abs=1
    )
    pyro.set_rng_seed(0)
    one = iwae(model.model, model.guide, x, batch, num_particles=1)
    many = iwae(model.model, model.guide, x, batch, num_particles=200, return_error=True)
    el = elbo(model.model, model.guide, x, batch, num_particles=200, return_error=True)
    assert torch.isfinite(one).all() and (el.value < many.value).all()


def test_training_on_real_counts_raises_the_held_out_elbo():
    from pyro_vae.data.h5ad import load_h5ad

    pytest.importorskip("anndata")
    data = load_h5ad(REAL, layer="counts")
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=gen)
    train, val = data.x[order[:400]], data.x[order[400:480]]
    torch.manual_seed(0)
    model = ScVI(ZINB(data.num_features), latent_dim=4, hidden=(32,))
    model.validate_data(train)
    before = elbo(model.model, model.guide, val, num_particles=10)
    result = fit(model.model, model.guide, train, validation=val, epochs=4, batch_size=100, progress=False)
    after = elbo(model.model, model.guide, val, num_particles=10)
    gain = after - before  # per held-out cell, paired
    assert result.scaling == ("program",)
    assert gain.mean() > 4 * gain.std() / len(gain) ** 0.5
    assert result.history[-1]["val_elbo"] > result.history[0]["val_elbo"]


def test_bad_inputs_are_named():
    with pytest.raises(InputError, match="NegativeBinomial or ZINB"):
        ScVI(Gaussian(3))
    with pytest.raises(InputError, match="library prior has 1 groups but the model has 2"):
        ScVI(ZINB(3), num_batches=2, library_prior=LibraryPrior.from_counts(_counts(4, 3)))
    model = ScVI(NegativeBinomial(3), num_batches=2)
    x = _counts(4, 3).float()
    with pytest.raises(InputError, match="no batch codes"):
        model.validate_data(x)
    with pytest.raises(InputError, match=r"must lie in \[0, 2\)"):
        model.validate_data(x, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(InputError, match="no counts at rows"):
        model.validate_data(torch.cat([x, torch.zeros(1, 3)]), torch.tensor([0, 1, 0, 1, 0]))
    with pytest.raises(InputError, match="non-integer"):
        model.validate_data(x + 0.5, torch.tensor([0, 1, 0, 1]))
