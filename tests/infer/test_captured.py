"""CapturedLoss: the replayed graph gives the eager step's draws, values and gradients."""

import pyro
import pytest
import torch

from pyro_vae.errors import InputError
from pyro_vae.estimators import VIMCO
from pyro_vae.infer import MeanFieldELBO
from pyro_vae.infer.captured import CapturedLoss
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit, train_step


def _x(n=16, d=6, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def _train(loss, batches, *, seed=0, name="v"):
    """Steps of ``loss`` on ``batches`` from the same initial parameters and random state:
    (losses, final parameters)."""
    torch.manual_seed(seed)
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,), name=name)
    pyro.clear_param_store()
    loss.loss(vae.model, vae.guide, batches[0], num_data=64)  # registers the parameters
    opt = torch.optim.Adam(vae.parameters(), lr=0.05)
    torch.manual_seed(seed + 1)
    values = [train_step(loss, opt, vae.model, vae.guide, (x,), {"num_data": 64}) for x in batches]
    return values, [p.detach().clone() for p in vae.parameters()]


@pytest.mark.parametrize("num_particles", [1, 3])
def test_replay_is_bitwise_the_eager_step(num_particles):
    batches = [_x(seed=s) for s in range(5)]
    eager = _train(MeanFieldELBO(num_particles=num_particles), batches)
    captured_loss = CapturedLoss(MeanFieldELBO(num_particles=num_particles))
    captured = _train(captured_loss, batches)
    assert captured_loss.captured_steps == 4, captured_loss.fallback_reason  # the first step is eager
    assert eager[0] == captured[0]
    for a, b in zip(eager[1], captured[1], strict=True):
        assert torch.equal(a, b)


def test_a_new_structure_is_eager_first_and_max_graphs_bounds_the_graphs():
    """A batch-size change is a new structure: run eagerly, then captured; past max_graphs, eager;
    every step equal to the eager run."""
    batches = [_x(16, seed=0), _x(16, seed=1), _x(8, seed=2), _x(8, seed=3), _x(4, seed=4), _x(4, seed=5)]
    eager = _train(MeanFieldELBO(), batches)
    captured_loss = CapturedLoss(MeanFieldELBO(), max_graphs=2)
    captured = _train(captured_loss, batches)
    assert len(captured_loss._graphs) == 2
    assert captured_loss.captured_steps == 2  # the second 16-row and the second 8-row step
    assert eager[0] == captured[0]
    for a, b in zip(eager[1], captured[1], strict=True):
        assert torch.equal(a, b)


def test_enclosing_handlers_and_unhashable_arguments_stay_eager():
    loss = CapturedLoss(MeanFieldELBO())
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))
    x = _x()
    with pyro.poutine.trace():
        assert loss.structure(vae.model, vae.guide, (x,), {}) is None
    assert loss.structure(vae.model, vae.guide, (x,), {"num_data": [64]}) is None
    assert loss.structure(vae.model, vae.guide, (x,), {"num_data": 64}) is not None
    # a module's mode is part of the structure (dropout, BatchNorm take other operations)
    key = loss.structure(vae.model, vae.guide, (x,), {})
    vae.eval()
    assert loss.structure(vae.model, vae.guide, (x,), {}) != key


def test_stateful_and_foreign_losses_are_refused():
    with pytest.raises(InputError, match="ParticleLoss"):
        CapturedLoss(pyro.infer.Trace_ELBO())
    vimco = VIMCO(num_particles=2)
    if type(vimco).state_dict is not MeanFieldELBO.state_dict:
        with pytest.raises(InputError, match="state of its own"):
            CapturedLoss(vimco)


def test_fit_with_captured_loss_trains_the_same_parameters():
    x = _x(32)
    states = []
    for loss in (MeanFieldELBO(), CapturedLoss(MeanFieldELBO())):
        torch.manual_seed(0)
        vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))
        fit(vae.model, vae.guide, x, epochs=2, batch_size=8, loss=loss, progress=False)
        states.append([p.detach().clone() for p in vae.parameters()])
    assert loss.captured_steps > 0, loss.fallback_reason
    for a, b in zip(*states, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_compiled_graph_equals_eager_to_float_rounding():
    batches = [_x(seed=s) for s in range(4)]
    eager = _train(MeanFieldELBO(num_particles=2), batches)
    captured_loss = CapturedLoss(MeanFieldELBO(num_particles=2), compile=True)
    captured = _train(captured_loss, batches)
    assert captured_loss.captured_steps == 3, captured_loss.fallback_reason
    torch.testing.assert_close(torch.tensor(eager[0]), torch.tensor(captured[0]), rtol=1e-5, atol=1e-4)
    for a, b in zip(eager[1], captured[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_control_flow_on_values_stays_eager():
    """A program reading a tensor's value cannot be captured: it runs eagerly, the reason kept."""
    torch.manual_seed(0)
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))

    def model(x, num_data=None):
        if float(x.sum()) >= 0:  # reads a value
            vae.model(x, num_data=num_data)

    loss = CapturedLoss(MeanFieldELBO())
    x = _x()
    for _ in range(3):
        loss.loss_and_grads(model, vae.guide, x, num_data=64)
    assert loss.captured_steps == 0
    assert "capture failed" in loss.fallback_reason
