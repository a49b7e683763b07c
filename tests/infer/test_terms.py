"""Terms of a run: factors, auxiliary sites, scales, model-proposed latents, analytic KL."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vae.conventions import AUXILIARY
from pyro_vae.errors import InputError
from pyro_vae.infer import MeanFieldELBO, ParticleLoss, log_terms
from pyro_vae.models import LinearGaussian


def _gaussian(scale=1.0, guide_factor=0.0, aux=0.0, model_factor=0.0, plate="data"):
    """z ~ N(0, 1), x ~ N(z, 1): log p(x) = N(x; 0, 2); guide N(x/2, sqrt(1/2)) is the posterior."""

    def model(x):
        with pyro.plate(plate, x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            with poutine.scale(scale=scale):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            if model_factor:
                pyro.factor("penalty", model_factor * torch.ones_like(x))
            if aux:
                pyro.sample("aux", dist.Normal(x, 1.0), obs=x, infer={AUXILIARY: True})

    def guide(x):
        with pyro.plate(plate, x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
            if guide_factor:
                pyro.factor("classification", guide_factor * torch.ones_like(x), has_rsample=True)

    return model, guide


def _exact(x):
    return dist.Normal(0.0, 2.0**0.5).log_prob(x)


X = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)


@pytest.mark.parametrize("plate", ["data", "batch"])
def test_exact_posterior_guide_gives_log_p_at_every_particle(plate):
    model, guide = _gaussian(plate=plate)
    lw = log_terms(model, guide, X, num_particles=7).log_weight
    assert torch.allclose(lw, _exact(X).expand(7, 3), atol=1e-10)


def test_guide_factors_and_auxiliary_sites_are_left_out_of_evaluation():
    """A pyro.factor in the guide (scANVI's classification term) and an auxiliary model site are
    training terms: the bound stays log p(x), not log p(x) - factor."""
    model, guide = _gaussian(guide_factor=-8.7, aux=1.0)
    lw = log_terms(model, guide, X, num_particles=3).log_weight
    assert torch.allclose(lw, _exact(X).expand(3, 3), atol=1e-10)


class PlainELBO(ParticleLoss):
    """The reparameterized ELBO, written as the loss base's docstring shows: one method."""

    def surrogate(self, terms):
        objective = terms.batch_objective(terms.training_weight().mean(0))
        return objective, objective


def test_training_counts_guide_factors_as_pyro_trace_elbo_does():
    model, guide = _gaussian(guide_factor=-8.7)
    ours = PlainELBO().loss(model, guide, X)
    pyro.set_rng_seed(1)
    theirs = pyro.infer.Trace_ELBO().loss(model, guide, X)
    # exact posterior guide: Trace_ELBO's loss is -sum log p(x) + sum factor, with no noise
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert ours == pytest.approx(-_exact(X).sum().item() - 8.7 * 3, abs=1e-6)


def test_model_factors_are_part_of_the_unnormalized_model():
    model, guide = _gaussian(model_factor=0.25)
    lw = log_terms(model, guide, X, num_particles=2).log_weight
    assert torch.allclose(lw, (_exact(X) + 0.25).expand(2, 3), atol=1e-10)


def test_evaluation_ignores_site_scales_and_training_keeps_them():
    model, guide = _gaussian(scale=0.5)
    lw = log_terms(model, guide, X, num_particles=2).log_weight
    assert torch.allclose(lw, _exact(X).expand(2, 3), atol=1e-10)
    pyro.set_rng_seed(0)
    ours = MeanFieldELBO().loss(model, guide, X)
    pyro.set_rng_seed(0)
    theirs = pyro.infer.TraceMeanField_ELBO().loss(model, guide, X)
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_a_model_latent_the_guide_does_not_sample_is_proposed_by_the_prior():
    """Sampling the mixture label from the model makes it its own proposal: the weight
    p(x|y) p(z) / q(z) is unbiased for p(x), and L_K climbs to the exact log p(x)."""
    means = torch.tensor([-1.5, 1.5], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=torch.zeros(2, dtype=torch.float64)))
            pyro.sample("x", dist.Normal(means[y], 1.0), obs=x)

    def guide(x):
        pass

    x = torch.tensor([0.1, -2.0], dtype=torch.float64)
    exact = torch.stack([dist.Normal(m, 1.0).log_prob(x) for m in means]).logsumexp(0) - torch.log(
        torch.tensor(2.0, dtype=torch.float64)
    )
    lw = log_terms(model, guide, x, num_particles=20000).log_weight
    assert torch.allclose(lw.logsumexp(0) - torch.log(torch.tensor(20000.0)), exact, atol=0.02)


def test_global_latents_are_refused_by_per_datapoint_evaluation_with_the_site_named():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))

    with pytest.raises(InputError, match=r"\['mu'\] are outside the data plate"):
        log_terms(model, guide, X)
    assert MeanFieldELBO().loss(model, guide, X) == pytest.approx(
        -dist.Normal(0, 2**0.5).log_prob(X).sum(), abs=10
    )


def test_no_plate_of_the_batch_size_is_a_clear_error():
    def model(x):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))

    with pytest.raises(InputError, match="pyro.plate"):
        log_terms(model, guide, X)


def test_analytic_kl_terms_equal_the_closed_form_elbo():
    lg = LinearGaussian(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    terms = log_terms(lg.model, lg.guide, x, num_particles=20000, analytic_kl=True)
    lw = terms.log_weight
    se = lw.std(0) / 20000**0.5
    assert ((lw.mean(0) - lg.exact_elbo(x)).abs() < 4 * se).all()


class _PerDatapointMeanField(MeanFieldELBO):
    """MeanFieldELBO without the totals fast path: the per-datapoint reduction throughout."""

    linear_objective = False


def _everything_program():
    """A global latent, a KL weight (poutine.scale), a mask, a guide factor and an auxiliary
    term, inside a subsampled data plate: every way a site's scale and mask enter the terms."""

    def model(x, num_data=None):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            with poutine.scale(scale=0.3):
                z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            with poutine.mask(mask=torch.arange(len(x)) % 3 != 0):
                pyro.sample("x", dist.Normal(z + mu, 1.0), obs=x)
            pyro.sample("aux", dist.Normal(x, 1.0), obs=x + 0.1, infer={AUXILIARY: True})

    def guide(x, num_data=None):
        w = pyro.param("w", torch.tensor(0.4, dtype=x.dtype))
        pyro.sample("mu", dist.Normal(w, 0.7))
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            with poutine.scale(scale=0.3):
                z = pyro.sample("z", dist.Normal(w * x, 0.8))
            pyro.factor("classification", -(z**2), has_rsample=True)

    return model, guide


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("vectorize", [None, False])
def test_totals_fast_path_equals_the_per_datapoint_path(num_particles, vectorize):
    """Same draws, same value and same gradient, vectorized and sequential."""
    model, guide = _everything_program()
    x = torch.tensor([0.3, -1.2, 2.0, 0.5], dtype=torch.float64)
    results = []
    for cls in (MeanFieldELBO, _PerDatapointMeanField):
        pyro.clear_param_store()
        pyro.set_rng_seed(4)
        loss = cls(num_particles=num_particles, vectorize_particles=vectorize)
        value = loss.differentiable_loss(model, guide, x, num_data=40)
        (grad,) = torch.autograd.grad(value, [pyro.param("w").unconstrained()])
        results.append((value.detach(), grad))
    (v1, g1), (v2, g2) = results
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1, g2)


def test_evaluation_refuses_a_guide_latent_the_model_does_not_have():
    """A guide-only latent adds -log q(u) with no prior: the 'bound' then exceeded log p(x)
    (1.10 against -5.09 in a trial); evaluation names the site instead. Sites marked
    is_auxiliary are Pyro's promise that a later site completes them (its autoguides)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("u", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))

    with pytest.raises(InputError, match="guide site 'u' is not a site of the model"):
        log_terms(model, guide, X)


def test_pyros_autonormal_is_evaluated_exactly():
    """AutoNormal samples an auxiliary 'z_unconstrained' and a Delta at 'z' that carries the
    change of variables: the pair is q(z). With its loc and scale set to the exact posterior,
    every log-weight is log p(x)."""
    from pyro.infer.autoguide import AutoNormal

    model, _ = _gaussian()
    guide = AutoNormal(model)
    guide(X)
    guide.locs.z = torch.nn.Parameter(X / 2)
    guide.scales.z = torch.full_like(X, 0.5**0.5)
    lw = log_terms(model, guide, X, num_particles=5).log_weight
    assert torch.allclose(lw, _exact(X).expand(5, 3), atol=1e-10)
