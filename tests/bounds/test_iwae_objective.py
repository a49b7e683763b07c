"""The IWAE training objective and its standard, STL and DReG gradients."""

import itertools

import pyro
import pytest
import torch

from pyro_vae.bounds import IWAE, iwae
from pyro_vae.errors import InputError
from pyro_vae.models import LinearGaussian
from pyro_vae.train import fit


def _lg(perturb=0.5, seed=0, n=6):
    torch.manual_seed(seed)
    m = LinearGaussian(4, 2).double()
    m.set_guide_to_posterior()
    with torch.no_grad():
        m.recognition.weight.add_(perturb * torch.randn_like(m.recognition.weight))
    return m, torch.randn(n, 4, dtype=torch.float64)


def _grads(m, x, gradient, k, seed, **kw):
    m.zero_grad()
    pyro.set_rng_seed(seed)
    value = IWAE(num_particles=k, gradient=gradient).differentiable_loss(m.model, m.guide, x, **kw)
    value.backward()
    return value.detach(), m.recognition.weight.grad.clone(), m.generative.weight.grad.clone()


def test_same_value_and_model_gradient_for_every_estimator():
    m, x = _lg()
    ref = _grads(m, x, "standard", 5, seed=1)
    for gradient in ("stl", "dreg"):
        value, guide_grad, model_grad = _grads(m, x, gradient, 5, seed=1)
        torch.testing.assert_close(value, ref[0])
        torch.testing.assert_close(model_grad, ref[2])
        assert not torch.allclose(guide_grad, ref[1])


def test_stl_and_dreg_have_zero_guide_gradient_at_the_exact_posterior():
    m, x = _lg(perturb=0.0)
    for seed in range(3):
        assert _grads(m, x, "standard", 5, seed)[1].abs().max() > 1e-2
        for gradient in ("stl", "dreg"):
            assert _grads(m, x, gradient, 5, seed)[1].abs().max() < 1e-10


@pytest.mark.parametrize(("gradient", "k"), [("dreg", 5), ("dreg", 1), ("stl", 1)])
def test_unbiased_path_estimators_agree_in_mean_with_the_standard_one(gradient, k):
    """Mean guide gradient over 300 draws each, compared entrywise within 4 standard errors."""
    m, x = _lg()
    ref = torch.stack([_grads(m, x, "standard", k, seed)[1] for seed in range(300)])
    est = torch.stack([_grads(m, x, gradient, k, seed + 10_000)[1] for seed in range(300)])
    se = (ref.var(0) / 300 + est.var(0) / 300).sqrt()
    assert ((ref.mean(0) - est.mean(0)).abs() < 4 * se).all()
    # and it is a variance reduction here, which is the point of using it
    assert est.var(0).sum() < ref.var(0).sum()


def test_subsampled_objective_is_unbiased_for_the_full_data_sum():
    """With the exact posterior as guide every L_K(x_n) equals log p(x_n), so each minibatch
    estimate is deterministic: averaged over all C(6, 2) minibatches it must equal the
    full-data sum exactly, and each is (N/B) times its own batch sum."""
    m, x = _lg(perturb=0.0)
    n, b = 6, 2
    exact = m.log_marginal(x).detach()
    loss = IWAE(num_particles=4)
    estimates = []
    for idx in itertools.combinations(range(n), b):
        value = -loss.loss(m.model, m.guide, x[list(idx)], num_data=n)
        assert value == pytest.approx(n / b * exact[list(idx)].sum().item(), rel=1e-9)
        estimates.append(value)
    assert sum(estimates) / len(estimates) == pytest.approx(exact.sum().item(), rel=1e-9)


def test_bad_options_and_discrete_guides_are_reported():
    with pytest.raises(InputError, match="gradient must be one of"):
        IWAE(gradient="reinforce")
    import pyro.distributions as dist

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.5))

    with pytest.raises(InputError, match="'c'"):
        IWAE(gradient="dreg").differentiable_loss(model, guide, torch.zeros(3))


@pytest.mark.slow
def test_training_with_dreg_through_fit_raises_the_bound():
    from pyro_vae.data import linear_gaussian

    data, _ = linear_gaussian(200, 4, 2, seed=1)
    torch.manual_seed(0)
    m = LinearGaussian(4, 2).double()
    before = iwae(m.model, m.guide, data.x, num_particles=20).mean().item()
    fit(
        m.model,
        m.guide,
        data.x,
        loss=IWAE(num_particles=5, gradient="dreg"),
        epochs=30,
        batch_size=50,
        lr=0.02,
        progress=False,
    )
    after = iwae(m.model, m.guide, data.x, num_particles=20, return_error=True)
    exact = m.log_marginal(data.x).detach()
    assert after.value.mean().item() > before + 1.0
    # a lower bound of the trained model's own exact log p(x), up to Monte Carlo error
    se_of_mean = (after.standard_error**2).sum().sqrt() / len(exact)
    assert after.value.mean() <= exact.mean() + 4 * se_of_mean


@pytest.mark.parametrize("gradient", ["standard", "dreg"])
def test_iwae_trains_with_pyro_svi(gradient):
    """SVI finds the parameters by tracing the loss call; the objective must not hide them."""
    m, x = _lg()
    svi = pyro.infer.SVI(
        m.model, m.guide, pyro.optim.Adam({"lr": 0.05}), IWAE(num_particles=3, gradient=gradient)
    )
    svi.step(x)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    for _ in range(5):
        svi.step(x)
    assert any(not torch.equal(before[k], v) for k, v in pyro.get_param_store().items())
