"""Semi-amortized refinement against the linear-Gaussian model's exact posterior, its gradients
against their definitions, training with it, and programs of the corpus."""

import pyro
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_vae.bounds import elbo
from pyro_vae.errors import InputError
from pyro_vae.infer import MeanFieldELBO
from pyro_vae.infer.local_guide import local_elbo
from pyro_vae.infer.refined_guide import refined_guide
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit
from tests._linear_gaussian import random_linear_gaussian

STEPS = (0, 1, 2, 5, 20, 100)


def _model(d=5, k=2, seed=0):
    """A linear-Gaussian model whose guide is the exact posterior perturbed (an amortization gap)."""
    m = random_linear_gaussian(d, k, seed)
    with torch.no_grad():
        m.set_guide_to_posterior()
        m.recognition.weight.add_(0.3 * torch.randn_like(m.recognition.weight))
        m.recognition.bias.add_(0.5)
        m.recognition.raw_tril.add_(0.4 * torch.randn_like(m.recognition.raw_tril))
    return m


def _kl_to_posterior(m, local, x):
    return kl_divergence(local.distribution(), m.posterior(x)).detach()


def test_refinement_decreases_kl_to_the_exact_posterior_monotonically():
    """Deterministic (sigma-point, exact here) gradient steps: KL(q_S || p(z|x)) decreases at
    every S for every datapoint and nearly vanishes (the family contains the posterior)."""
    m = _model()
    x = torch.randn(8, 5, dtype=torch.float64)
    guide = refined_guide(m.model, m.guide, steps=max(STEPS), lr=0.05, sigma_points=True)
    with torch.no_grad():
        path = guide.trajectory(x)
    kl = torch.stack([_kl_to_posterior(m, path[s], x) for s in STEPS])
    torch.testing.assert_close(kl[0], kl_divergence(m.guide_distribution(x), m.posterior(x)).detach())
    assert (kl[1:] < kl[:-1]).all(), kl
    assert (kl[-1] < 1e-2 * kl[0]).all()
    # the same steps through separate guides of fewer steps (the trajectory is the refinement)
    short = refined_guide(m.model, m.guide, steps=5, lr=0.05, sigma_points=True)
    with torch.no_grad():
        torch.testing.assert_close(_kl_to_posterior(m, short.refine(x), x), kl[STEPS.index(5)])


def test_the_refined_elbo_rises_to_the_exact_log_marginal():
    """bounds.elbo on the refined guide equals log p(x) - KL(q_S || p(z|x)) within 4 SE for each S,
    rises with S, and at S=100 is within 4 SE of the exact log p(x) + 1e-2 nats."""
    m = _model()
    x = torch.randn(6, 5, dtype=torch.float64)
    exact = m.log_marginal(x).detach()
    means = []
    for s in (0, 5, 100):
        guide = refined_guide(m.model, m.guide, steps=s, lr=0.05, sigma_points=True)
        est = elbo(m.model, guide, x, num_particles=4000, return_error=True, analytic_kl=True)
        with torch.no_grad():
            expected = exact - _kl_to_posterior(m, guide.refine(x), x)
        assert ((est.value - expected).abs() < 4 * est.standard_error).all()
        means.append(est)
    assert (means[1].value > means[0].value + 4 * means[1].standard_error).all()
    assert (means[2].value > means[1].value).all()
    assert ((exact - means[2].value) < 1e-2 + 4 * means[2].standard_error).all()


def _outer_objective(m, guide, x):
    """The outer ELBO of the refined guide, exact and deterministic (sigma points)."""
    return local_elbo(m.model, guide.refine(x), (x,), {}, sigma_points=True).sum()


def test_differentiated_refinement_has_the_gradient_of_the_unrolled_steps():
    """SA-VAE: the encoder's gradient is that of L(lambda_S(phi)), checked by central finite
    differences in float64 (the inner steps are deterministic)."""
    m = _model()
    x = torch.randn(4, 5, dtype=torch.float64)
    guide = refined_guide(m.model, m.guide, steps=3, lr=0.1, sigma_points=True, differentiable=True)
    bias = m.recognition.bias
    (grad,) = torch.autograd.grad(_outer_objective(m, guide, x), bias)
    numeric = torch.zeros_like(bias)
    h = 1e-5
    with torch.no_grad():
        for i in range(bias.numel()):
            bias[i] += h
            up = _outer_objective(m, guide, x)
            bias[i] -= 2 * h
            down = _outer_objective(m, guide, x)
            bias[i] += h
            numeric[i] = (up - down) / (2 * h)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)


def test_stop_gradient_refinement_passes_the_gradient_at_lambda_s_to_the_encoder():
    """differentiable=False: lambda_S = lambda_0 + sg(lambda_S - lambda_0), so the gradient on
    the encoder's bias (which moves every lambda_0 location by the same amount) is the sum over
    datapoints of dL/dloc at lambda_S; it differs from the differentiated one."""
    m = _model()
    x = torch.randn(4, 5, dtype=torch.float64)
    stop = refined_guide(m.model, m.guide, steps=3, lr=0.1, sigma_points=True, differentiable=False)
    (grad,) = torch.autograd.grad(_outer_objective(m, stop, x), m.recognition.bias)
    with torch.no_grad():
        final = stop.refine(x)
    leaf = final.with_params([p.detach().requires_grad_(True) for p in final.params])
    (at_final,) = torch.autograd.grad(
        local_elbo(m.model, leaf, (x,), {}, sigma_points=True).sum(), leaf.params[0]
    )
    torch.testing.assert_close(grad, at_final.sum(0))
    through = refined_guide(m.model, m.guide, steps=3, lr=0.1, sigma_points=True, differentiable=True)
    (grad_through,) = torch.autograd.grad(_outer_objective(m, through, x), m.recognition.bias)
    assert (grad - grad_through).abs().max() > 1e-3


def test_the_training_loss_of_a_refined_guide_is_the_scaled_refined_elbo():
    """MeanFieldELBO on the refined guide of a minibatch with num_data=N estimates
    -(N/B) sum_n ELBO_n(q_S): within 4 SE of the closed form."""
    m = _model()
    x = torch.randn(5, 5, dtype=torch.float64)
    guide = refined_guide(m.model, m.guide, steps=4, lr=0.05, sigma_points=True)
    with torch.no_grad():
        exact = -(20 / 5) * (m.log_marginal(x) - _kl_to_posterior(m, guide.refine(x), x)).sum()
        loss = MeanFieldELBO(num_particles=200)
        draws = torch.tensor([loss.loss(m.model, guide, x, num_data=20) for _ in range(30)])
    assert (draws.mean() - exact).abs() < 4 * draws.std() / 30**0.5


@pytest.mark.parametrize("differentiable", [True, False], ids=["sa-vae", "stop-gradient"])
def test_fit_trains_a_vae_with_a_refined_guide(differentiable):
    torch.manual_seed(0)
    x = (torch.rand(64, 12) < 0.3).float()
    vae = VAE(Bernoulli(12), latent_dim=2, hidden=(16,))
    guide = refined_guide(vae.model, vae.guide, steps=2, lr=0.1, differentiable=differentiable)
    before = [p.detach().clone() for p in vae.encoder.parameters()]
    res = fit(vae.model, guide, x, epochs=3, batch_size=16, lr=1e-2, progress=False)
    assert all(torch.isfinite(torch.tensor(r["train_objective"])) for r in res.history)
    assert res.history[-1]["train_objective"] > res.history[0]["train_objective"]
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, vae.encoder.parameters(), strict=True))
    assert len(pyro.get_param_store()) == 0  # fit's private store


@pytest.mark.parametrize("name", ["whole_module", "no_num_data"])
def test_refinement_on_corpus_programs_closes_the_gap_to_the_exact_log_marginal(name):
    """Pyro-idiom programs (one pyro.module for the whole VAE; vae.py's sites "latent"/"obs"
    and no num_data) with linear-Gaussian decoders: the refined ELBO is above the amortized
    one and below the exact log p(x), each within 4 SE."""
    from tests.programs import CASES

    case = CASES[name]
    program, (x,) = case.build(), case.data(6)
    site = "latent" if name == "no_num_data" else "z"
    exact = program.exact_log_p(x).detach()
    base = elbo(program.model, program.guide, x, num_particles=2000, return_error=True)
    guide = refined_guide(program.model, program.guide, steps=30, lr=0.05, sigma_points=True, site=site)
    refined = elbo(program.model, guide, x, num_particles=2000, return_error=True)
    se = (base.standard_error**2 + refined.standard_error**2).sqrt()
    assert refined.value.mean() > base.value.mean() + 4 * se.mean()
    assert (refined.value < exact + 4 * refined.standard_error).all()


def test_a_guide_with_a_discrete_site_cannot_be_refined():
    from tests.programs import CASES

    case = CASES["discrete_then_continuous"]
    program, data = case.build(), case.data(6)
    guide = refined_guide(program.model, program.guide, steps=2, lr=0.1)
    with pytest.raises(InputError, match="other latent sites"):
        elbo(program.model, guide, *data)
    with pytest.raises(InputError, match="steps"):
        refined_guide(program.model, program.guide, steps=-1, lr=0.1)
