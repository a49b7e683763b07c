import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyro_vae.errors import InputError
from pyro_vae.estimators import EnumerationELBO, enumerate_terms, exact_elbo, exact_iwae
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import M2, CategoricalLatent, DiscreteVAE
from tests.estimators.conftest import tiny_data, tiny_vae


def _codes(vae: DiscreteVAE) -> list[torch.Tensor]:
    lat = vae.latent
    if isinstance(lat, CategoricalLatent):
        eye = torch.eye(lat.num_categories, dtype=torch.float64)
        return [eye[list(c)] for c in itertools.product(range(lat.num_categories), repeat=lat.num_variables)]
    return [torch.tensor(c, dtype=torch.float64) for c in itertools.product((0.0, 1.0), repeat=lat.num_units)]


def _brute_force(vae: DiscreteVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x, z_m) and log q(z_m | x) for every code, written out by hand: (M, B) each."""
    log_p, log_q = [], []
    for code in _codes(vae):
        z = code.expand(x.shape[0], *code.shape)
        prior = vae.latent.prior(x).log_prob(z)
        lik = vae.likelihood(vae.decoder(vae.latent.flatten(z))).log_prob(x)
        log_p.append(prior + lik)
        log_q.append(vae.latent.posterior(vae.encoder(x)).log_prob(z))
    return torch.stack(log_p), torch.stack(log_q)


def test_exact_elbo_equals_the_sum_over_codes(program):
    vae, x, _ = program
    log_p, log_q = _brute_force(vae, x)
    torch.testing.assert_close(log_q.logsumexp(0), torch.zeros(x.shape[0], dtype=torch.float64))
    expected = (log_q.exp() * (log_p - log_q)).sum(0)
    torch.testing.assert_close(exact_elbo(vae.model, vae.guide, x), expected)
    # the ELBO is below log p(x) = logsumexp_m log p(x, z_m), with gap KL(q || p(z|x)) >= 0
    assert (expected < log_p.logsumexp(0)).all()


def test_exact_iwae_bounds_are_ordered_and_below_log_marginal(program):
    vae, x, _ = program
    log_p, _ = _brute_force(vae, x)
    terms = enumerate_terms(vae.model, vae.guide, x)
    bounds = [terms.iwae(k) for k in (1, 2, 3, 4)]
    torch.testing.assert_close(bounds[0], terms.elbo)
    for lower, upper in itertools.pairwise(bounds):
        assert (lower < upper).all()
    assert (bounds[-1] < log_p.logsumexp(0)).all()
    torch.testing.assert_close(exact_iwae(vae.model, vae.guide, x, num_particles=2), bounds[1])


def test_exact_iwae_matches_an_explicit_sum_over_pairs():
    vae, x = tiny_vae(), tiny_data(2)
    log_p, log_q = _brute_force(vae, x)
    log_w = log_p - log_q
    m = log_w.shape[0]
    expected = sum(
        (log_q[i] + log_q[j]).exp() * (torch.stack([log_w[i], log_w[j]]).logsumexp(0) - math.log(2))
        for i in range(m)
        for j in range(m)
    )
    torch.testing.assert_close(exact_iwae(vae.model, vae.guide, x, num_particles=2), expected)


def test_enumeration_loss_is_scaled_for_minibatches():
    vae, x = tiny_vae(), tiny_data(4)
    full = EnumerationELBO().loss(vae.model, vae.guide, x)
    torch.testing.assert_close(-full, exact_elbo(vae.model, vae.guide, x).sum().item())
    torch.testing.assert_close(EnumerationELBO().loss(vae.model, vae.guide, x, num_data=40), 10 * full)


def test_enumeration_agrees_with_pyro_trace_enum_elbo():
    """A program with a plain Categorical site, which Pyro's TraceEnum_ELBO can enumerate."""
    torch.manual_seed(0)
    x = torch.randn(5, dtype=torch.float64)
    locs = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)

    def model(x):
        probs = pyro.param(
            "probs", torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), constraint=dist.constraints.simplex
        )
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(probs))
            pyro.sample("x", dist.Normal(locs[c], 1.0), obs=x)

    def guide(x):
        w = pyro.param("w", torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=w * x.unsqueeze(-1)))

    ours = EnumerationELBO().differentiable_loss(model, guide, x)
    ours_grads = torch.autograd.grad(ours, [pyro.param("probs").unconstrained(), pyro.param("w")])
    theirs = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, config_enumerate(guide), x)
    theirs_grads = torch.autograd.grad(theirs, [pyro.param("probs").unconstrained(), pyro.param("w")])
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_m2_enumeration_equals_the_explicit_sum_over_labels():
    """U(x) = sum_y q(y|x) [log p(y) + log p(x|y,z) + log p(z) - log q(z|x,y)] - sum_y q log q,
    with z held at a fixed value so that both sides are exact; labelled rows count once."""
    torch.manual_seed(0)
    m2 = M2(
        Bernoulli(6), num_classes=3, latent_dim=2, hidden=(8,), classifier_hidden=(8,), alpha=0.0
    ).double()
    x = tiny_data(4)
    y = torch.tensor([-1, 2, -1, 0])
    z0 = torch.randn(4, 2, dtype=torch.float64)
    fixed = poutine.Trace()  # replaying z keeps it a latent site of the guide (condition would observe it)
    fixed.add_node("z", name="z", type="sample", value=z0, is_observed=False, infer={})
    guide = poutine.replay(m2.guide, trace=fixed)
    got = exact_elbo(m2.model, guide, x, y)

    log_qy = m2.classifier(x).log_softmax(-1)
    prior_z = dist.Normal(0.0, 1.0).log_prob(z0).sum(-1)

    def labelled_terms(label: torch.Tensor) -> torch.Tensor:
        y_hot = torch.nn.functional.one_hot(label, 3).double()
        lik = m2.likelihood(m2.decoder(torch.cat([z0, y_hot], -1))).log_prob(x)
        loc, scale = m2.encoder(torch.cat([x, y_hot], -1))
        return -math.log(3) + lik + prior_z - dist.Normal(loc, scale).log_prob(z0).sum(-1)

    unlabelled = sum(
        log_qy[:, c].exp() * (labelled_terms(torch.full((4,), c)) - log_qy[:, c]) for c in range(3)
    )
    labelled = labelled_terms(y.clamp(min=0))
    expected = torch.where(y >= 0, labelled, unlabelled)
    torch.testing.assert_close(got, expected)


def test_too_many_configurations_is_refused_before_work():
    vae = DiscreteVAE(Bernoulli(6), CategoricalLatent(20, 10), hidden=(8,))
    with pytest.raises(InputError, match=r"1e\+20 joint configurations"):
        exact_elbo(vae.model, vae.guide, torch.zeros(2, 6))


def test_guides_without_discrete_sites_are_refused():
    from pyro_vae.models import VAE

    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(8,))
    with pytest.raises(InputError, match="no discrete"):
        exact_elbo(vae.model, vae.guide, torch.zeros(2, 6))
