"""Per-datapoint log densities from traces, against exact answers."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.errors import InputError
from pyro_vae.infer import log_terms, max_plate_nesting
from pyro_vae.models import LinearGaussian
from pyro_vae.train import rate_distortion
from tests.conftest import standard_error


def _lg(seed=0):
    torch.manual_seed(seed)
    m = LinearGaussian(4, 2).double()
    x = torch.randn(12, 4, dtype=torch.float64)
    return m, x


def test_exact_posterior_guide_gives_log_marginal_for_every_particle():
    m, x = _lg()
    m.set_guide_to_posterior()
    terms = log_terms(m.model, m.guide, x, num_particles=7)
    assert terms.log_weight.shape == (7, 12)
    torch.testing.assert_close(terms.log_weight, m.log_marginal(x).expand(7, 12))


def test_mean_log_weight_is_the_exact_elbo_within_standard_errors():
    m, x = _lg()
    with torch.no_grad():
        m.recognition.weight.normal_(0, 0.3)
    lw = log_terms(m.model, m.guide, x, num_particles=4000).log_weight.detach()
    err = (lw.mean(0) - m.exact_elbo(x).detach()).abs()
    assert (err < 4 * standard_error(lw)).all()


def _closed_form_rate_and_distortion(m, x):
    """KL(q(z|x) || p(z)) and -E_q log p(x|z) of the linear-Gaussian model, per datapoint:
    with q = N(mu_q, Sigma_q) and p(x|z) = N(Wz + b, Psi), r = x - W mu_q - b,
    -E_q log p(x|z) = 0.5 [D log 2pi + log|Psi| + tr(Psi^-1 W Sigma_q W^T) + r^T Psi^-1 r]."""
    q = m.guide_distribution(x)
    prior = dist.MultivariateNormal(
        torch.zeros(m.latent_dim, dtype=x.dtype), torch.eye(m.latent_dim, dtype=x.dtype)
    )
    kl = torch.distributions.kl_divergence(q, prior)
    g = m.generative
    w, b, psi = g.weight, g.bias, g.noise_variance
    r = x - q.loc @ w.T - b
    trace = ((w @ q.covariance_matrix @ w.T).diagonal(dim1=-2, dim2=-1) / psi).sum(-1)
    distortion = 0.5 * (
        m.num_features * math.log(2 * math.pi) + psi.log().sum() + trace + (r**2 / psi).sum(-1)
    )
    return kl.detach(), distortion.detach()


def _single_particle_spread(m, x, num_samples):
    """Per-particle sd of the rate, distortion and log weight, from independent draws of q
    (only used to size the standard errors of the estimator under test)."""
    q = m.guide_distribution(x)
    z = q.sample((num_samples,))
    g = m.generative
    log_prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_lik = dist.Normal(z @ g.weight.T + g.bias, g.noise_variance.sqrt()).to_event(1).log_prob(x)
    rate, distortion = q.log_prob(z) - log_prior, -log_lik
    return rate.std(0).detach(), distortion.std(0).detach(), (rate + distortion).std(0).detach()


def test_rate_and_distortion_match_their_closed_forms():
    """rate -> KL(q || prior), distortion -> -E_q log p(x|z) and elbo -> exact ELBO, each within
    4 standard errors per datapoint, for a guide that is not the posterior."""
    m, x = _lg()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # an x-dependent, correlated guide, away from the exact posterior
        m.recognition.weight.copy_(0.3 * torch.randn(2, 4, generator=gen, dtype=torch.float64))
        m.recognition.bias.copy_(0.5 * torch.randn(2, generator=gen, dtype=torch.float64))
        m.recognition.raw_tril.copy_(torch.randn(2, 2, generator=gen, dtype=torch.float64))
    num_particles = 100_000  # SEs below 0.01 (rate) and 0.04 nats (distortion)
    rd = rate_distortion(m.model, m.guide, (x,), num_particles=num_particles, batch_size=5)
    kl, distortion = _closed_form_rate_and_distortion(m, x)
    elbo = m.exact_elbo(x).detach()
    torch.testing.assert_close(-(kl + distortion), elbo)  # the closed forms agree with each other
    sd_rate, sd_distortion, sd_elbo = _single_particle_spread(m, x, 100_000)
    se = num_particles**-0.5
    for name, estimate, exact, sd in [
        ("rate", rd.rate, kl, sd_rate),
        ("distortion", rd.distortion, distortion, sd_distortion),
        ("elbo", rd.elbo, elbo, sd_elbo),
    ]:
        assert estimate.shape == exact.shape == (12,)
        z = (estimate - exact) / (sd * se)
        assert z.abs().max() < 4, (name, z)


class _HandVAE(nn.Module):
    """A user's own program: bare pyro.param for the decoder, a module for the encoder."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(5, 4)

    def model(self, x):
        w = pyro.param("w", torch.randn(2, 5) * 0.1)
        with pyro.plate("obs", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ w).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("obs", x.shape[0]):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(h[..., :2], nn.functional.softplus(h[..., 2:])).to_event(1))


def test_user_program_matches_hand_written_log_weights():
    torch.manual_seed(0)
    prog = _HandVAE()
    x = (torch.rand(6, 5) < 0.5).float()
    pyro.set_rng_seed(1)
    terms = log_terms(prog.model, prog.guide, x, num_particles=3, plate_name="obs")
    pyro.set_rng_seed(1)
    h = prog.enc(x)
    q = dist.Normal(h[..., :2], nn.functional.softplus(h[..., 2:])).to_event(1)
    z = q.sample((3,))
    w = pyro.param("w")
    expected = (
        dist.Bernoulli(logits=z @ w).to_event(1).log_prob(x)
        + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        - q.log_prob(z)
    )
    torch.testing.assert_close(terms.log_weight, expected)


def test_missing_plate_and_global_latents_are_reported():
    m, x = _lg()
    with pytest.raises(InputError, match="no plate named 'obs'"):
        log_terms(m.model, m.guide, x, plate_name="obs")

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(InputError, match=r"\['mu'\] are outside the data plate"):
        log_terms(model, guide, torch.zeros(3))


def test_max_plate_nesting_counts_nested_plates():
    def model():
        with pyro.plate("a", 2, dim=-1), pyro.plate("b", 3, dim=-2):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(3, 2))

    assert max_plate_nesting(model, lambda: None) == 2


def test_the_default_chunk_is_sized_to_the_data():
    from pyro_vae.infer.per_datapoint import CHUNK_ELEMENTS, MAX_ROWS, chunk_sizes, default_max_rows

    assert default_max_rows((torch.zeros(10, 784),)) == CHUNK_ELEMENTS // 784 == 2_551
    assert default_max_rows((torch.zeros(10, 2, 1000),)) == CHUNK_ELEMENTS // 2000
    assert default_max_rows((torch.zeros(10, 4),)) == MAX_ROWS  # few features: capped
    assert default_max_rows((None, torch.zeros(10, 784))) == 2_551  # the first tensor
    assert chunk_sizes(100, 1000, default_max_rows((torch.zeros(100, 784),))) == (2, 1000)


class _CountingCapture:
    """A ``capture`` that runs every chunk eagerly and counts them, told the planned count."""

    def __init__(self):
        self.planned, self.run = None, 0

    def begin(self, chunks):
        self.planned = chunks

    def log_weight(self, model, guide, args, kwargs, **options):
        from pyro_vae.infer.per_datapoint import eager_log_weight

        self.run += 1
        return eager_log_weight(model, guide, args, kwargs, **options)


@pytest.mark.parametrize(
    "options",
    [
        {"num_particles": 8, "max_rows": 8},  # 12 chunks of 1 row x 8 particles
        {"num_particles": 5, "data_chunk": 5, "particle_chunk": 2},  # rows 5+5+2, particles 2+2+1
        {"num_particles": 7, "max_rows": 3},  # 1 row x 3 particles: 3 particle chunks a row
        {"num_particles": 3, "max_rows": 100},  # one chunk
        {"num_particles": 4, "data_chunk": 30},  # a data chunk past the rows
    ],
)
def test_the_planned_chunks_are_the_chunks_run(options):
    from pyro_vae.infer.per_datapoint import accumulate_log_weights, chunk_layout

    m, x = _lg()
    capture = _CountingCapture()
    accumulate_log_weights(m.model, m.guide, (x,), {}, make=_Sink, capture=capture, **options)
    assert capture.planned == capture.run == chunk_layout(m.model, m.guide, (x,), {}, **options).chunks
    expected = {8: 12, 5: 9, 7: 36, 3: 1, 4: 1}[options["num_particles"]]
    assert capture.run == expected


def test_the_planned_chunks_of_a_program_with_parameters_per_datapoint_keep_its_rows():
    from pyro.infer.autoguide import AutoNormal

    from pyro_vae.infer.per_datapoint import chunk_layout

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    x = torch.randn(12, 4)
    guide = AutoNormal(model)
    guide(x)
    layout = chunk_layout(model, guide, (x,), {}, num_particles=10, max_rows=24)
    assert (layout.data_chunk, layout.sizes, layout.chunks) == (12, (2, 2, 2, 2, 2), 5)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"data_chunk": 0}, "data_chunk must be an integer >= 1, got 0"),
        ({"particle_chunk": -1}, "particle_chunk must be an integer >= 1, got -1"),
        ({"max_rows": 0}, "max_rows must be an integer >= 1, got 0"),
        ({"num_particles": 0}, "num_particles must be an integer >= 1, got 0"),
    ],
)
def test_chunk_options_are_checked_before_the_program_runs(options, message):
    from pyro_vae.infer.per_datapoint import chunk_layout

    def model(x):
        raise AssertionError("the program ran")

    with pytest.raises(InputError, match=message):
        chunk_layout(model, model, (torch.zeros(3, 2),), {}, **{"num_particles": 2, **options})


class _Sink:
    def add(self, log_weight):
        pass
