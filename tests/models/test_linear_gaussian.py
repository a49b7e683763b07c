"""The linear-Gaussian reference model against scipy and brute-force Bayes."""

import itertools

import numpy as np
import pyro
import scipy.stats as st
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.infer import MeanFieldELBO
from tests._linear_gaussian import random_linear_gaussian


def _model(d=5, k=2, seed=0):
    return random_linear_gaussian(d, k, seed)


def test_log_marginal_matches_scipy_multivariate_normal():
    m = _model()
    x = torch.randn(7, 5, dtype=torch.float64)
    g = m.generative
    cov = (g.weight @ g.weight.T + torch.diag(g.noise_variance)).detach().numpy()
    ref = st.multivariate_normal(g.bias.detach().numpy(), cov).logpdf(x.numpy())
    np.testing.assert_allclose(m.log_marginal(x).detach().numpy(), ref, rtol=1e-10)


def test_posterior_is_bayes_rule():
    """log p(z|x) = log p(x|z) + log p(z) - log p(x), checked at random z."""
    m = _model()
    x = torch.randn(3, 5, dtype=torch.float64)
    z = torch.randn(3, 2, dtype=torch.float64)
    g = m.generative
    log_lik = st.norm.logpdf(
        x.numpy(), (z @ g.weight.T + g.bias).detach().numpy(), g.noise_variance.sqrt().detach().numpy()
    ).sum(-1)
    log_prior = st.norm.logpdf(z.numpy()).sum(-1)
    expected = log_lik + log_prior - m.log_marginal(x).detach().numpy()
    np.testing.assert_allclose(m.posterior(x).log_prob(z).detach().numpy(), expected, rtol=1e-9)


def test_exact_guide_makes_every_importance_weight_log_p_x():
    m = _model()
    m.set_guide_to_posterior()
    x = torch.randn(4, 5, dtype=torch.float64)
    q, p = m.guide_distribution(x), m.posterior(x)
    torch.testing.assert_close(q.loc, p.loc)
    torch.testing.assert_close(q.covariance_matrix, p.covariance_matrix)
    torch.testing.assert_close(m.exact_elbo(x), m.log_marginal(x))


def test_exact_elbo_is_below_log_marginal_for_other_guides():
    m = _model()
    x = torch.randn(20, 5, dtype=torch.float64)
    gap = m.log_marginal(x) - m.exact_elbo(x)
    assert (gap > 0).all()


def test_minibatch_estimate_is_unbiased_for_the_full_data_elbo():
    """With the exact posterior as guide every particle's ELBO equals log p(x), so the
    subsampled estimate (N/B) sum_batch log p(x_i) is deterministic and its average over
    all C(N, B) minibatches must equal sum_n log p(x_n) exactly."""
    m = _model()
    m.set_guide_to_posterior()
    n, b = 6, 2
    x = torch.randn(n, 5, dtype=torch.float64)
    exact = m.log_marginal(x).sum()
    for loss in (Trace_ELBO(), MeanFieldELBO()):
        estimates = [
            -loss.loss(m.model, m.guide, x[list(idx)], num_data=n)
            for idx in itertools.combinations(range(n), b)
        ]
        # each estimate is (N/B) times its batch's sum, not the full sum:
        assert np.std(estimates) > 1.0
        np.testing.assert_allclose(np.mean(estimates), exact.item(), rtol=1e-9)
    pyro.clear_param_store()
