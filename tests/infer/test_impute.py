"""Imputation by self-normalized importance sampling against the linear-Gaussian model's exact
p(x_miss | x_obs), with the exact posterior and with an amortized guide as proposal."""

import pyro
import pytest
import torch

from pyro_vae.errors import InputError
from pyro_vae.imputation import impute
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import LinearGaussian, MaskedVAE


def _model(d=5, k=2, seed=0):
    torch.manual_seed(seed)
    m = LinearGaussian(d, k).double()
    with torch.no_grad():
        m.generative.bias.normal_()
        m.generative.raw_noise.normal_(0, 0.5)
        m.set_guide_to_posterior()  # of complete data: with a mask it is only an approximation
    return m


def _data(m, n=4):
    x = m.marginal().sample((n,)).detach()
    mask = torch.ones(n, m.num_features, dtype=torch.float64)
    for i in range(n):  # a different pattern per row, 2 features missing
        mask[i, [i % 5, (i + 2) % 5]] = 0
    return torch.where(mask > 0, x, torch.nan).nan_to_num(0.0), mask


def _check_against_exact(m, x, mask, result, se_scale):
    """Mean and covariance of the draws at the missing features within 4 SE of the exact
    predictive, row by row (``se_scale`` effective draws per row)."""
    exact = m.predictive(x, mask)
    for i in range(x.shape[0]):
        miss = (mask[i] == 0).nonzero().flatten()
        cov = exact.covariance_matrix[i][miss][:, miss].detach()
        mean = exact.loc[i, miss].detach()
        draws = result.samples[:, i, miss]
        se = (cov.diagonal() / se_scale[i]).sqrt()
        assert ((draws.mean(0) - mean).abs() < 4 * se).all()
        assert ((result.mean[i, miss] - mean).abs() < 4 * se).all()
        var_se = cov.diagonal() * (2 / se_scale[i]) ** 0.5
        assert ((draws.var(0) - cov.diagonal()).abs() < 4 * var_se).all()
        off = torch.cov(draws.T)[0, 1]
        off_se = ((cov[0, 0] * cov[1, 1] + cov[0, 1] ** 2) / se_scale[i]).sqrt()
        assert (off - cov[0, 1]).abs() < 4 * off_se
        # observed features are returned as given
        obs = mask[i] > 0
        assert torch.equal(result.samples[:, i, obs], x[i, obs].expand(draws.shape[0], -1))


def test_the_exact_posterior_as_proposal_gives_exact_draws_and_equal_weights():
    m = _model()
    x, mask = _data(m)

    def exact_guide(x, mask):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", m.posterior(x, mask))

    result = impute(m.model, exact_guide, x, mask, num_samples=4000, num_particles=4000)
    torch.testing.assert_close(result.ess, torch.full((4,), 4000.0, dtype=torch.float64))
    # each weight is p(x_obs): the exact marginal of the observed features
    for i in range(4):
        obs = (mask[i] > 0).nonzero().flatten()
        marg = m.marginal()
        sub = torch.distributions.MultivariateNormal(
            marg.loc[obs], covariance_matrix=marg.covariance_matrix[obs][:, obs]
        )
        torch.testing.assert_close(result.log_weights[:, i], sub.log_prob(x[i, obs]).detach().expand(4000))
    # draws are independent when every particle is distinct: 4000 effective draws per row
    _check_against_exact(m, x, mask, result, torch.full((4,), 4000.0))


def test_imputation_with_an_amortized_guide_matches_the_exact_conditional_within_se():
    """SNIS with the complete-data posterior's encoder (fed zero-filled data), its scale
    doubled (an overdispersed proposal, as importance sampling wants), as proposal: the
    imputations' mean and covariance are within 4 SE, counted with the weights' ESS."""
    m = _model()
    with torch.no_grad():
        tril = 2 * m.recognition.scale_tril
        diag = tril.diagonal() - 1e-6
        m.recognition.raw_tril.copy_(tril.tril(-1) + torch.diag_embed(diag + torch.log(-torch.expm1(-diag))))
    x, mask = _data(m)
    result = impute(m.model, m.guide, x, mask, num_samples=4000, num_particles=4000)
    assert (result.ess < 4000).all() and (result.ess > 50).all()
    _check_against_exact(m, x, mask, result, torch.minimum(result.ess, torch.tensor(4000.0)))


def test_impute_runs_on_a_masked_vae_and_refuses_an_unmasked_model():
    torch.manual_seed(0)
    vae = MaskedVAE(Bernoulli(6), latent_dim=2, hidden=(8,))
    x = (torch.rand(5, 6) < 0.5).float()
    mask = (torch.rand(5, 6) < 0.5).float()
    result = impute(vae.model, vae.guide, x, mask, num_samples=7, num_particles=20)
    assert result.samples.shape == (7, 5, 6) and result.mean.shape == (5, 6)
    assert ((result.samples == 0) | (result.samples == 1)).all()
    assert torch.equal(result.samples[:, mask > 0], x[mask > 0].expand(7, -1))
    assert ((result.ess >= 1 - 1e-6) & (result.ess <= 20 + 1e-6)).all()

    m = _model()

    def unmasked(x, mask):
        return m.model(x)

    with pytest.raises(InputError, match="not masked"):
        impute(unmasked, m.guide, x.double()[:, :5], mask.double()[:, :5], num_samples=2, num_particles=3)
    with pytest.raises(InputError, match="mask has shape"):
        impute(m.model, m.guide, x.double()[:, :5], mask.double()[:, :4], num_samples=2, num_particles=3)


def test_a_corpus_program_without_a_mask_argument_gets_an_error_naming_the_idiom():
    """Pyro's vae.py (model(x), guide(x)) cannot impute: the error says what program it needs."""
    from tests.programs import CASES

    case = CASES["no_num_data"]
    program, (x,) = case.build(), case.data(4)
    mask = torch.ones_like(x)
    with pytest.raises(InputError, match=r"model\(x, mask\).*second positional argument"):
        impute(program.model, program.guide, x, mask, num_samples=2, num_particles=3)


def test_a_refined_guide_is_a_better_proposal():
    """Refinement composes with impute: the refined q_S of the masked linear-Gaussian model
    approaches p(z | x_obs) (sigma-point steps are exact here), so the ESS approaches K."""
    from pyro_vae.infer.refined_guide import refined_guide

    m = _model()
    x, mask = _data(m)
    base = impute(m.model, m.guide, x, mask, num_samples=10, num_particles=500)
    guide = refined_guide(m.model, m.guide, steps=100, lr=0.05, sigma_points=True)
    refined = impute(m.model, guide, x, mask, num_samples=10, num_particles=500)
    assert (refined.ess > base.ess).all()
    assert (refined.ess > 0.99 * 500).all()
