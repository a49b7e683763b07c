import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.comparison.gradients import exact_gradient, parameter_groups
from pyro_vae.errors import InputError
from pyro_vae.estimators import ARM, ScoreFunctionELBO, exact_elbo
from tests.estimators.conftest import collect, projection_z_scores, tiny_data, tiny_vae, total_variance


def test_arm_is_unbiased():
    vae, x = tiny_vae("bernoulli"), tiny_data().repeat(200, 1)
    groups = parameter_groups(vae.model, vae.guide, x)
    exact = exact_gradient(vae.model, vae.guide, x, groups=groups)
    samples = collect(vae.model, vae.guide, x, loss=ARM(), num_samples=40, groups=groups)
    for g in groups:
        z = projection_z_scores(samples[g], exact[g])
        assert z.abs().max() < 3, (g, z)


def test_arm_cuts_the_variance_of_the_score_function_with_as_many_evaluations():
    vae, x = tiny_vae("bernoulli"), tiny_data(16)
    groups = parameter_groups(vae.model, vae.guide, x)
    arm = collect(vae.model, vae.guide, x, loss=ARM(), num_samples=400, groups=groups)
    score = collect(
        vae.model, vae.guide, x, loss=ScoreFunctionELBO(num_particles=2), num_samples=400, groups=groups
    )
    factor = total_variance(score["guide"]) / total_variance(arm["guide"])
    print(f"ARM cuts the encoder-gradient variance by {factor:.1f}x")
    assert factor > 5


def test_arm_value_is_an_unbiased_elbo_estimate():
    vae, x = tiny_vae("bernoulli"), tiny_data(3)
    loss = ARM()
    values = torch.tensor([-loss.loss(vae.model, vae.guide, x) for _ in range(2000)], dtype=torch.float64)
    exact = exact_elbo(vae.model, vae.guide, x).sum().item()
    assert abs(values.mean().item() - exact) < 3 * values.std().item() / 2000**0.5


def test_arm_refuses_what_it_does_not_cover():
    vae, x = tiny_vae("categorical"), tiny_data()
    with pytest.raises(InputError, match="ARM is for Bernoulli guide sites; 'z' is OneHotCategorical"):
        ARM().loss(vae.model, vae.guide, x)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Bernoulli(0.5 * torch.ones(2)).to_event(1))
            z2 = pyro.sample("z2", dist.Bernoulli(0.25 + 0.5 * z1).to_event(1))
            pyro.sample("x", dist.Normal(z2.sum(-1), 1.0), obs=x[:, 0])

    def guide(x):
        w = pyro.param("w", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Bernoulli(logits=w.expand(x.shape[0], 2)).to_event(1))
            pyro.sample("z2", dist.Bernoulli(logits=z1 - 0.5).to_event(1))

    with pytest.raises(InputError, match="depend on another sampled value"):
        ARM().loss(model, guide, x)
