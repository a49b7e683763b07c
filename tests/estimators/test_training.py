"""Estimators with state of their own inside fit: checkpoints and resumption."""

import itertools

import pytest
import torch

from pyro_vae.estimators import (
    VIMCO,
    DecayingAverageBaseline,
    NeuralBaseline,
    RelaxedELBO,
    ScoreFunctionELBO,
    TemperatureSchedule,
    exact_elbo,
    get_estimator,
)
from pyro_vae.train import fit
from tests.estimators.conftest import tiny_data, tiny_vae


def _state(vae):
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: ScoreFunctionELBO(baseline=NeuralBaseline(hidden=(8,))),
        lambda: ScoreFunctionELBO(baseline=DecayingAverageBaseline()),
        lambda: RelaxedELBO(temperature=TemperatureSchedule(initial=1.0, minimum=0.3, rate=0.05, every=2)),
        lambda: VIMCO(num_particles=3),
    ],
    ids=["nvil", "average", "annealed-gumbel", "vimco"],
)
def test_resumed_training_equals_uninterrupted_training(tmp_path, make_loss):
    x, val = tiny_data(40), tiny_data(8, seed=5)
    options = dict(validation=val, batch_size=8, seed=3, progress=False)
    full, full_loss = tiny_vae(), make_loss()
    fit(full.model, full.guide, x, loss=full_loss, epochs=4, **options)
    ckpt = tmp_path / "c.pt"
    part = tiny_vae()
    fit(part.model, part.guide, x, loss=make_loss(), epochs=2, checkpoint=ckpt, **options)
    resumed, resumed_loss = tiny_vae(seed=9), make_loss()
    fit(resumed.model, resumed.guide, x, loss=resumed_loss, epochs=4, checkpoint=ckpt, resume=True, **options)
    for k, v in _state(full).items():
        torch.testing.assert_close(_state(resumed)[k], v, rtol=0, atol=0, msg=k)
    for k, v in full_loss.state_dict().get("baseline", {}).items():
        torch.testing.assert_close(resumed_loss.state_dict()["baseline"][k], v, rtol=0, atol=0, msg=k)
    if isinstance(full_loss, RelaxedELBO):
        assert resumed_loss.step == full_loss.step == 20 and resumed_loss.temperature < 1.0


# independent pixels with skewed marginals: a fit of the decoder's biases alone gains ~1.4 nats
PIXEL_PROBS = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], dtype=torch.float64)


def _skewed_pixels(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 6, generator=gen, dtype=torch.float64) < PIXEL_PROBS).double()


def _log_marginal(vae, x):
    """Exact log p(x) of the 3-bit tiny VAE, summing over its 8 codes."""
    codes = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=x.dtype)
    with torch.no_grad():
        log_joint = vae.likelihood(vae.decoder(codes)).log_prob(x[:, None, :]) + vae.latent.prior(x).log_prob(
            codes
        )
    return log_joint.logsumexp(-1)


def _independent_pixel_log_likelihood(x):
    """Maximum-likelihood log-likelihood per row of independent Bernoulli pixels (the
    empirical marginals): the best ELBO of any model whose guide ignores x."""
    p = x.mean(0).clamp(1e-6, 1 - 1e-6)
    return (x * p.log() + (1 - x) * (1 - p).log()).sum(-1).mean().item()


@pytest.mark.parametrize(
    "name", ["score", "score-avg", "nvil", "vimco", "arm", "gumbel", "st-gumbel", "enum"]
)
def test_every_estimator_trains_with_pyro_svi(name):
    """30 SVI steps with each estimator, judged by exact (enumerated) answers: the held-out
    ELBO rises by more than 5 standard errors (paired over held-out rows), the training ELBO
    closes 90% of the distance to the maximum-likelihood independent-pixel fit, and the
    encoder's KL(q(z|x) || p(z|x)) = log p(x) - ELBO on the training data at least halves."""
    import pyro

    vae, x, val = tiny_vae("bernoulli"), _skewed_pixels(40, seed=1), _skewed_pixels(40, seed=5)

    def exact(data):
        return exact_elbo(vae.model, vae.guide, data).detach()

    val_before, train_before = exact(val), exact(x).mean().item()
    gap_before = (_log_marginal(vae, x) - exact(x)).mean().item()
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), get_estimator(name).make_loss())
    losses = [svi.step(x) for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(losses)))
    gain = exact(val) - val_before
    assert gain.mean() > 5 * gain.std() / len(gain) ** 0.5, (gain.mean(), gain.std())
    target = _independent_pixel_log_likelihood(x)
    train_after = exact(x).mean().item()
    assert train_after > train_before + 0.9 * (target - train_before), (train_before, train_after, target)
    gap_after = (_log_marginal(vae, x) - exact(x)).mean().item()
    assert gap_after < 0.5 * gap_before, (gap_before, gap_after)
