import itertools
import math

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.comparison.gradients import exact_gradient, parameter_groups
from pyro_vae.errors import InputError
from pyro_vae.estimators import RelaxedELBO, TemperatureSchedule, relaxed_sample
from tests.estimators.conftest import collect, tiny_data, tiny_vae


def _bias(vae, x, groups, exact, **options):
    """||mean estimate - exact ELBO gradient|| and its noise floor sqrt(tr Var / S), per group."""
    samples = collect(vae.model, vae.guide, x, loss=RelaxedELBO(**options), num_samples=40, groups=groups)
    return {
        g: ((samples[g].mean(0) - exact[g]).norm().item(), (samples[g].var(0).sum() / 40).sqrt().item())
        for g in groups
    }


@pytest.mark.parametrize("latent", ["categorical", "bernoulli"])
def test_gumbel_softmax_bias_shrinks_as_the_temperature_falls(latent):
    vae, x = tiny_vae(latent), tiny_data().repeat(250, 1)
    groups = parameter_groups(vae.model, vae.guide, x)
    exact = exact_gradient(vae.model, vae.guide, x, groups=groups)
    biases = [_bias(vae, x, groups, exact, temperature=t) for t in (2.0, 1.0, 0.5, 0.25)]
    for g in groups:
        for hot, cold in itertools.pairwise(biases):
            (b_hot, se_hot), (b_cold, se_cold) = hot[g], cold[g]
            assert b_cold < b_hot - 3 * (se_hot + se_cold), (g, biases)
        assert biases[0][g][0] > 10 * biases[0][g][1]  # and at high temperature it is clearly biased


def test_straight_through_has_an_exact_decoder_gradient_and_a_biased_encoder_gradient():
    vae, x = tiny_vae(), tiny_data().repeat(250, 1)
    groups = parameter_groups(vae.model, vae.guide, x)
    exact = exact_gradient(vae.model, vae.guide, x, groups=groups)
    bias = _bias(vae, x, groups, exact, temperature=0.25, straight_through=True)
    bias_model, floor_model = bias["model"]
    assert bias_model < 3 * floor_model  # the decoder sees exact discrete samples
    bias_guide, floor_guide = bias["guide"]
    assert bias_guide > 10 * floor_guide


def test_straight_through_values_are_hard_with_relaxed_gradients():
    logits = torch.randn(5, 4, requires_grad=True)
    fn = dist.OneHotCategorical(logits=logits).to_event(1)
    value = relaxed_sample(fn, 0.5, straight_through=True)
    assert set(value.detach().unique().tolist()) <= {0.0, 1.0} and (value.sum(-1) == 1).all()
    (value * torch.arange(4.0)).sum().backward()
    assert logits.grad.abs().sum() > 0
    soft = relaxed_sample(dist.Bernoulli(logits=torch.zeros(1000)), 1.0, straight_through=False)
    assert ((soft > 0) & (soft < 1)).all()


def _relaxation_bias(vae, x, temperature, num_draws):
    """Per-row bias of the relaxed objective, E_g[log p(x | y_tau(g))] - E_q[log p(x | z)]
    (the KL terms are the same), with its SE, by direct simulation: for Gumbel noise g the
    hard code onehot(argmax(alpha + g)) ~ q exactly (Gumbel-max), so each draw pairs the
    relaxed y_tau = softmax((alpha + g) / tau) with the discrete code at the same g."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        logits = vae.latent.posterior(vae.encoder(x)).base_dist.logits
        finfo = torch.finfo(logits.dtype)
        u = torch.rand((num_draws, *logits.shape), generator=gen, dtype=logits.dtype)
        perturbed = logits - (-u.clamp(finfo.tiny, 1 - finfo.eps).log()).log()
        soft = (perturbed / temperature).softmax(-1)
        hard = torch.nn.functional.one_hot(perturbed.argmax(-1), logits.shape[-1]).to(logits)

        def log_lik(z):
            return vae.likelihood(vae.decoder(vae.latent.flatten(z))).log_prob(x)

        diff = log_lik(soft) - log_lik(hard)
    return diff.mean(0).sum().item(), (diff.var(0) / num_draws).sum().sqrt().item()


def test_relaxed_elbo_tends_to_the_elbo_as_the_temperature_falls():
    """The loss estimates the relaxed objective (exact ELBO + the simulated relaxation bias)
    within 4 SE at every temperature, and that bias falls with the temperature by many SE.
    Units: nats summed over the 4 distinct rows (the data are 500 copies of each)."""
    from pyro_vae.estimators import exact_elbo

    vae, rows, copies = tiny_vae(), tiny_data(), 500
    x = rows.repeat(copies, 1)
    exact = exact_elbo(vae.model, vae.guide, rows).sum().item()
    biases, gaps = [], []
    for t in (1.0, 0.1, 0.01):
        values = torch.tensor(
            [-RelaxedELBO(temperature=t).loss(vae.model, vae.guide, x) / copies for _ in range(20)]
        )
        gap, gap_se = values.mean().item() - exact, values.std().item() / math.sqrt(20)
        bias, bias_se = _relaxation_bias(vae, rows, t, 50_000)
        assert abs(gap - bias) < 4 * math.hypot(gap_se, bias_se), (t, gap, gap_se, bias, bias_se)
        biases.append((bias, bias_se))
        gaps.append((gap, gap_se))
    for (hot, hot_se), (cold, cold_se) in itertools.pairwise(biases):
        assert abs(cold) < abs(hot) - 3 * (hot_se + cold_se), biases
    # the estimator itself resolves the bias at tau = 1 against tau = 0.01
    assert gaps[0][0] > gaps[-1][0] + 3 * math.hypot(gaps[0][1], gaps[-1][1]), gaps


def test_temperature_schedule():
    s = TemperatureSchedule(initial=1.0, minimum=0.5, rate=1e-3, every=100)
    assert s(0) == 1.0 and s(99) == 1.0
    assert s(100) == pytest.approx(math.exp(-0.1))
    assert s(10**6) == 0.5
    loss = RelaxedELBO(temperature=s)
    vae, x = tiny_vae(), tiny_data()
    for _ in range(100):
        loss.loss_and_grads(vae.model, vae.guide, x)
    assert loss.step == 100 and loss.temperature == pytest.approx(math.exp(-0.1))
    with pytest.raises(InputError, match="temperature"):
        RelaxedELBO(temperature=0.0)
    with pytest.raises(InputError, match="rate"):
        TemperatureSchedule(rate=-1.0)


def test_categorical_index_sites_cannot_be_relaxed():
    with pytest.raises(InputError, match="OneHotCategorical"):
        relaxed_sample(dist.Categorical(logits=torch.zeros(3)), 1.0, straight_through=False)


def test_gumbel_softmax_argmax_is_the_categorical():
    """The Gumbel-max property: argmax of the relaxed draw ~ Categorical(softmax(alpha)), any tau."""
    logits = torch.tensor([0.5, -1.0, 1.5, 0.0], dtype=torch.float64)
    n = 40_000
    fn = dist.OneHotCategorical(logits=logits.expand(n, 4))
    counts = torch.bincount(relaxed_sample(fn, 0.7, straight_through=False).argmax(-1), minlength=4)
    p = logits.softmax(0)
    z = (counts / n - p) / (p * (1 - p) / n).sqrt()
    assert z.abs().max() < 4, z


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.0])
def test_binary_concrete_has_the_exact_cdf(tau):
    """Maddison et al.: P(Y <= y) = sigmoid(tau * logit(y) - alpha); also the two-category
    Gumbel-softmax, whose first coordinate is binary Concrete with alpha = alpha_1 - alpha_2."""
    from scipy import stats

    alpha = 0.8
    n = 20_000
    binary = relaxed_sample(
        dist.Bernoulli(logits=torch.full((n,), alpha, dtype=torch.float64)), tau, straight_through=False
    )
    two = relaxed_sample(
        dist.OneHotCategorical(logits=torch.tensor([alpha, 0.0], dtype=torch.float64).expand(n, 2)),
        tau,
        straight_through=False,
    )[:, 0]

    def cdf(y):
        y = torch.as_tensor(y, dtype=torch.float64)
        return torch.sigmoid(tau * torch.logit(y) - alpha).numpy()

    for sample in (binary, two):
        assert stats.kstest(sample.numpy(), cdf).pvalue > 1e-3
