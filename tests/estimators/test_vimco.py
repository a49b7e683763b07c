import math

import pytest
import torch
from pyro.infer import RenyiELBO

from pyro_vae.comparison.gradients import exact_gradient, gradient_samples, parameter_groups
from pyro_vae.errors import InputError
from pyro_vae.estimators import VIMCO, ScoreFunctionELBO, leave_one_out_bounds
from tests.estimators.conftest import collect, projection_z_scores, tiny_data, tiny_vae, total_variance


def test_leave_one_out_bounds_written_out():
    log_w = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, 0.1]], dtype=torch.float64)
    got = leave_one_out_bounds(log_w)
    for k in range(3):
        others = [j for j in range(3) if j != k]
        replaced = log_w.clone()
        replaced[k] = log_w[others].mean(0)
        torch.testing.assert_close(got[k], replaced.logsumexp(0) - math.log(3))


@pytest.mark.parametrize("k", [2, 4])
def test_vimco_is_unbiased_for_the_k_sample_bound(program, k):
    vae, x, groups = program
    x = x.repeat(200, 1)  # 200 independent copies per estimate, so the 40 estimates are close to Gaussian
    exact = exact_gradient(vae.model, vae.guide, x, groups=groups, num_particles=k)
    samples = collect(vae.model, vae.guide, x, loss=VIMCO(num_particles=k), num_samples=40, groups=groups)
    for g in groups:
        z = projection_z_scores(samples[g], exact[g])
        assert z.abs().max() < 3, (g, z)


def test_vimco_is_not_the_elbo_gradient():
    """Sanity check of the test above: the L_4 gradient is far (in SEs) from the ELBO gradient."""
    vae, x = tiny_vae(), tiny_data().repeat(200, 1)
    groups = parameter_groups(vae.model, vae.guide, x)
    elbo_grad = exact_gradient(vae.model, vae.guide, x, groups=groups)
    samples = collect(vae.model, vae.guide, x, loss=VIMCO(num_particles=4), num_samples=40, groups=groups)
    assert projection_z_scores(samples["model"], elbo_grad["model"]).abs().max() > 5


def test_vimco_value_is_the_iwae_estimate_scaled_outside_the_log():
    vae, x = tiny_vae(), tiny_data(4)
    loss = VIMCO(num_particles=3)
    loss.loss(vae.model, vae.guide, x)
    torch.manual_seed(5)
    full = loss.loss(vae.model, vae.guide, x)
    torch.manual_seed(5)
    scaled = loss.loss(vae.model, vae.guide, x, num_data=40)
    assert scaled == pytest.approx(10 * full, rel=1e-12)


def test_vimco_cuts_the_variance_of_the_score_function_with_as_many_samples():
    vae, x = tiny_vae(), tiny_data(16)
    groups = parameter_groups(vae.model, vae.guide, x)
    vimco = collect(vae.model, vae.guide, x, loss=VIMCO(num_particles=5), num_samples=300, groups=groups)
    score = collect(
        vae.model, vae.guide, x, loss=ScoreFunctionELBO(num_particles=5), num_samples=300, groups=groups
    )
    factor = total_variance(score["guide"]) / total_variance(vimco["guide"])
    print(f"VIMCO cuts the guide-gradient variance by {factor:.1f}x")
    assert factor > 3


def test_pyro_renyi_alpha_zero_gives_discrete_guides_no_gradient():
    """Why pyro_vae has VIMCO: Pyro's RenyiELBO(alpha=0) leaves the encoder of a discrete code untrained."""
    vae, x = tiny_vae(), tiny_data()
    groups = parameter_groups(vae.model, vae.guide, x)
    renyi = RenyiELBO(alpha=0, num_particles=4, max_plate_nesting=1)
    grad = next(gradient_samples(vae.model, vae.guide, x, loss=renyi, num_samples=1, groups=groups))
    assert grad["guide"].abs().max() == 0 and grad["model"].abs().max() > 0
    ours = next(
        gradient_samples(vae.model, vae.guide, x, loss=VIMCO(num_particles=4), num_samples=1, groups=groups)
    )
    assert ours["guide"].abs().max() > 0


def test_vimco_needs_two_particles():
    with pytest.raises(InputError, match="num_particles >= 2"):
        VIMCO(num_particles=1)
