import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.comparison.gradients import exact_gradient, gradient_samples, parameter_groups
from pyro_vae.errors import InputError
from pyro_vae.estimators import DecayingAverageBaseline, NeuralBaseline, ScoreFunctionELBO
from tests.estimators.conftest import collect, projection_z_scores, tiny_data, tiny_vae, total_variance


def test_without_baseline_it_is_pyro_trace_elbo():
    vae, x = tiny_vae(), tiny_data()
    groups = parameter_groups(vae.model, vae.guide, x)
    loss = ScoreFunctionELBO()
    loss.loss(vae.model, vae.guide, x)  # the first call traces the program once to find its plates
    pyro.set_rng_seed(3)
    ours = next(gradient_samples(vae.model, vae.guide, x, loss=loss, num_samples=1, groups=groups))
    pyro.set_rng_seed(3)
    pyro_grad = next(
        gradient_samples(vae.model, vae.guide, x, loss=Trace_ELBO(), num_samples=1, groups=groups)
    )
    for g in groups:
        torch.testing.assert_close(ours[g], pyro_grad[g])


@pytest.mark.parametrize(
    "make_baseline", [None, DecayingAverageBaseline, NeuralBaseline], ids=["none", "average", "neural"]
)
def test_score_function_is_unbiased(program, make_baseline):
    vae, x, groups = program
    exact = exact_gradient(vae.model, vae.guide, x, groups=groups)
    # each estimate averages 500 particles, so the 60 estimates are close to Gaussian
    loss = ScoreFunctionELBO(baseline=make_baseline() if make_baseline else None, num_particles=500)
    samples = collect(vae.model, vae.guide, x, loss=loss, num_samples=60, groups=groups)
    for g in groups:
        z = projection_z_scores(samples[g], exact[g])
        assert z.abs().max() < 3, (g, z)


def _train_baseline(vae, x, loss, steps):
    """Fit the baseline's own parameters (model and guide held fixed), as compare() warms up."""
    groups = parameter_groups(vae.model, vae.guide, x)
    program = {id(p) for g in groups.values() for p in g.values()}
    loss.loss_and_grads(vae.model, vae.guide, x)
    own = [p for _, p in pyro.get_param_store().named_parameters() if id(p) not in program]
    opt = torch.optim.Adam(own, lr=1e-2) if own else None
    for _ in range(steps):
        for _, p in pyro.get_param_store().named_parameters():
            p.grad = None
        loss.loss_and_grads(vae.model, vae.guide, x)
        if opt:
            opt.step()


def test_baselines_cut_the_variance_of_reinforce():
    vae, x = tiny_vae(), tiny_data(16)
    groups = parameter_groups(vae.model, vae.guide, x)
    variance = {}
    for name, baseline in [
        ("none", None),
        ("average", DecayingAverageBaseline()),
        ("neural", NeuralBaseline(hidden=(16,))),
    ]:
        loss = ScoreFunctionELBO(baseline=baseline)
        _train_baseline(vae, x, loss, 300 if name == "neural" else 20)
        samples = collect(vae.model, vae.guide, x, loss=loss, num_samples=400, groups=groups)
        variance[name] = total_variance(samples["guide"])
    print({k: f"{variance['none'] / v:.1f}x" for k, v in variance.items()})
    assert variance["average"] < variance["none"] / 2
    assert variance["neural"] < variance["average"]


def test_decaying_average_uses_only_earlier_batches():
    b = DecayingAverageBaseline(beta=0.5)
    first, _ = b(torch.full((1, 3), 4.0), torch.zeros(3, 1))
    second, _ = b(torch.full((1, 3), 8.0), torch.zeros(3, 1))
    third, _ = b(torch.full((1, 3), 0.0), torch.zeros(3, 1))
    assert first.item() == 0.0 and second.item() == 4.0 and third.item() == 6.0
    assert b.state_dict()["mean"].item() == 3.0


def test_bad_options():
    with pytest.raises(InputError, match="beta"):
        DecayingAverageBaseline(beta=1.0)
    with pytest.raises(InputError, match="Baseline"):
        ScoreFunctionELBO(baseline=lambda s, x: (0, 0))
    with pytest.raises(InputError, match="num_particles"):
        ScoreFunctionELBO(num_particles=0)
