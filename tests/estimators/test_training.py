"""Estimators with state of their own inside fit: checkpoints and resumption."""

import pytest
import torch

from pyro_vae.estimators import (
    VIMCO,
    DecayingAverageBaseline,
    NeuralBaseline,
    RelaxedELBO,
    ScoreFunctionELBO,
    TemperatureSchedule,
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


@pytest.mark.parametrize(
    "name", ["score", "score-avg", "nvil", "vimco", "arm", "gumbel", "st-gumbel", "enum"]
)
def test_every_estimator_trains_with_pyro_svi(name):
    import pyro

    vae, x = tiny_vae("bernoulli"), tiny_data(40)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), get_estimator(name).make_loss())
    before = vae.encoder[0].weight.detach().clone()
    losses = [svi.step(x) for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, vae.encoder[0].weight)
