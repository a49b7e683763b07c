"""Annealed importance sampling against exact log p(x): the linear-Gaussian model, a mixture
summed out in the model, a positive latent, a guide that does not broadcast, the corpus."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.bounds import LinearSchedule, SigmoidSchedule, ais, iwae
from pyro_vae.errors import InputError
from pyro_vae.infer.hmc import HMCOptions
from pyro_vae.models import LinearGaussian
from tests.programs import CASES

FAST = HMCOptions(num_leapfrog=1, step_size=0.3)


def _lg(perturb: float, n: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    m = LinearGaussian(4, 2).double()
    m.set_guide_to_posterior()
    with torch.no_grad():
        m.recognition.weight.add_(perturb * torch.randn_like(m.recognition.weight))
    x = torch.randn(n, 4, dtype=torch.float64)
    return m, x, m.log_marginal(x).detach()


def _mean_error(result, exact):
    """Data-set mean error and its standard error (independent datapoints)."""
    err = (result.value - exact).mean()
    se = (result.standard_error**2).sum().sqrt() / exact.shape[0]
    return err.abs().item(), se.item()


def test_exact_posterior_guide_makes_every_log_weight_log_p_x():
    m, x, exact = _lg(0.0)
    for steps in (1, 4):
        r = ais(m.model, m.guide, x, num_steps=steps, num_chains=6, hmc=FAST)
        torch.testing.assert_close(r.log_weights, exact.expand(6, -1), atol=1e-9, rtol=0)
        assert r.log_weights.shape == (6, 3) and r.num_steps == steps
        assert r.estimate.mode == "vectorized" and r.estimate.num_particles == 6
        torch.testing.assert_close(r.log_weight_variance, torch.zeros_like(exact), atol=1e-12, rtol=0)


def test_converges_to_exact_log_p_x_as_steps_grow():
    """A guide far from the posterior: at 10 steps the error is large, at 1000 steps it is
    within 3 standard errors of exact and smaller (data-set means over 3 datapoints)."""
    m, x, exact = _lg(1.2)
    with pyro.validation_enabled(False):  # the same numbers, fewer checks per step
        short = ais(m.model, m.guide, x, num_steps=10, num_chains=16, hmc=FAST)
        long = ais(m.model, m.guide, x, num_steps=1000, num_chains=16, hmc=FAST)
    err_short, _ = _mean_error(short, exact)
    err_long, se_long = _mean_error(long, exact)
    assert err_long < 3 * se_long
    assert err_long < err_short
    assert (long.log_weight_variance < short.log_weight_variance).all()
    assert ((long.acceptance_rate - 0.65).abs() < 0.15).all()  # the step size adapted
    assert long.value.dtype == torch.float64


def test_one_step_from_the_prior_is_importance_sampling_from_the_prior():
    """With T = 1 and initial="prior", log w = log p(x | z), z ~ p(z): E[w] = p(x) exactly,
    so the estimate with 4000 chains is within 4 standard errors of exact."""
    m, x, exact = _lg(0.0)
    r = ais(m.model, m.guide, x, num_steps=1, num_chains=4000, initial="prior", schedule=LinearSchedule())
    assert ((r.value - exact).abs() < 4 * r.standard_error).all()


def test_schedules_run_from_zero_to_one_and_increase():
    for schedule in (SigmoidSchedule(), SigmoidSchedule(delta=8.0), LinearSchedule()):
        b = schedule.betas(50, dtype=torch.float32, device=torch.device("cpu"))
        assert b.shape == (51,) and b.dtype == torch.float32
        assert b[0] == 0 and b[-1] == 1 and (b.diff() > 0).all()
    s = SigmoidSchedule().betas(100, dtype=torch.float64, device=torch.device("cpu")).diff()
    assert s[0] < s[50] and s[-1] < s[50]  # small steps near both ends


class _Mixture(nn.Module):
    """z ~ N(0, 1); c ~ Cat(pi); x | z, c ~ N(mu_c + a z, s^2 I), with c summed out in the
    model (MixtureSameFamily): log p(x) = logsumexp_c log pi_c + log N(x; mu_c, a a^T + s^2 I).
    The guide is a deliberately poor N(0, 1.5) per datapoint."""

    def __init__(self):
        super().__init__()
        self.logits = torch.tensor([0.3, -0.3], dtype=torch.float64)
        self.mu = torch.tensor([[-1.5, 1.0], [1.5, -0.5]], dtype=torch.float64)
        self.a = torch.tensor([1.0, 0.6], dtype=torch.float64)
        self.s = 0.5

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            loc = self.mu + (z[..., None, None] * self.a)  # (..., B, C, D)
            comp = dist.Normal(loc, self.s).to_event(1)
            pyro.sample("x", dist.MixtureSameFamily(dist.Categorical(logits=self.logits), comp), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.5))

    def log_marginal(self, x):
        cov = torch.outer(self.a, self.a) + self.s**2 * torch.eye(2, dtype=x.dtype)
        comps = dist.MultivariateNormal(self.mu, covariance_matrix=cov).log_prob(x[:, None, :])
        return (comps + self.logits.log_softmax(0)).logsumexp(-1)


def test_mixture_summed_out_in_the_model_agrees_with_the_closed_form():
    mix = _Mixture()
    x = torch.tensor([[-2.0, 0.5], [1.0, -1.0], [0.0, 0.3]], dtype=torch.float64)
    exact = mix.log_marginal(x)
    r = ais(mix.model, mix.guide, x, num_steps=200, num_chains=32, hmc=HMCOptions(num_leapfrog=2))
    assert ((r.value - exact).abs() < 4 * r.standard_error + 1e-3).all()


class _PositiveLatent:
    """y ~ N(0, 1), z = exp(y) ~ LogNormal(0, 1), x | z ~ N(w log z, s^2 I): log p(x) is
    N(x; 0, w w^T + s^2 I). The guide LogNormal(0.2, 0.5) is off the posterior, so HMC must
    move in log space with the right Jacobian for AIS to converge."""

    w = torch.tensor([1.0, -0.7], dtype=torch.float64)
    s = 0.6

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.LogNormal(x.new_zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(z.log()[..., None] * self.w, self.s).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.LogNormal(x.new_full((x.shape[0],), 0.2), 0.5))

    def log_marginal(self, x):
        cov = torch.outer(self.w, self.w) + self.s**2 * torch.eye(2, dtype=x.dtype)
        return dist.MultivariateNormal(torch.zeros(2, dtype=x.dtype), covariance_matrix=cov).log_prob(x)


def test_constrained_latent_moves_in_unconstrained_space_with_its_jacobian():
    p = _PositiveLatent()
    x = torch.tensor([[1.5, -1.0], [-0.5, 0.2], [0.3, 0.4]], dtype=torch.float64)
    exact = p.log_marginal(x)
    r = ais(p.model, p.guide, x, num_steps=200, num_chains=32, hmc=HMCOptions(num_leapfrog=2))
    assert ((r.value - exact).abs() < 4 * r.standard_error + 1e-3).all()


class _TwoSiteChain(nn.Module):
    """z1, z2 ~ N(0, 1), x ~ N(w1 z1 + w2 z2, s^2 I); the guide q(z1 | x) q(z2 | x, z1) is
    the exact posterior, written with torch.cat([x, z1]) that does not broadcast over a
    leading particle dimension (so the chains run one at a time)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.w = torch.randn(3, 2, dtype=torch.float64)
        self.s = 0.7
        precision = torch.eye(2, dtype=torch.float64) + self.w.T @ self.w / self.s**2
        cov = torch.linalg.inv(precision)
        gain = cov @ self.w.T / self.s**2  # posterior mean = gain x
        r = cov[1, 0] / cov[0, 0]
        self.g1, self.sd1 = gain[0], cov[0, 0].sqrt()
        self.coef = torch.cat([gain[1] - r * gain[0], r.reshape(1)])  # loc2 = [x, z1] @ coef
        self.sd2 = (cov[1, 1] - cov[1, 0] ** 2 / cov[0, 0]).sqrt()
        self.guide_calls = 0

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            zero = x.new_zeros(x.shape[0])
            z1 = pyro.sample("z1", dist.Normal(zero, 1.0))
            z2 = pyro.sample("z2", dist.Normal(zero, 1.0))
            loc = z1[..., None] * self.w[:, 0] + z2[..., None] * self.w[:, 1]
            pyro.sample("x", dist.Normal(loc, self.s).to_event(1), obs=x)

    def guide(self, x):
        self.guide_calls += 1
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x @ self.g1, self.sd1))
            pyro.sample("z2", dist.Normal(torch.cat([x, z1[:, None]], -1) @ self.coef, self.sd2))

    def log_marginal(self, x):
        cov = self.w @ self.w.T + self.s**2 * torch.eye(3, dtype=x.dtype)
        return dist.MultivariateNormal(torch.zeros(3, dtype=x.dtype), covariance_matrix=cov).log_prob(x)


def test_several_sites_and_a_guide_that_does_not_broadcast():
    c = _TwoSiteChain()
    x = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]], dtype=torch.float64)
    r = ais(c.model, c.guide, x, num_steps=3, num_chains=3, hmc=FAST)
    torch.testing.assert_close(r.log_weights, c.log_marginal(x).expand(3, -1), atol=1e-9, rtol=0)
    # 3 steps: 3 evaluations of the weights, 2 transitions of 1 leapfrog step, all 3 chains
    # one at a time (plus the probes, the failed vectorized attempt and the initial draw)
    assert c.guide_calls >= 3 * (3 + 2)
    assert r.estimate.mode == "sequential"


def _state(modules):
    return [(m.training, {k: v.clone() for k, v in m.state_dict().items()}) for m in modules]


@pytest.mark.parametrize("name", ["whole_module", "batchnorm_dropout", "no_num_data"])
def test_corpus_programs_converge_and_are_left_unchanged(name):
    """Programs of the corpus: AIS is within 4 SE of the exact log p(x) and closer to it than
    L_K with as many particles as chains; no module mode, parameter, BatchNorm statistic or
    parameter-store value changes and no parameter receives a gradient."""
    case = CASES[name]
    program, data = case.build(), case.data(4)
    for m in program.modules:
        m.train()
    before = _state(program.modules)
    exact = program.exact_log_p(*data).detach()
    with pyro.validation_enabled(False):
        r = ais(
            program.model, program.guide, *data, num_steps=150, num_chains=16, hmc=HMCOptions(num_leapfrog=2)
        )
    store = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    assert ((r.value - exact).abs() < 4 * r.standard_error + 1e-3).all()
    lk = iwae(program.model, program.guide, *data, num_particles=16)
    assert (r.value - exact).abs().mean() < (lk - exact).abs().mean()
    for m, (training, state) in zip(program.modules, before, strict=True):
        assert m.training == training
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert all(p.grad is None for p in m.parameters())
    for k, v in pyro.get_param_store().items():
        assert torch.equal(v.detach(), store[k])


def test_a_discrete_guide_site_is_refused():
    case = CASES["discrete_then_continuous"]
    program = case.build()
    with pytest.raises(InputError, match="continuous latents.*'y' is discrete.*sum it out"):
        ais(program.model, program.guide, *case.data(4), num_steps=5)


def test_a_model_latent_without_a_guide_site_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            z = pyro.sample("z", dist.Normal(c, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, 1.0))

    with pytest.raises(InputError, match="model latent 'c' has no guide site"):
        ais(model, guide, torch.zeros(3), num_steps=5)


@pytest.mark.parametrize(
    "options",
    [
        {"num_steps": 0},
        {"num_steps": 2.5},
        {"num_chains": 0},
        {"initial": "posterior"},
        {"adaptation": "never"},
        {"pilot_chains": 0},
        {"data_chunk": 0},
        {"schedule": "sigmoid"},
        {"hmc": HMCOptions(target_accept=0.0)},
        {"max_rows": 0},
    ],
)
def test_bad_input_is_refused_before_work(options):
    calls = []

    def model(x):
        calls.append(1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    settings = {"num_steps": 5} | options
    with pytest.raises(InputError):
        ais(model, model, torch.zeros(3), **settings)
    assert not calls


def test_chunks_over_data_and_chains_give_the_same_answer_at_the_exact_posterior():
    m, x, exact = _lg(0.0, n=5)
    r = ais(m.model, m.guide, x, num_steps=2, num_chains=7, max_rows=6, hmc=FAST)
    assert r.log_weights.shape == (7, 5)
    torch.testing.assert_close(r.log_weights, exact.expand(7, -1), atol=1e-9, rtol=0)
    r = ais(m.model, m.guide, x, num_steps=2, num_chains=3, data_chunk=2, hmc=FAST)
    torch.testing.assert_close(r.value, exact, atol=1e-9, rtol=0)
    assert math.isnan(ais(m.model, m.guide, x, num_steps=1, num_chains=1).log_weight_variance[0])
