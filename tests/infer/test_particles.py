"""Particles: vectorized where the program broadcasts, one at a time where it does not."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.errors import InputError
from pyro_vae.infer import collect_terms, log_terms, plan_program, run_particles
from pyro_vae.infer.particles import SEQUENTIAL, SINGLE, VECTORIZED


def _mixture(broadcasting: bool):
    """y ~ Cat(1/3), z ~ N(0, 1), x ~ N(z + m_y, 1) (2 features); guide q(y|x) then q(z|x, y).
    The non-broadcasting guide concatenates x with y, as Pyro's SS-VAE example does."""
    means = torch.tensor([[-2.0, 0.0], [0.0, 2.0], [2.0, -1.0]], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(3, dtype=torch.float64)))
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=torch.float64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + y @ means, 1.0).to_event(1), obs=x)

    def guide(x):
        w = pyro.param("w", torch.full((5,), 0.1, dtype=torch.float64))
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=x @ torch.ones(2, 3, dtype=torch.float64)))
            if broadcasting:
                xy = torch.cat([x.expand(y.shape[:-1] + x.shape[-1:]), y], -1)
            else:
                xy = torch.cat([x, y], -1)  # fails with an extra leading particle dim
            loc = (xy * w).sum(-1, keepdim=True)
            pyro.sample("z", dist.Normal(loc, 0.8).to_event(1))

    return model, guide


def _exact_log_marginal(x):
    means = torch.tensor([[-2.0, 0.0], [0.0, 2.0], [2.0, -1.0]], dtype=torch.float64)
    cov = torch.ones(2, 2, dtype=torch.float64) + torch.eye(2, dtype=torch.float64)
    comps = torch.stack([dist.MultivariateNormal(m, cov).log_prob(x) for m in means])
    return comps.logsumexp(0) - torch.log(torch.tensor(3.0, dtype=torch.float64))


def test_a_guide_that_does_not_broadcast_runs_one_particle_at_a_time():
    x = torch.randn(6, 2, dtype=torch.float64)
    model, guide = _mixture(broadcasting=False)
    with pytest.raises(RuntimeError):  # as the program stands, a particle plate breaks it
        with pyro.plate("p", 3, dim=-2):
            guide(x)
    terms = log_terms(model, guide, x, num_particles=4)
    assert terms.mode == SEQUENTIAL and terms.log_weight.shape == (4, 6)
    model_b, guide_b = _mixture(broadcasting=True)
    assert log_terms(model_b, guide_b, x, num_particles=4).mode == VECTORIZED
    assert log_terms(model, guide, x).mode == SINGLE


def test_sequential_and_vectorized_particles_estimate_the_same_bound():
    """Both estimate E[log w] of the same q; means over 4000 particles agree within 4 SE, and
    L_K with many particles approaches the exact log p(x) from below."""
    x = torch.randn(5, 2, dtype=torch.float64)
    estimates = []
    for broadcasting in (False, True):
        model, guide = _mixture(broadcasting)
        lw = log_terms(model, guide, x, num_particles=4000).log_weight
        w = (lw - lw.max(0).values).exp()
        log_p_hat = lw.logsumexp(0) - torch.log(torch.tensor(4000.0))
        delta_se = w.std(0) / (w.mean(0) * 4000**0.5)  # sd of log p-hat, delta method
        estimates.append((lw.mean(0), lw.std(0) / 4000**0.5, log_p_hat, delta_se))
    (m0, s0, l0, d0), (m1, s1, l1, d1) = estimates
    assert ((m0 - m1).abs() < 4 * (s0**2 + s1**2).sqrt()).all()
    exact = _exact_log_marginal(x)
    for lk, se in ((l0, d0), (l1, d1)):
        assert ((lk - exact).abs() < 4 * se + 0.01).all()


def test_vectorize_true_refuses_a_program_that_does_not_broadcast():
    x = torch.randn(4, 2, dtype=torch.float64)
    model, guide = _mixture(broadcasting=False)
    plan = plan_program(model, guide, (x,), {})
    with pytest.raises(InputError, match="does not broadcast"):
        run_particles(model, guide, (x,), {}, plan=plan, num_particles=3, vectorize=True)


def test_the_plan_remembers_the_fallback():
    x = torch.randn(4, 2, dtype=torch.float64)
    model, guide = _mixture(broadcasting=False)
    plan = plan_program(model, guide, (x,), {})
    assert plan.vectorize is None
    run = run_particles(model, guide, (x,), {}, plan=plan, num_particles=3)
    assert plan.vectorize is False and "Tensors must have same number of dimensions" in plan.fallback_reason
    assert run.guide_values("z").shape == (3, 4, 1)
    assert collect_terms(run, scaled=False).log_weight.shape == (3, 4)


def test_probe_draws_nothing_and_needs_more_than_one_row_only_if_given():
    x = torch.randn(4, 2, dtype=torch.float64)
    model, guide = _mixture(broadcasting=True)
    state = torch.get_rng_state()
    plan = plan_program(model, guide, (x,), {})
    assert torch.equal(state, torch.get_rng_state())
    assert plan.nesting == 1


def test_a_program_that_moves_the_particle_dim_is_drawn_one_particle_at_a_time():
    """A latent in an inner plate that the model transposes runs under a particle plate but
    puts the particles at the wrong dim; the check of the first vectorized run catches it,
    so the ELBO is Pyro's (sequential) one within standard errors, not a number off by
    thousands of nats."""
    from pyro_vae.bounds import elbo

    gen = torch.Generator().manual_seed(0)
    w, x = (
        torch.randn(4, 2, generator=gen, dtype=torch.float64),
        torch.randn(30, 4, generator=gen, dtype=torch.float64),
    )

    def model(x):
        with pyro.plate("data", x.shape[0]):
            with pyro.plate("zdim", 2, dim=-2):
                zt = pyro.sample("z", dist.Normal(torch.zeros(2, x.shape[0], dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(zt.transpose(-1, -2) @ w.T, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            with pyro.plate("zdim", 2, dim=-2):
                pyro.sample("z", dist.Normal(0.1 * x[:, :2].T, 0.5))

    ours = elbo(model, guide, x, num_particles=400, return_error=True)
    assert ours.mode == SEQUENTIAL
    values = torch.tensor([-pyro.infer.Trace_ELBO().loss(model, guide, x) for _ in range(400)]) / 30
    theirs, theirs_se = values.mean(), values.std() / 400**0.5
    ours_mean, ours_se = ours.value.mean(), (ours.standard_error**2).sum().sqrt() / 30
    assert abs(ours_mean - theirs) < 4 * (ours_se**2 + theirs_se**2).sqrt()


def test_one_hot_sample_draws_what_the_distribution_draws():
    """The same torch.multinomial call as OneHotCategorical.sample, so the same draws for the
    same random state; the one-hot made without reading values (capturable)."""
    from torch.distributions import Categorical, Independent, Normal, OneHotCategorical

    from pyro_vae.infer.particles import one_hot_sample

    logits = torch.randn(5, 3, 4, dtype=torch.float64)
    for fn in (OneHotCategorical(logits=logits), Independent(OneHotCategorical(logits=logits), 1)):
        torch.manual_seed(7)
        expected = fn.sample()
        torch.manual_seed(7)
        got = one_hot_sample(fn)
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert one_hot_sample(Categorical(logits=logits)) is None
    assert one_hot_sample(Normal(0.0, 1.0)) is None
