"""ELBO, L_K, log p(x) and the ELBO gap against exact answers."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.bounds import elbo, elbo_gap, iwae, log_marginal
from pyro_vae.infer import StreamingLogMeanExp, max_plate_nesting
from pyro_vae.models import LinearGaussian


def _lg(perturb: float, seed: int = 0, n: int = 6):
    torch.manual_seed(seed)
    m = LinearGaussian(4, 2).double()
    m.set_guide_to_posterior()
    with torch.no_grad():
        m.recognition.weight.add_(perturb * torch.randn_like(m.recognition.weight))
        m.recognition.bias.add_(perturb * torch.randn_like(m.recognition.bias))
    x = torch.randn(n, 4, dtype=torch.float64)
    return m, x, m.log_marginal(x).detach()


def test_exact_posterior_guide_makes_every_bound_log_p_x():
    m, x, exact = _lg(0.0)
    for value in (
        elbo(m.model, m.guide, x, num_particles=3),
        iwae(m.model, m.guide, x, num_particles=17, particle_chunk=5),
        log_marginal(m.model, m.guide, x, num_particles=50).value,
    ):
        torch.testing.assert_close(value, exact, atol=1e-5, rtol=0)


def test_bounds_are_ordered_and_increase_with_k():
    """E[ELBO] <= E[L_5] <= E[L_50] <= log p(x), each expectation estimated over 200
    repeats and compared within 3 standard errors (checked on the data-set mean)."""
    m, x, exact = _lg(0.6)
    means, ses = {}, {}
    for k in (1, 5, 50):
        reps = torch.stack([iwae(m.model, m.guide, x, num_particles=k).mean() for _ in range(200)])
        means[k], ses[k] = reps.mean(), reps.std() / 200**0.5
    assert means[1] < means[5] - 3 * (ses[1] ** 2 + ses[5] ** 2).sqrt()
    assert means[5] < means[50] - 3 * (ses[5] ** 2 + ses[50] ** 2).sqrt()
    assert means[50] < exact.mean() + 3 * ses[50]
    torch.testing.assert_close(means[1], m.exact_elbo(x).mean().detach(), atol=4 * ses[1].item(), rtol=0)


def test_log_marginal_with_5000_particles_is_within_002_nats():
    m, x, exact = _lg(0.1)
    est = log_marginal(m.model, m.guide, x, num_particles=5000)
    assert (est.value - exact).abs().max() < 0.02
    assert ((est.value - exact).abs() < 4 * est.standard_error + 1e-3).all()


def test_elbo_gap_matches_analytic_kl_to_the_posterior():
    m, x, _ = _lg(0.5)
    gap = elbo_gap(m.model, m.guide, x, num_particles=5000, elbo_particles=2000)
    kl = torch.distributions.kl_divergence(m.guide_distribution(x), m.posterior(x)).detach()
    assert (kl > 0.05).all()
    # + 0.02: log p-hat = L_5000 sits slightly below log p(x) (a bias, not noise)
    assert ((gap.gap.value - kl).abs() < 4 * gap.gap.standard_error + 0.02).all()
    s = gap.summary()
    assert s["gap"] == pytest.approx(gap.gap.value.mean().item())


def test_streaming_log_mean_exp_equals_logsumexp_over_all_particles():
    lw = torch.randn(1000, 3, dtype=torch.float64) * 30
    acc = StreamingLogMeanExp()
    for chunk in lw.split(77):
        acc.add(chunk)
    value, se = acc.result()
    torch.testing.assert_close(value, lw.logsumexp(0) - torch.log(torch.tensor(1000.0, dtype=torch.float64)))
    w = torch.exp(lw - lw.max(0).values)
    torch.testing.assert_close(se, w.std(0) / (w.mean(0) * 1000**0.5))


def test_discrete_guide_site_converges_to_the_enumerated_log_p_x():
    """A user's Gaussian mixture with a categorical latent: log p(x) = logsumexp_c
    log pi_c N(x; mu_c, 1) exactly; L_K with K = 4000 must match it within 4 SE."""
    pi = torch.tensor([0.2, 0.5, 0.3])
    mu = torch.tensor([-2.0, 0.0, 3.0])
    x = torch.tensor([-2.5, 0.3, 1.5, 4.0])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(pi))
            pyro.sample("x", dist.Normal(mu[c], 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(torch.ones(x.shape[0], 3) / 3))

    exact = (pi.log() + dist.Normal(mu, 1.0).log_prob(x[:, None])).logsumexp(-1)
    est = log_marginal(model, guide, x, num_particles=4000)
    assert ((est.value - exact).abs() < 4 * est.standard_error + 1e-4).all()


def test_iwae_equals_a_hand_written_logsumexp_on_a_hand_written_vae():
    torch.manual_seed(0)
    enc, dec = nn.Linear(6, 4), nn.Linear(2, 6)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            h = enc(x)
            pyro.sample("z", dist.Normal(h[..., :2], nn.functional.softplus(h[..., 2:])).to_event(1))

    x = (torch.rand(5, 6) < 0.5).float()
    k = 64
    pyro.set_rng_seed(3)
    ours = iwae(model, guide, x, num_particles=k)
    pyro.set_rng_seed(3)
    max_plate_nesting(model, guide, x[:1])  # iwae traces the program once first
    with torch.no_grad():
        h = enc(x)
        q = dist.Normal(h[:, :2], nn.functional.softplus(h[:, 2:])).to_event(1)
        z = q.sample((k,))
        lw = dist.Bernoulli(logits=dec(z)).to_event(1).log_prob(x) + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        lw = lw - q.log_prob(z)
    torch.testing.assert_close(ours, lw.logsumexp(0) - torch.log(torch.tensor(float(k))))


@pytest.mark.slow
def test_amortization_gap_on_a_family_that_contains_the_posterior():
    """The linear-Gaussian guide family contains p(z|x): optimizing per datapoint must close
    the approximation gap (to within the optimizer's noise, < 0.1 nats here), so the
    amortization gap is the whole ELBO gap KL(q || p(z|x)) of the perturbed encoder."""
    from pyro_vae.bounds import amortization_gap

    m, x, exact = _lg(0.5, n=4)
    gap = amortization_gap(m.model, m.guide, x, steps=400, num_particles=2000)
    approx = exact - gap.optimal.value
    assert (approx > -4 * gap.optimal.standard_error).all() and (approx < 0.1).all()
    exact_elbo = m.exact_elbo(x).detach()
    assert ((gap.amortized.value - exact_elbo).abs() < 4 * gap.amortized.standard_error).all()
    kl = exact - exact_elbo
    assert ((gap.amortization_gap.value - kl).abs() < approx + 4 * gap.amortized.standard_error).all()
    assert ((gap.log_marginal.value - exact).abs() < 4 * gap.log_marginal.standard_error + 1e-3).all()
    assert set(gap.summary()) >= {"approximation_gap", "amortization_gap", "log_marginal_se"}


def test_analytic_kl_elbo_has_the_same_mean_and_less_variance():
    """On a VAE (Normal guide, standard-normal prior) the analytic-KL ELBO and the sampled
    one agree within 4 standard errors per datapoint.
    On the linear-Gaussian model (MVN guide: no registered KL) it falls back to sampling
    and with the exact posterior still equals log p(x)."""
    from pyro_vae.likelihoods import Gaussian
    from pyro_vae.models import VAE

    torch.manual_seed(0)
    vae = VAE(Gaussian(5), latent_dim=3, hidden=(8,))
    x = torch.randn(6, 5)
    mc = elbo(vae.model, vae.guide, x, num_particles=4000, return_error=True)
    an = elbo(vae.model, vae.guide, x, num_particles=4000, return_error=True, analytic_kl=True)
    assert ((mc.value - an.value).abs() < 4 * (mc.standard_error**2 + an.standard_error**2).sqrt()).all()
    m, xl, exact = _lg(0.0)
    torch.testing.assert_close(elbo(m.model, m.guide, xl, num_particles=3, analytic_kl=True), exact)


def test_analytic_kl_changes_the_estimator_and_cuts_its_variance():
    """The flag is not ignored: with analytic KL only log p(x|z) is sampled, so on a Gaussian
    VAE the per-datapoint standard error of the ELBO estimate falls (by more than 10% on
    average here), and the values differ from the sampled-KL ones for the same seed."""
    from pyro_vae.likelihoods import Gaussian
    from pyro_vae.models import VAE

    torch.manual_seed(0)
    vae = VAE(Gaussian(5), latent_dim=3, hidden=(8,)).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    pyro.set_rng_seed(1)
    mc = elbo(vae.model, vae.guide, x, num_particles=500, return_error=True)
    pyro.set_rng_seed(1)
    an = elbo(vae.model, vae.guide, x, num_particles=500, return_error=True, analytic_kl=True)
    assert not torch.equal(mc.value, an.value)
    ratio = an.standard_error / mc.standard_error
    print(f"analytic / sampled KL standard error: median {ratio.median():.3f}")
    assert ratio.mean() < 0.9


def test_amortization_gap_on_more_points_than_one_chunk():
    """1100 points: the amortized ELBO is chunked, the per-datapoint q* never is."""
    from pyro_vae.bounds import amortization_gap

    m, x, _ = _lg(0.5, n=1100)
    gap = amortization_gap(m.model, m.guide, x, steps=2, eval_particles=4, num_particles=100)
    assert gap.log_marginal.value.shape == gap.optimal.value.shape == gap.amortized.value.shape == (1100,)
    assert torch.isfinite(gap.amortization_gap.value).all()
