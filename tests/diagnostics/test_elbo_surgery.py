"""ELBO surgery against an aggregate posterior that is a known mixture of Gaussians."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import integrate, stats

from pyro_vae.diagnostics import elbo_surgery
from pyro_vae.errors import InputError
from pyro_vae.infer import guide_log_density, per_datapoint_values, plan_program, run_particles
from tests.programs import CASES

X = torch.tensor([[-2.0], [-0.5], [0.3], [1.0], [2.5]], dtype=torch.float64)


def _scale(x):
    return 0.4 + 0.2 * x.abs()


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def guide(x):
    """q(z | x_n) = N(x_n, (0.4 + 0.2 |x_n|)^2): five fixed Gaussians."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x, _scale(x)).to_event(1))


def _exact_1d():
    """I(n; z), KL(q(z) || p(z)) and the average KL of the mixture, by quadrature."""
    mu, sd = X[:, 0].numpy(), _scale(X)[:, 0].numpy()

    def q(z):
        return np.mean(stats.norm.pdf(z, mu, sd))

    entropy = -integrate.quad(lambda z: q(z) * np.log(q(z)), -12, 12, limit=200, epsabs=1e-11)[0]
    cross = -integrate.quad(lambda z: q(z) * stats.norm.logpdf(z), -12, 12, limit=200, epsabs=1e-11)[0]
    own = np.mean(0.5 * np.log(2 * np.pi * np.e * sd**2))
    average = np.mean(-np.log(sd) + (sd**2 + mu**2) / 2 - 0.5)
    return entropy - own, cross - entropy, average


def test_each_part_matches_the_exact_mixture_within_four_standard_errors():
    r = elbo_surgery(model, guide, X, num_particles=4000, seed=1)
    info, marginal, average = _exact_1d()
    assert r.batch_size == r.num_data == 5
    assert abs(r.mutual_information - info) < 4 * r.mutual_information_se
    assert abs(r.marginal_kl - marginal) < 4 * r.marginal_kl_se
    assert abs(r.average_kl - average) < 4 * r.average_kl_se
    # the identity holds draw by draw, and I(n; z) <= log N
    assert r.mutual_information + r.marginal_kl == pytest.approx(r.average_kl, abs=1e-9)
    assert r.mutual_information <= math.log(5)
    assert 0 < r.mutual_information_se < 0.02 and 0 < r.marginal_kl_se < 0.02  # errors that mean something


def test_two_dimensional_mixture_against_a_grid():
    x = torch.tensor([[-1.5, 0.5], [0.0, -1.0], [1.2, 1.0]], dtype=torch.float64)
    r = elbo_surgery(model, guide, x, num_particles=3000, seed=0)
    grid = np.linspace(-8, 8, 401)
    za, zb = np.meshgrid(grid, grid, indexing="ij")
    mu, sd = x.numpy(), _scale(x).numpy()
    comp = [
        stats.norm.pdf(za, m[0], s[0]) * stats.norm.pdf(zb, m[1], s[1]) for m, s in zip(mu, sd, strict=True)
    ]
    q = np.mean(comp, 0)
    cell = (grid[1] - grid[0]) ** 2
    safe = np.where(q > 0, q, 1.0)
    entropy = -np.sum(q * np.log(safe)) * cell
    cross = -np.sum(q * (stats.norm.logpdf(za) + stats.norm.logpdf(zb))) * cell
    own = np.mean(np.sum(0.5 * np.log(2 * np.pi * np.e * sd**2), 1))
    assert abs(r.mutual_information - (entropy - own)) < 4 * r.mutual_information_se
    assert abs(r.marginal_kl - (cross - entropy)) < 4 * r.marginal_kl_se


def test_well_separated_components_give_log_n_and_identical_ones_zero():
    far = torch.tensor([[-60.0], [0.0], [60.0]], dtype=torch.float64)  # 4.7 and 150 sds apart
    r = elbo_surgery(model, guide, far, num_particles=50, seed=0)
    assert math.log(3) - 1e-4 < r.mutual_information <= math.log(3)
    same = torch.zeros(4, 1, dtype=torch.float64)
    r = elbo_surgery(model, guide, same, num_particles=50, seed=0)
    assert r.mutual_information == pytest.approx(0.0, abs=1e-9)
    assert r.marginal_kl == pytest.approx(r.average_kl, abs=1e-9)


def test_guide_log_density_is_the_density_at_every_pair():
    """The core helper: log q(z_s | x_n) for every given draw and datapoint, against scipy."""
    plan = plan_program(model, guide, (X,), {})
    run = run_particles(model, guide, (X,), {}, plan=plan, num_particles=3)
    values = per_datapoint_values(run)
    log_q = guide_log_density(guide, (X,), {}, values, plan=plan)
    assert log_q.shape == (15, 5)
    z = values["z"].reshape(15)
    expected = stats.norm.logpdf(z.numpy()[:, None], X[:, 0].numpy()[None], _scale(X)[:, 0].numpy()[None])
    assert np.allclose(log_q.numpy(), expected)
    with pytest.raises(InputError, match="no values"):
        guide_log_density(guide, (X,), {}, {"other": values["z"]}, plan=plan)


def test_minibatches_give_an_estimate_with_the_same_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, generator=g, dtype=torch.float64) * 1.5
    full = elbo_surgery(model, guide, x, num_particles=200, seed=0)
    batched = elbo_surgery(model, guide, x, num_particles=200, batch_size=8, seed=0)
    assert batched.batch_size == 8
    assert batched.mutual_information + batched.marginal_kl == pytest.approx(batched.average_kl, abs=1e-9)
    assert abs(batched.average_kl - full.average_kl) < 4 * math.hypot(
        batched.average_kl_se, full.average_kl_se
    )
    assert batched.mutual_information <= math.log(24)
    odd = elbo_surgery(model, guide, x[:9], num_particles=5, batch_size=4, seed=0)  # batches of 4 and 5
    assert odd.mutual_information + odd.marginal_kl == pytest.approx(odd.average_kl, abs=1e-9)
    assert odd.mutual_information <= math.log(9)
    with pytest.raises(InputError, match="batch_size"):
        elbo_surgery(model, guide, x, batch_size=1)


@pytest.mark.parametrize("name", ["whole_module", "no_num_data", "chain", "discrete_then_continuous"])
def test_corpus_programs(name):
    """Pyro's idioms: the identity holds, I(n; z) <= log N, and the average KL is the rate
    of the bounds' ELBO (same mean, within errors)."""
    case = CASES[name]
    program = case.build()
    data = case.data(12)
    r = elbo_surgery(program.model, program.guide, *data, num_particles=40, seed=0, **case.kwargs)
    assert r.mutual_information + r.marginal_kl == pytest.approx(r.average_kl, abs=1e-6)
    assert r.mutual_information <= math.log(12) + 1e-9
    assert r.marginal_kl > -4 * r.marginal_kl_se  # a KL


def test_global_latents_are_refused():
    def model_g(x):
        s = pyro.sample("s", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(s, 1.0).expand([x.shape[0], 1]).to_event(1), obs=x)

    def guide_g(x):
        pyro.sample("s", dist.Normal(0.0, 1.0))

    with pytest.raises(InputError):
        elbo_surgery(model_g, guide_g, X)


def test_a_guide_that_does_not_broadcast_is_evaluated_one_draw_at_a_time():
    """Pyro's M2-style guide (torch.cat of x with a sampled one-hot y) fails under a particle
    dimension: the pairs are evaluated one draw per run, with the same estimate's identity."""
    case = CASES["no_broadcast"]
    program = case.build()
    data = case.data(5)
    r = elbo_surgery(program.model, program.guide, *data, num_particles=3, seed=0, **case.kwargs)
    assert r.mutual_information + r.marginal_kl == pytest.approx(r.average_kl, abs=1e-6)
    assert r.mutual_information <= math.log(5) + 1e-9
